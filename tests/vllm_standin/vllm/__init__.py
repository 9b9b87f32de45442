"""Test-only stand-in for the `vllm` package: exactly the API surface `vlprep verify --engine vllm`
calls, run on CPU by the tiny transformers checkpoint. Put on sys.path only by
tests/test_issue15_verify_vllm.py (monkeypatch.syspath_prepend), never installed.

The surface, as read in vLLM's source (github.com/vllm-project/vllm, files at the commits the code
index holds, v0.11-era):
  vllm/entrypoints/llm.py (10fdb8f0d75a)   LLM(model, *, tokenizer=None, dtype="auto", seed=None,
                                            limit_mm_per_prompt={modality: max items}, ...);
                                            LLM.generate(prompts, sampling_params=None, *, use_tqdm=True)
                                            -> list[RequestOutput], in the order of `prompts`
  vllm/inputs/data.py (48414ff882da)       TokensPrompt = {"prompt_token_ids": list[int],
                                            "multi_modal_data"?: {"image": [PIL.Image | ndarray ...],
                                            "video": [ndarray [T, H, W, 3] ...]}, "mm_processor_kwargs"?: dict}
  vllm/sampling_params.py (00388f6573cc)  SamplingParams(temperature (0 = greedy), max_tokens,
                                            stop_token_ids, allowed_token_ids, detokenize,
                                            skip_special_tokens, ...)
  vllm/outputs.py                          RequestOutput.outputs[0].token_ids (CompletionOutput)
  vllm/model_executor/models/qwen2_vl.py (002d181a55a0)
      Qwen2VLMultiModalDataParser: a dict item is read as *embeddings* (required fields image_embeds +
          image_grid_thw / video_embeds + video_grid_thw); processed pixel_values are not accepted, so
          raw frames go through the HF image / video processor (mm_processor_kwargs forwarded to it);
      Qwen2VLMultiModalProcessor._get_prompt_updates: PromptReplacement(target=[<|image_pad|>]) --
          each *single* placeholder of the token prompt becomes grid_thw.prod() // merge_size**2
          copies (the prompt format is <|vision_start|><|image_pad|><|vision_end|>, get_placeholder_str);
      get_mrope_input_positions: the M-RoPE ids transformers' get_rope_index computes.

What the stand-in does per request: validates the keys against TokensPrompt, checks that the number of
single placeholders equals the number of items (vLLM fails the prompt update otherwise), runs the
checkpoint's own image processor (AutoImageProcessor from the model folder, as vLLM's HF processor
does) with mm_processor_kwargs on the images, expands the placeholders, and runs
transformers' greedy `generate` with max_tokens, stop_token_ids and allowed_token_ids. Every request
and processor output is kept in LLM.log for the tests.

Videos: vLLM runs transformers' Qwen2VLVideoProcessor, which needs torchvision (not installed here).
The stand-in builds the same rows from the frames with vlprep's processors.patches.patchify (the
HF row order; pinned against transformers' Qwen2VLImageProcessorPil in tests/test_image.py) and normalises them with the
image processor's mean / std, after the same smart_resize check of `size` vLLM's processor applies --
so the video part of this stand-in is not independent of vlprep; the image part is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__version__ = "0.0.0+vlprep-test-standin"

_PROMPT_KEYS = {"prompt_token_ids", "multi_modal_data", "mm_processor_kwargs"}


@dataclass
class SamplingParams:
    temperature: float = 1.0
    max_tokens: int | None = 16
    stop_token_ids: list[int] | None = None
    allowed_token_ids: list[int] | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    seed: int | None = None


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    text: str = ""
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


class LLM:
    instances: list["LLM"] = []

    def __init__(self, model: str, *, tokenizer: str | None = None, dtype: str = "auto", seed: int | None = None,
                 limit_mm_per_prompt: dict | None = None, **kwargs):
        import torch
        import transformers

        self.kwargs = dict(model=model, tokenizer=tokenizer, dtype=dtype, seed=seed,
                           limit_mm_per_prompt=limit_mm_per_prompt, **kwargs)
        self.config = transformers.AutoConfig.from_pretrained(model)
        cls = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
               "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
               "qwen3_vl": transformers.Qwen3VLForConditionalGeneration}[self.config.model_type]
        torch_dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16,
                       "float16": torch.float16}[dtype]
        self.model = cls.from_pretrained(model, dtype=torch_dtype, attn_implementation="sdpa").eval()
        self.image_processor = transformers.AutoImageProcessor.from_pretrained(model)
        self.limits = dict(limit_mm_per_prompt or {"image": 1, "video": 1})
        self.log: list[dict] = []
        LLM.instances.append(self)

    def _video(self, videos, kw) -> dict:
        import numpy as np
        import torch
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        from processors.patches import normalize_patches, patchify

        p = self.image_processor
        size = kw.get("size", p.size)
        rows, grids = [], []
        for v in videos:
            t, h, w, _ = v.shape
            if smart_resize(h, w, p.patch_size * p.merge_size, size["shortest_edge"], size["longest_edge"]) != (h, w):
                raise ValueError(f"video of {h}x{w} is not at its smart-resized size: verify must send frames "
                                 "already resized (vLLM would resample them)")
            pv, grid = patchify(np.asarray(v), p.patch_size, p.merge_size, p.temporal_patch_size)
            rows.append(normalize_patches(pv, p.image_mean, p.image_std, patch_size=p.patch_size))
            grids.append(grid)
        return {"pixel_values_videos": torch.from_numpy(np.concatenate(rows)),
                "video_grid_thw": torch.tensor(np.asarray(grids), dtype=torch.long)}

    def generate(self, prompts, sampling_params: SamplingParams | None = None, *, use_tqdm: bool = True):
        sp = sampling_params or SamplingParams()
        assert sp.temperature == 0.0, "the stand-in does greedy decoding only"
        return [self._one(str(i), p, sp) for i, p in enumerate(prompts)]

    def _one(self, rid: str, prompt: dict, sp: SamplingParams) -> RequestOutput:
        import numpy as np
        import torch

        if not isinstance(prompt, dict) or set(prompt) - _PROMPT_KEYS or "prompt_token_ids" not in prompt:
            raise TypeError(f"not a TokensPrompt: {type(prompt).__name__} with keys {sorted(prompt)}")
        ids = [int(t) for t in prompt["prompt_token_ids"]]
        mm = prompt.get("multi_modal_data") or {}
        kw = dict(prompt.get("mm_processor_kwargs") or {})
        cfg = self.config
        pads = {"image": cfg.image_token_id, "video": cfg.video_token_id}
        inputs: dict = {}
        rec = {"request": prompt, "grids": {}}
        for modality in ("image", "video"):
            proc = self.image_processor
            items = mm.get(modality, [])
            items = items if isinstance(items, list) else [items]
            if len(items) > self.limits.get(modality, 0):
                raise ValueError(f"At most {self.limits.get(modality, 0)} {modality}(s) may be provided in one prompt")
            n_pad = ids.count(pads[modality])
            if n_pad != len(items):
                raise ValueError(f"Failed to apply prompt replacement for mm_items[{modality!r}]: {n_pad} "
                                 f"placeholders for {len(items)} items")
            if not items:
                continue
            pkw = {k: v for k, v in kw.items() if k != "fps"}
            out = proc(images=items, return_tensors="pt", **pkw) if modality == "image" else self._video(items, pkw)
            grid_key = f"{modality}_grid_thw"
            pv_key = "pixel_values" if modality == "image" else "pixel_values_videos"
            inputs[pv_key], inputs[grid_key] = out[pv_key], out[grid_key]
            rec["grids"][modality] = out[grid_key].tolist()
            if modality == "video" and cfg.model_type == "qwen2_5_vl":
                fps = kw.get("fps", 2.0)
                fps = fps if isinstance(fps, list) else [fps] * len(items)
                tps = proc.temporal_patch_size
                inputs["second_per_grid_ts"] = torch.tensor([tps / f for f in fps])
            merge = proc.merge_size ** 2
            expanded, k = [], 0
            for t in ids:  # PromptReplacement: each single placeholder -> grid.prod() // merge**2 copies
                if t == pads[modality]:
                    expanded += [t] * (int(np.prod(rec["grids"][modality][k])) // merge)
                    k += 1
                else:
                    expanded.append(t)
            ids = expanded
        rec["expanded_ids"] = ids
        self.log.append(rec)
        x = torch.tensor(ids, dtype=torch.long)[None]
        tt = torch.zeros_like(x)
        tt[x == pads["image"]] = 1
        tt[x == pads["video"]] = 2
        rows = self.model.get_output_embeddings().weight.shape[0]
        allowed = set(sp.allowed_token_ids) if sp.allowed_token_ids is not None else None
        suppress = [t for t in range(rows) if t not in allowed] if allowed is not None else None
        with torch.no_grad():
            out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), mm_token_type_ids=tt,
                                      **{k: v.to(self.model.dtype) if k.startswith("pixel") else v
                                         for k, v in inputs.items()},
                                      max_new_tokens=sp.max_tokens, do_sample=False, num_beams=1,
                                      eos_token_id=sp.stop_token_ids, pad_token_id=(sp.stop_token_ids or [0])[0],
                                      suppress_tokens=suppress or None)
        new = out[0, x.shape[1]:].tolist()
        stop = [k for k, t in enumerate(new) if t in (sp.stop_token_ids or [])]
        new = new[:stop[0] + 1] if stop else new  # vLLM's token_ids end with the stop token
        return RequestOutput(rid, [int(t) for t in prompt["prompt_token_ids"]],
                             [CompletionOutput(0, new, finish_reason="stop" if stop else "length")])
