"""`verify` scorer (rejection sampling, Qwen2.5-VL report): a local checkpoint answers each of a
sample's questions greedily and a checker (filters/reward/answer_check.py) says whether each answer
confirms the sample's reference answer.

Every supervised assistant turn is verified. Turn k's prompt is the sample's own tokens before that
turn's first supervised token (system + user turns, vision blocks, and the *reference* answers of the
earlier turns: teacher-forced history, as in training), up to `<|im_start|>assistant\\n`; its reference
is that turn's supervised tokens up to `<|im_end|>`. Vision blocks after the cut are dropped from the
prompt together with their grids and pixels (candidates.truncate). Turn boundaries are found with the
shard tokenizer's SpecialIds (processors.tokenizer.special_ids: Qwen2/Qwen3 ids or Qwen3.5's 248k ones).

Engines (`engine=`): transformers (the `vlm` scorer's model loading -- dtype, attention backend,
device -- and HostBatch collation, uint8 patches normalised on the device; left-padded prompts to
`generate`, greedy, stops at <|im_end|> / <|endoftext|>; positions are transformers' own M-RoPE from
`mm_token_type_ids`, spec §11.4) or vLLM (`vllm.LLM.generate` on token prompts, `vllm_request` below);
auto = vLLM when it is importable and the device is a GPU, else transformers.

Columns
  verify.match          1.0 every checkable answer of the sample is confirmed, 0.0 at least one is not,
                        NaN nothing to check (no supervised answer, or references a checker cannot read)
  verify.turns          answers checked (turns with a readable reference)
  verify.turns_matched  answers confirmed
  verify.value          mean over the checked answers of the checker's measure (mean IoU for box,
                        |difference| for number, 1/0 for choice and text); NaN when their kinds differ
  verify.kind           string: box | choice | number | text, or mixed (turns of several kinds)
  verify.answer         string: the model's answer to the first question, decoded
  verify.answers        string: JSON list, one object per supervised turn:
                        {"turn", "kind", "match" (true/false/null), "value", "answer"[, "error"]}
"""
from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass

import numpy as np

from .answer_check import check_answer
from .batching import HostBatch, plan_batches
from .candidates import answer_spans, truncate
from .protocol import ScorerError
from .stage import ScoreConfig
from .text_scorer import conversation_turns
from .vlm_scorer import VLMScorer

COLUMNS = ["verify.match", "verify.value", "verify.kind", "verify.answer", "verify.turns", "verify.turns_matched",
           "verify.answers"]
ENGINES = ("auto", "vllm", "transformers")
# vLLM reserves its encoder cache / profiles memory for at most this many items per prompt
VLLM_LIMITS = {"image": 8, "video": 2}


# -- turns ------------------------------------------------------------------------------------------

def split_turns(sample: dict, special=None) -> list[tuple[dict, np.ndarray]]:
    """[(turn k's prompt as a shard sample, its reference answer's token ids)] for every supervised turn."""
    ids = np.asarray(sample["input_ids"])
    return [(truncate(sample, s, special), ids[s:e]) for s, e in answer_spans(sample, special)]


def split_prompt(sample: dict, special=None) -> tuple[dict, np.ndarray] | None:
    """The first turn of split_turns, or None without an answer."""
    turns = split_turns(sample, special)
    return turns[0] if turns else None


def unused_ids(model, tokenizer, top: int | None = None) -> list[int] | None:
    """Embedding rows past the tokenizer's last token (151 665 .. 151 935 in the released checkpoints;
    `top`: one past its highest id, default its vocab_size): padding that no text decodes to, so
    generation never picks them."""
    rows = model.get_output_embeddings().weight.shape[0]
    return list(range(tokenizer.vocab_size if top is None else top, rows)) or None


# -- engines ----------------------------------------------------------------------------------------

def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ScorerError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
    return engine


def resolve_engine(engine: str, device) -> str:
    """auto -> vllm when the vllm package is importable and `device` is a GPU, else transformers."""
    check_engine(engine)
    has_vllm = importlib.util.find_spec("vllm") is not None
    if engine == "vllm" and not has_vllm:
        raise ScorerError("--engine vllm: the vllm package is not installed (install it on a CUDA machine), "
                          "or use --engine transformers")
    if engine == "auto":
        return "vllm" if has_vllm and getattr(device, "type", str(device)) == "cuda" else "transformers"
    return engine


def collapse_placeholders(ids, pad_ids) -> list[int]:
    """Each run of one vision placeholder id (`pad_ids`) becomes a single token: the prompt format
    vLLM expects (`<|vision_start|><|image_pad|><|vision_end|>`; its processor expands every
    placeholder to the item's grid.prod() // merge_size**2 tokens)."""
    out: list[int] = []
    for t in np.asarray(ids).tolist():
        if t in pad_ids and out and out[-1] == t:
            continue
        out.append(int(t))
    return out


def vllm_request(prompt: dict, frames: list[tuple[str, np.ndarray]], special, model_type: str,
                 temporal_patch_size: int = 2) -> dict:
    """A vLLM token prompt (vllm.inputs.TokensPrompt) for a shard-style prompt sample.

    vLLM's Qwen2-VL family takes processed input only as embeddings (its data parser reads a dict
    item as image_embeds + image_grid_thw), so the request carries the shard's stored frames instead:
    every image / video frame is already at its smart-resized size, and `size` (min / max pixels) is set
    to bracket those sizes, so vLLM's processor keeps them (no resampling) and its grids equal the
    shard's; it re-does only the rescale / normalise and the patch flattening. `frames`: the sample's
    StoredPixels.items [(kind, uint8 [n, H, W, 3])]; the prompt's first images / videos are used."""
    from PIL import Image

    grids = {"image": np.asarray(prompt["image_grid_thw"]).reshape(-1, 3),
             "video": np.asarray(prompt["video_grid_thw"]).reshape(-1, 3)}
    items = {k: [f for kind, f in frames if kind == k][:len(grids[k])] for k in ("image", "video")}
    if len(grids["video"]) and model_type == "qwen3_vl":
        raise ValueError("a video on Qwen3-VL is not sent to vLLM (its timestamps are rebuilt by vLLM's "
                         "processor); use --engine transformers")
    mm: dict = {}
    sizes = [f.shape[1] * f.shape[2] for k in items for f in items[k]]
    if items["image"]:
        mm["image"] = [Image.fromarray(f[0]) for f in items["image"]]
    if items["video"]:
        mm["video"] = [np.ascontiguousarray(f) for f in items["video"]]
    req = {"prompt_token_ids": collapse_placeholders(prompt["input_ids"], {special.image_pad, special.video_pad})}
    if mm:
        req["multi_modal_data"] = mm
        kwargs = {"size": {"shortest_edge": int(min(sizes)), "longest_edge": int(max(sizes))}}
        if items["video"] and model_type == "qwen2_5_vl":
            # the HF processor computes second_per_grid_ts = temporal_patch_size / fps
            kwargs["fps"] = [float(temporal_patch_size / s) for s in np.asarray(prompt["second_per_grid_ts"])]
        req["mm_processor_kwargs"] = kwargs
    return req


def verify_config(out_dir: str, *, engine: str = "auto", **kw):
    """The stage's ScoreConfig for `vlprep verify`, with the generation engine (VerifyConfig)."""
    return VerifyConfig(out_dir, ("verify",), engine=engine, **kw)


@dataclass
class VerifyConfig(ScoreConfig):
    """ScoreConfig plus the generation engine (stage.make_scorer reads `engine` when present)."""

    engine: str = "auto"   # auto | vllm | transformers

    def __post_init__(self):
        super().__post_init__()
        check_engine(self.engine)


@dataclass
class Turn:
    sample: int          # index in the batch
    turn: int            # 0-based among the sample's supervised turns
    prompt: dict
    reference: np.ndarray


class VerifyScorer:
    name = "verify"

    def __init__(self, model_path: str, *, max_new_tokens: int = 128, iou_threshold: float = 0.5,
                 tokenizer: str | None = None, dtype: str = "auto", engine: str = "auto",
                 vllm_limits: dict | None = None):
        # owns loading the checkpoint; `tokenizer`: the shards' tokenizer folder (job.json), None = built-in
        self.vlm = VLMScorer(model_path, pack="off", visual_gain=False, dtype=dtype, tokenizer=tokenizer)
        self.max_new_tokens = max_new_tokens
        self.iou_threshold = iou_threshold
        self.engine_choice = check_engine(engine)
        self.engine = None
        self.llm = None
        self.vllm_limits = dict(vllm_limits or VLLM_LIMITS)

    @property
    def pack(self) -> bool:
        return False

    def setup(self, device) -> None:
        self.engine = resolve_engine(self.engine_choice, device)
        if self.engine == "transformers":
            self.vlm.setup(device)
            self.vlm.pack = False  # generation runs on left-padded rows
            return
        import transformers

        from .protocol import compute_dtype

        cfg = transformers.AutoConfig.from_pretrained(self.vlm.model_path)   # the family: checked in VLMScorer
        self.temporal_patch_size = int(getattr(getattr(cfg, "vision_config", cfg), "temporal_patch_size", 2))
        dtype = str(compute_dtype(device, self.vlm.dtype_mode)).replace("torch.", "")
        import vllm

        try:
            self.llm = vllm.LLM(model=self.vlm.model_path, tokenizer=self.vlm.tokenizer_path or self.vlm.model_path,
                                dtype=dtype, seed=0, limit_mm_per_prompt=dict(self.vllm_limits))
        except Exception as exc:  # noqa: BLE001 - engine start-up failure: one line
            raise ScorerError(f"{self.vlm.model_path}: starting vLLM failed: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}; try --engine transformers") from exc

    def check_preset(self, preset_name: str) -> str | None:
        return self.vlm.check_preset(preset_name)

    def columns(self) -> list[str]:
        return list(COLUMNS)

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompts: list[dict], batch: HostBatch) -> list[list[int]]:
        """Greedy answers (token ids, without the stop token) for shard-style prompt samples, with
        transformers `generate` on left-padded rows."""
        import torch

        voc = self.vlm.vocab(batch.preset)
        sp, pad = voc.ids, voc.pad
        hb = HostBatch(prompts, batch.preset, batch.device, batch.dtype)
        torch_, dev, _ = hb._torch()
        lengths = hb.lengths
        width = int(lengths.max())
        ids = np.full((len(prompts), width), pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - lengths[i]:] = p["input_ids"]
            mask[i, width - lengths[i]:] = 1
        tt = np.where(ids == sp.image_pad, 1, np.where(ids == sp.video_pad, 2, 0)) * mask
        kw = dict(input_ids=torch.from_numpy(ids).to(dev), attention_mask=torch.from_numpy(mask).to(dev),
                  mm_token_type_ids=torch.from_numpy(tt).to(dev))
        img_grid, vid_grid, sec = hb.grids()
        if img_grid is not None or vid_grid is not None:
            img_pv, vid_pv = hb.normalized_patches()
            if img_grid is not None:
                kw.update(pixel_values=img_pv, image_grid_thw=img_grid)
            if vid_grid is not None:
                kw.update(pixel_values_videos=vid_pv, video_grid_thw=vid_grid)
                if self.vlm.model_type == "qwen2_5_vl":
                    kw["second_per_grid_ts"] = sec
        with torch.inference_mode():
            out = self.vlm.model.generate(**kw, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          num_beams=1, eos_token_id=voc.eos, pad_token_id=pad,
                                          suppress_tokens=unused_ids(self.vlm.model, voc.tokenizer, voc.top()))
        return [_cut(row, voc.eos) for row in out[:, width:].cpu().numpy().tolist()]

    def sampling_params(self, voc):
        """vllm.SamplingParams for greedy answers: temperature 0, `max_new_tokens`, the shards' stop ids,
        only ids the tokenizer has (as the transformers path suppresses the embedding's padding rows)."""
        import vllm

        return vllm.SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens, stop_token_ids=list(voc.eos),
                                   allowed_token_ids=list(range(voc.top())), detokenize=False,
                                   skip_special_tokens=False)

    def generate_vllm(self, requests: list[dict], batch: HostBatch) -> list[list[int]]:
        voc = self.vlm.vocab(batch.preset)
        outs = self.llm.generate(requests, sampling_params=self.sampling_params(voc), use_tqdm=False)
        return [_cut(list(o.outputs[0].token_ids), voc.eos) for o in outs]

    # -- scoring --------------------------------------------------------------------------------
    def _answers(self, turns: list[Turn], batch: HostBatch) -> tuple[list, dict[int, str]]:
        """Answer ids per turn (None where not generated) and a reason per turn not generated."""
        answers: list = [None] * len(turns)
        errors: dict[int, str] = {}
        if self.engine == "vllm":
            sp = self.vlm.vocab(batch.preset).ids
            reqs, idx = [], []
            for k, t in enumerate(turns):
                s = batch.samples[t.sample]
                frames = s["stored_pixels"].items if "stored_pixels" in s else []
                n = {"image": len(t.prompt["image_grid_thw"]), "video": len(t.prompt["video_grid_thw"])}
                over = [m for m in n if n[m] > self.vllm_limits.get(m, 0)]
                if over:
                    errors[k] = (f"{n[over[0]]} {over[0]}s in the prompt, over vLLM's limit_mm_per_prompt "
                                 f"{self.vllm_limits}")
                    continue
                if "stored_pixels" not in s and (n["image"] or n["video"]):
                    errors[k] = ("a format-1 shard (patch rows, no stored frames) cannot go to vLLM; "
                                 "use --engine transformers or re-run `vlprep prepare`")
                    continue
                try:
                    reqs.append(vllm_request(t.prompt, frames, sp, self.vlm.model_type, self.temporal_patch_size))
                    idx.append(k)
                except ValueError as exc:
                    errors[k] = str(exc)
            if reqs:
                for k, a in zip(idx, self.generate_vllm(reqs, batch)):
                    answers[k] = a
            return answers, errors
        # transformers: the batch's own padded budget bounds each generate call
        lengths = np.array([len(t.prompt["input_ids"]) for t in turns], dtype=np.int64)
        budget = max(int(batch.lengths.max()) * len(batch), int(lengths.max()))
        for group in plan_batches(lengths, budget, 1.0):
            for k, a in zip(group, self.generate([turns[k].prompt for k in group], batch)):
                answers[k] = a
        return answers, errors

    def score(self, batch: HostBatch) -> dict[str, np.ndarray]:
        voc = self.vlm.vocab(batch.preset)
        tok, sp = voc.tokenizer, voc.ids
        n = len(batch)
        out = {"verify.match": np.full(n, np.nan), "verify.value": np.full(n, np.nan),
               "verify.kind": np.full(n, None, dtype=object), "verify.answer": np.full(n, None, dtype=object),
               "verify.turns": np.zeros(n), "verify.turns_matched": np.zeros(n),
               "verify.answers": np.full(n, None, dtype=object)}
        turns = [Turn(i, k, p, ref) for i, s in enumerate(batch.samples)
                 for k, (p, ref) in enumerate(split_turns(s, sp))]
        if not turns:
            return out
        answers, errors = self._answers(turns, batch)
        fmt = batch.preset.grounding
        timestamps = batch.preset.video_timestamps is not None  # Qwen3-VL: no `<t s>` text in the question
        per_sample: dict[int, list[dict]] = {}
        for k, (t, ans_ids) in enumerate(zip(turns, answers)):
            rec = {"turn": t.turn, "kind": None, "match": None, "value": None, "answer": None}
            if ans_ids is None:
                rec["error"] = errors.get(k, "not generated")
            else:
                users = [x for r, x in conversation_turns(t.prompt["input_ids"], tok, sp, timestamps)
                         if r == "user"]
                answer = tok.decode(ans_ids).strip()
                c = check_answer(users[-1] if users else "", answer, tok.decode(t.reference.tolist()).strip(), fmt,
                                 iou_threshold=self.iou_threshold)
                rec.update(kind=c.kind, match=c.match, answer=answer,
                           value=None if c.match is None or not math.isfinite(c.value) else float(c.value))
                rec["_value"] = c.value
            per_sample.setdefault(t.sample, []).append(rec)
        for i, recs in per_sample.items():
            checked = [r for r in recs if r["match"] is not None]
            out["verify.answer"][i] = recs[0]["answer"]
            out["verify.turns"][i] = len(checked)
            out["verify.turns_matched"][i] = sum(bool(r["match"]) for r in checked)
            if checked:
                out["verify.match"][i] = float(all(r["match"] for r in checked))
                kinds = {r["kind"] for r in checked}
                out["verify.kind"][i] = kinds.pop() if len(kinds) == 1 else "mixed"
                if out["verify.kind"][i] != "mixed":
                    out["verify.value"][i] = float(np.mean([r["_value"] for r in checked]))
            elif recs[0]["kind"] is not None:
                out["verify.kind"][i] = recs[0]["kind"]
            for r in recs:
                r.pop("_value", None)
            out["verify.answers"][i] = json.dumps(recs, ensure_ascii=False)
        return out


def _cut(row: list[int], stops) -> list[int]:
    stop = [k for k, t in enumerate(row) if t in stops]
    return row[:stop[0]] if stop else row
