"""Scoring candidate continuations of a shard sample with the `vlm` scorer's forward pass.

The model-based curation signals (VLM category tagger, grounding quality, query quality, answer
verification) all ask the same thing: how likely does the checkpoint find some tokens after some
prefix of a sample? This module builds those rows as ordinary shard-style samples (vision blocks in
the prefix kept, with their grids and pixel rows; M-RoPE ids from processors.rope.get_rope_index,
the function the encoder writes shards with) and scores them in token-budget batches through
`VLMScorer._answer_logprob`, so they share its batching, device handling and lm_head path.
"""
from __future__ import annotations

import numpy as np

from processors.presets import IGNORE_INDEX, IMAGE_PAD_ID, VIDEO_PAD_ID

from .batching import HostBatch, plan_batches


def _rows(grids) -> np.ndarray:
    g = np.asarray(grids).reshape(-1, 3)
    return np.prod(g, axis=1).astype(np.int64) if len(g) else np.zeros(0, np.int64)


def _count_items(pad_tokens: int, rows: np.ndarray) -> int:
    """How many leading vision items (rows / 4 placeholders each, merge 2x2) `pad_tokens` placeholders hold."""
    cum = np.concatenate([[0], np.cumsum(rows // 4)])
    k = int(np.searchsorted(cum, pad_tokens))
    if k >= len(cum) or cum[k] != pad_tokens:
        raise ValueError(f"prefix holds {pad_tokens} vision placeholders, not a whole number of items {cum.tolist()}")
    return k


def truncate(sample: dict, n: int, special=None) -> dict:
    """The sample's first `n` tokens as a sample: vision items after the cut are dropped with their
    grids and pixel rows; no position is supervised. `special`: the tokenizer's SpecialIds (None =
    Qwen2/Qwen3's)."""
    ids = np.asarray(sample["input_ids"])[:n]
    img_rows, vid_rows = _rows(sample["image_grid_thw"]), _rows(sample["video_grid_thw"])
    image_pad, video_pad = (IMAGE_PAD_ID, VIDEO_PAD_ID) if special is None else (special.image_pad, special.video_pad)
    n_img = _count_items(int((ids == image_pad).sum()), img_rows)
    n_vid = _count_items(int((ids == video_pad).sum()), vid_rows)
    # a stage sample (read with pixels="frames") carries stored frames: its rows are rebuilt here
    pv = np.asarray(sample["pixel_values"] if "pixel_values" in sample else sample["stored_pixels"].pixel_values())
    all_img = int(img_rows.sum())
    pixels = np.concatenate([pv[:int(img_rows[:n_img].sum())], pv[all_img:all_img + int(vid_rows[:n_vid].sum())]])
    return {
        "id": sample["id"], "input_ids": ids, "labels": np.full(len(ids), IGNORE_INDEX, np.int64),
        "position_ids": np.asarray(sample["position_ids"])[..., :n], "pixel_values": pixels,
        "image_grid_thw": np.asarray(sample["image_grid_thw"]).reshape(-1, 3)[:n_img],
        "video_grid_thw": np.asarray(sample["video_grid_thw"]).reshape(-1, 3)[:n_vid],
        "second_per_grid_ts": np.asarray(sample["second_per_grid_ts"]).reshape(-1)[:n_vid],
        "meta": sample.get("meta", {}),
    }


def extend(prefix: dict, ids, preset, *, supervised=None, special=None) -> dict:
    """`prefix` (a sample) followed by `ids`; the appended tokens are supervised (or those where the
    boolean `supervised` is True). Positions for the whole row come from get_rope_index (`special`: the
    tokenizer's SpecialIds; None = Qwen2/Qwen3's)."""
    from processors.rope import get_rope_index

    ids = np.asarray(ids, dtype=np.int64)
    sup = np.ones(len(ids), bool) if supervised is None else np.asarray(supervised, bool)
    full = np.concatenate([np.asarray(prefix["input_ids"], np.int64), ids])
    labels = np.concatenate([np.asarray(prefix["labels"], np.int64), np.where(sup, ids, IGNORE_INDEX)])
    vids = np.asarray(prefix["video_grid_thw"]).reshape(-1, 3)
    pos, _ = get_rope_index(full, prefix["image_grid_thw"], vids,
                            np.asarray(prefix["second_per_grid_ts"], np.float32) if len(vids) else None, preset,
                            token_ids=special)
    return {**prefix, "input_ids": full, "labels": labels, "position_ids": pos}


def relabel(sample: dict, supervised: np.ndarray) -> dict:
    """The same row with only the `supervised` positions scored."""
    ids = np.asarray(sample["input_ids"], np.int64)
    return {**sample, "labels": np.where(np.asarray(supervised, bool), ids, IGNORE_INDEX)}


def row_logprobs(vlm, rows: list[dict], batch: HostBatch, budget_tokens: int = 16384,
                 with_vision: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mean log-prob, number of supervised tokens) per row; sum = mean * count.

    Rows are grouped by length into padded batches of at most `budget_tokens` (plan_batches) and sent
    through `vlm._answer_logprob` on `batch`'s device/dtype; with_vision=False drops every vision
    block first (HostBatch.text_only: plain text positions)."""
    n = len(rows)
    mean = np.full(n, np.nan)
    counts = np.array([int((np.asarray(r["labels"])[1:] != IGNORE_INDEX).sum()) for r in rows], dtype=np.int64)
    if not n:
        return mean, counts
    import torch

    lengths = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
    special = vlm.vocab(batch.preset).ids
    for group in plan_batches(lengths, budget_tokens, 0.25):
        hb = HostBatch([rows[i] for i in group], batch.preset, batch.device, batch.dtype)
        if not with_vision:
            hb = hb.text_only(special)
        with torch.inference_mode():
            lp, _ = vlm._answer_logprob(hb, with_vision=with_vision)
        mean[group] = lp
    return mean, counts


class CandidateScorer:
    """Base of the scorers that rank candidate continuations with a local checkpoint: the `vlm`
    scorer owns loading it (dtype, attention backend, device); rows are padded, never packed."""

    name = "candidates"
    pack = False

    def __init__(self, model_path: str, *, batch_tokens: int = 16384, tokenizer: str | None = None,
                 dtype: str = "auto"):
        from .vlm_scorer import VLMScorer

        # `tokenizer`: the folder the shards were prepared with (job.json); None = the built-in ranks
        self.vlm = VLMScorer(model_path, pack="off", visual_gain=False, dtype=dtype, tokenizer=tokenizer)
        self.batch_tokens = batch_tokens

    def setup(self, device) -> None:
        self.vlm.setup(device)
        self.vlm.pack = False

    def check_preset(self, preset_name: str) -> str | None:
        return self.vlm.check_preset(preset_name)

    def _tok(self, batch: HostBatch):
        return self.vlm.vocab(batch.preset).tokenizer

    def _ids(self, batch: HostBatch):
        """The shards' SpecialIds (processors.tokenizer.special_ids of their tokenizer)."""
        return self.vlm.vocab(batch.preset).ids

    def logprobs(self, rows: list[dict], batch: HostBatch, with_vision: bool = True):
        return row_logprobs(self.vlm, rows, batch, self.batch_tokens, with_vision)


def first_answer(sample: dict, im_end: int | None = None) -> tuple[int, int] | None:
    """(start, end) token span of the first supervised answer (end at its <|im_end|>: `im_end`, default
    Qwen2/Qwen3's), or None."""
    from processors.presets import IM_END_ID

    im_end = IM_END_ID if im_end is None else im_end
    ids, labels = np.asarray(sample["input_ids"]), np.asarray(sample["labels"])
    sup = np.flatnonzero(labels != IGNORE_INDEX)
    if not len(sup):
        return None
    first = int(sup[0])
    ends = np.flatnonzero(ids[first:] == im_end)
    return first, first + int(ends[0]) if len(ends) else len(ids)
