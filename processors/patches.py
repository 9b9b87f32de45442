"""Patchify frames into the row/column layout the Qwen2-VL vision tower expects (spec §4 step 8).

Storage is uint8 (lossless, 4x smaller than float32); normalisation to the model's float32
`pixel_values` happens where the consumer loads them (`normalize_patches`, or on the GPU).
"""
from __future__ import annotations

import numpy as np


def patchify(
    frames: np.ndarray,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """uint8 frames [T, H, W, 3] -> (patches [gt*gh*gw, 3*tp*p*p], (gt, gh, gw)).

    T is padded to a multiple of temporal_patch_size by repeating the last frame. H and W must be
    multiples of patch_size * merge_size.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got shape {frames.shape}")
    t, h, w, c = frames.shape
    p, m, tp = patch_size, merge_size, temporal_patch_size
    if h % (p * m) or w % (p * m):
        raise ValueError(f"frame size {h}x{w} is not a multiple of {p * m}")
    if t % tp:
        pad = np.repeat(frames[-1:], tp - t % tp, axis=0)
        frames = np.concatenate([frames, pad], axis=0)
        t = frames.shape[0]
    gt, gh, gw = t // tp, h // p, w // p
    # [gt, tp, gh/m, m, p, gw/m, m, p, C] -> [gt, gh/m, gw/m, m(h), m(w), C, tp, p(y), p(x)]
    x = frames.reshape(gt, tp, gh // m, m, p, gw // m, m, p, c)
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    patches = np.ascontiguousarray(x).reshape(gt * gh * gw, c * tp * p * p)
    return patches, (gt, gh, gw)


def unpatchify(
    patches: np.ndarray,
    grid_thw: tuple[int, int, int],
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> np.ndarray:
    """Inverse of `patchify`: patches [N, 3*tp*p*p] -> frames [gt*tp, gh*p, gw*p, 3]."""
    gt, gh, gw = (int(v) for v in grid_thw)
    p, m, tp = patch_size, merge_size, temporal_patch_size
    c = 3
    if patches.shape != (gt * gh * gw, c * tp * p * p):
        raise ValueError(f"patches shape {patches.shape} does not match grid {grid_thw}")
    x = patches.reshape(gt, gh // m, gw // m, m, m, c, tp, p, p)
    x = x.transpose(0, 6, 1, 3, 7, 2, 4, 8, 5)
    return np.ascontiguousarray(x).reshape(gt * tp, gh * p, gw * p, c)


def normalize_patches(
    patches: np.ndarray,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    temporal_patch_size: int = 2,
    patch_size: int = 14,
) -> np.ndarray:
    """uint8 patches -> float32 pixel_values: x/255, then (x - mean[c]) / std[c] per channel block."""
    per_channel = temporal_patch_size * patch_size * patch_size
    mean_col = np.repeat(np.asarray(mean, dtype=np.float32), per_channel)
    std_col = np.repeat(np.asarray(std, dtype=np.float32), per_channel)
    x = patches.astype(np.float32) * np.float32(1 / 255)
    return (x - mean_col) / std_col
