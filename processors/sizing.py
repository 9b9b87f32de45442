"""smart_resize: the target (H, W) of an image or frame, exactly as the Qwen2-VL processor computes it.

Spec §3.1 (transformers >= 4.57 / 5.x): half-even rounding (Python's round), sides < 28 go through the
min branch, `max(factor, ...)` guard when downscaling, aspect ratio > 200 is an error.
"""
from __future__ import annotations

import math

from .errors import AspectRatioError

MAX_RATIO = 200


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 16384,
) -> tuple[int, int]:
    """Return (H, W), both multiples of `factor`, with H*W inside [min_pixels, max_pixels] where possible."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height} (WxH)")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise AspectRatioError(
            f"aspect ratio {max(height, width) / min(height, width):.1f} of a {width}x{height} (WxH) image is "
            f"above {MAX_RATIO}; crop or pad it before preprocessing"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar
