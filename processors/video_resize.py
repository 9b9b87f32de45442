"""Video frame resize: bicubic with antialias on uint8, as torchvision's tensor resize does.

torchvision (what qwen-vl-utils and transformers' video processor call) converts uint8 to float32,
runs `torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False)`, clamps
to [0, 255] and rounds back to uint8. torchvision is not a dependency here, so the same steps are
done with torch directly (imported lazily: processors must not import torch at import time).

`fast=True` runs the same filter on the uint8 frames themselves (torch's AVX2 uint8 kernel, a port
of Pillow-SIMD: fixed-point weights, the intermediate pass rounded to uint8). It is 5–12× cheaper
and, on decoded camera video, within DECISIONS.md's bar for video resize (equal to torchvision within
1 level on ≥ 99.9% of values), but not bit-identical: about a fifth of the values differ by one
level, and values next to clipped edges by more — on hard-edged or upscaled synthetic content up to
~1 % of values (numbers in docs/video.md).
"""
from __future__ import annotations

import numpy as np


def require_torch():
    """torch, or one line saying how to get it: the core install (`pip install vlprep`) leaves torch
    to the training environment, and only video resizing needs it."""
    try:
        import torch
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("resizing video frames needs torch (any version >= 2.1, e.g. your training "
                                  "environment's): pip install torch, or pip install 'vlprep[torch]'",
                                  name="torch") from exc
    return torch


def resize_frames(frames: np.ndarray, height: int, width: int, *, fast: bool = False) -> np.ndarray:
    """uint8 [T, h, w, 3] (or [h, w, 3]) -> uint8 [T, H, W, 3] (or [H, W, 3])."""
    single = frames.ndim == 3
    x = frames[None] if single else frames
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {x.dtype} {x.shape}")
    if x.shape[1] == height and x.shape[2] == width:
        out = x.copy()  # torchvision returns the input unchanged when the size already matches
    else:
        torch = require_torch()
        import torch.nn.functional as F

        x = np.ascontiguousarray(x)
        if not x.flags.writeable:  # torch.from_numpy wants a writable buffer (it never writes here)
            x = x.copy()
        t = torch.from_numpy(x).permute(0, 3, 1, 2)  # channels-last view, no copy
        if fast:
            y = F.interpolate(t, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        else:
            y = F.interpolate(t.to(torch.float32), size=(height, width), mode="bicubic", antialias=True,
                              align_corners=False)
            y = y.clamp_(0, 255).round_().to(torch.uint8)
        out = y.permute(0, 2, 3, 1).contiguous().numpy()
    return out[0] if single else out
