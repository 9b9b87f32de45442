"""`verify` scorer (rejection sampling, Qwen2.5-VL report): a local checkpoint answers each sample's
question greedily and a checker (filters/reward/answer_check.py) says whether that answer confirms the
sample's reference answer.

The question is the sample's own prompt from the shard: every token before the first supervised one
(system + user turns, vision blocks included, up to `<|im_start|>assistant\\n`); the reference is the
first supervised turn (up to its `<|im_end|>`). Later turns of a multi-turn sample are not verified.
Vision blocks after the first answer are cut from the prompt together with their grids and pixels.

Generation: the `vlm` scorer's model loading (dtype, attention backend, device) and HostBatch
collation (uint8 patches normalised on the device) are reused; prompts are left-padded and sent to
transformers' `generate` (greedy, `max_new_tokens`, stops at <|im_end|> / <|endoftext|>). Prompt
positions are transformers' own M-RoPE (from `mm_token_type_ids`), not the shard's: for video they
follow transformers 5.x (spec §11.4). vLLM is not used yet (docs/curation.md, "missing").

Columns
  verify.match   1.0 the answer confirms the reference, 0.0 it does not, NaN nothing to check (no
                 supervised answer, or a reference the checker cannot read, e.g. a box checker without boxes)
  verify.value   the checker's measure: mean IoU (box), |difference| (number), 1/0 (choice, text)
  verify.kind    string: box | choice | number | text
  verify.answer  string: the model's answer, decoded
"""
from __future__ import annotations

import math

import numpy as np

from processors.presets import IGNORE_INDEX, IM_END_ID

from .answer_check import check_answer
from .batching import HostBatch
from .candidates import truncate
from .text_scorer import conversation_turns
from .vlm_scorer import VLMScorer

COLUMNS = ["verify.match", "verify.value", "verify.kind", "verify.answer"]


def split_prompt(sample: dict, special=None) -> tuple[dict, np.ndarray] | None:
    """(the prompt as a shard sample, the reference answer's token ids), or None without an answer.
    `special`: the tokenizer's SpecialIds (None = Qwen2/Qwen3's)."""
    ids, labels = np.asarray(sample["input_ids"]), np.asarray(sample["labels"])
    sup = np.flatnonzero(labels != IGNORE_INDEX)
    if not len(sup):
        return None
    first = int(sup[0])
    ends = np.flatnonzero(ids[first:] == (IM_END_ID if special is None else special.im_end))
    ref = ids[first:first + int(ends[0])] if len(ends) else ids[first:]
    return truncate(sample, first, special), ref


def unused_ids(model, tokenizer, top: int | None = None) -> list[int] | None:
    """Embedding rows past the tokenizer's last token (151 665 .. 151 935 in the released checkpoints;
    `top`: one past its highest id, default its vocab_size): padding that no text decodes to, so
    generation never picks them."""
    rows = model.get_output_embeddings().weight.shape[0]
    return list(range(tokenizer.vocab_size if top is None else top, rows)) or None


class VerifyScorer:
    name = "verify"

    def __init__(self, model_path: str, *, max_new_tokens: int = 128, iou_threshold: float = 0.5,
                 tokenizer: str | None = None, dtype: str = "auto"):
        # owns loading the checkpoint; `tokenizer`: the shards' tokenizer folder (job.json), None = built-in
        self.vlm = VLMScorer(model_path, pack="off", visual_gain=False, dtype=dtype, tokenizer=tokenizer)
        self.max_new_tokens = max_new_tokens
        self.iou_threshold = iou_threshold

    @property
    def pack(self) -> bool:
        return False

    def setup(self, device) -> None:
        self.vlm.setup(device)
        self.vlm.pack = False  # generation runs on left-padded rows

    def check_preset(self, preset_name: str) -> str | None:
        return self.vlm.check_preset(preset_name)

    def columns(self) -> list[str]:
        return list(COLUMNS)

    def generate(self, prompts: list[dict], batch: HostBatch) -> list[list[int]]:
        """Greedy answers (token ids, without the stop token) for shard-style prompt samples."""
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
        answers = []
        for row in out[:, width:].cpu().numpy().tolist():
            stop = [k for k, t in enumerate(row) if t in voc.eos]
            answers.append(row[:stop[0]] if stop else row)
        return answers

    def score(self, batch: HostBatch) -> dict[str, np.ndarray]:
        voc = self.vlm.vocab(batch.preset)
        tok, sp = voc.tokenizer, voc.ids
        n = len(batch)
        out = {"verify.match": np.full(n, np.nan), "verify.value": np.full(n, np.nan),
               "verify.kind": np.full(n, None, dtype=object), "verify.answer": np.full(n, None, dtype=object)}
        split = [split_prompt(s, sp) for s in batch.samples]
        todo = [i for i, sp in enumerate(split) if sp is not None]
        if not todo:
            return out
        answers = self.generate([split[i][0] for i in todo], batch)
        fmt = batch.preset.grounding
        for i, ans_ids in zip(todo, answers):
            prompt, ref_ids = split[i]
            users = [t for r, t in conversation_turns(prompt["input_ids"], tok, sp) if r == "user"]
            question = users[-1] if users else ""
            answer = tok.decode(ans_ids).strip()
            c = check_answer(question, answer, tok.decode(ref_ids.tolist()).strip(), fmt,
                             iou_threshold=self.iou_threshold)
            out["verify.kind"][i], out["verify.answer"][i] = c.kind, answer
            out["verify.match"][i] = math.nan if c.match is None else float(c.match)
            out["verify.value"][i] = c.value
        return out
