"""The per-sample transformers references the scorer tests compare against: one sample, no padding,
transformers' own positions (from mm_token_type_ids) unless told otherwise.

* `model_inputs`: the keyword inputs of one sample (pixels normalised as the processor does);
* `reference_mean_logprob`: a plain forward with full logits, log_softmax, mean log-prob of the
  supervised tokens;
* `reference_generate`: greedy `generate` of one prompt, cut at the first stop id.

The vision ids are passed in (default Qwen2/Qwen3's), so a test of another vocabulary writes its own
ids out instead of asking vlprep's helpers."""
from __future__ import annotations

import numpy as np
import torch

from processors.patches import normalize_patches
from processors.presets import IGNORE_INDEX, IMAGE_PAD_ID, VIDEO_PAD_ID


def model_inputs(model, s, preset, input_ids=None, *, vision=True, image_pad=IMAGE_PAD_ID,
                 video_pad=VIDEO_PAD_ID) -> dict:
    """transformers' keyword inputs for sample `s` with `input_ids` (default: its own): input_ids [1, T],
    and where the ids hold vision placeholders (and `vision`), mm_token_type_ids and the sample's pixels
    and grids (second_per_grid_ts for Qwen2.5-VL videos)."""
    ids = torch.tensor(s["input_ids"] if input_ids is None else input_ids, dtype=torch.long)[None]
    kw = {"input_ids": ids}
    if not (vision and ((ids == image_pad).any() or (ids == video_pad).any())):
        return kw
    pv = torch.from_numpy(normalize_patches(s["pixel_values"], preset.image_mean, preset.image_std,
                                            patch_size=preset.patch_size))
    n_img = int(np.prod(s["image_grid_thw"], axis=1).sum()) if len(s["image_grid_thw"]) else 0
    tt = torch.zeros_like(ids)
    tt[ids == image_pad] = 1
    tt[ids == video_pad] = 2
    kw["mm_token_type_ids"] = tt
    if n_img:
        kw.update(pixel_values=pv[:n_img], image_grid_thw=torch.from_numpy(s["image_grid_thw"]).long())
    if len(s["video_grid_thw"]):
        kw.update(pixel_values_videos=pv[n_img:], video_grid_thw=torch.from_numpy(s["video_grid_thw"]).long())
        if model.config.model_type == "qwen2_5_vl":
            kw["second_per_grid_ts"] = torch.from_numpy(s["second_per_grid_ts"])
    return kw


def reference_mean_logprob(model, s, preset, *, input_ids=None, labels=None, vision=True,
                           own_positions=False, image_pad=IMAGE_PAD_ID, video_pad=VIDEO_PAD_ID) -> float:
    """`input_ids`/`labels` default to the sample's; `vision=False` feeds no pixels (pass the
    stripped ids with it); `own_positions` feeds the sample's stored M-RoPE ids instead of letting
    transformers compute them."""
    labels = s["labels"] if labels is None else labels
    kw = model_inputs(model, s, preset, input_ids, vision=vision, image_pad=image_pad, video_pad=video_pad)
    ids = kw["input_ids"]
    if own_positions:
        kw["position_ids"] = torch.from_numpy(np.asarray(s["position_ids"], np.int64))[:, None]
    with torch.no_grad():
        logits = model(**kw).logits[0].float()
    lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[0, 1:, None])[:, 0]
    sup = torch.from_numpy(np.asarray(labels[1:]) != IGNORE_INDEX)
    return float(lp[sup].mean())


def reference_generate(model, prompt, preset, input_ids=None, *, max_new_tokens: int, stop: list[int], pad: int,
                       suppress: list[int] | None, image_pad=IMAGE_PAD_ID, video_pad=VIDEO_PAD_ID) -> list[int]:
    """Greedy `generate` of one prompt sample (its ids, or `input_ids` with its pixels; no padding), the
    new ids up to the first `stop` id."""
    kw = model_inputs(model, prompt, preset, input_ids, image_pad=image_pad, video_pad=video_pad)
    n = kw["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**kw, attention_mask=torch.ones_like(kw["input_ids"]), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=list(stop), pad_token_id=pad, suppress_tokens=suppress)
    row = out[0, n:].tolist()
    cut = [k for k, t in enumerate(row) if t in stop]
    return row[:cut[0]] if cut else row
