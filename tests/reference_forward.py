"""The per-sample transformers reference the scorer tests compare against: one sample, a plain
forward with full logits, log_softmax, mean log-prob of the supervised tokens."""
from __future__ import annotations

import numpy as np
import torch

from processors.patches import normalize_patches
from processors.presets import IGNORE_INDEX, IMAGE_PAD_ID, VIDEO_PAD_ID


def reference_mean_logprob(model, s, preset, *, input_ids=None, labels=None, vision=True,
                           own_positions=False) -> float:
    """`input_ids`/`labels` default to the sample's; `vision=False` feeds no pixels (pass the
    stripped ids with it); `own_positions` feeds the sample's stored M-RoPE ids instead of letting
    transformers compute them."""
    ids = torch.tensor(s["input_ids"] if input_ids is None else input_ids, dtype=torch.long)[None]
    labels = s["labels"] if labels is None else labels
    kw = {}
    if own_positions:
        kw["position_ids"] = torch.from_numpy(np.asarray(s["position_ids"], np.int64))[:, None]
    if vision and (len(s["image_grid_thw"]) or len(s["video_grid_thw"])):
        pv = torch.from_numpy(normalize_patches(s["pixel_values"], preset.image_mean, preset.image_std,
                                                patch_size=preset.patch_size))
        n_img = int(np.prod(s["image_grid_thw"], axis=1).sum()) if len(s["image_grid_thw"]) else 0
        tt = torch.zeros_like(ids)
        tt[ids == IMAGE_PAD_ID] = 1
        tt[ids == VIDEO_PAD_ID] = 2
        kw["mm_token_type_ids"] = tt
        if n_img:
            kw.update(pixel_values=pv[:n_img], image_grid_thw=torch.from_numpy(s["image_grid_thw"]).long())
        if len(s["video_grid_thw"]):
            kw.update(pixel_values_videos=pv[n_img:], video_grid_thw=torch.from_numpy(s["video_grid_thw"]).long())
            if model.config.model_type == "qwen2_5_vl":
                kw["second_per_grid_ts"] = torch.from_numpy(s["second_per_grid_ts"])
    with torch.no_grad():
        logits = model(input_ids=ids, **kw).logits[0].float()
    lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[0, 1:, None])[:, 0]
    sup = torch.from_numpy(np.asarray(labels[1:]) != IGNORE_INDEX)
    return float(lp[sup].mean())
