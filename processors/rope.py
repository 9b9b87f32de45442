"""M-RoPE position ids (`get_rope_index`) for Qwen2-VL, Qwen2.5-VL and Qwen3-VL, spec §11.1 + docs/qwen3_vl.md.

vlprep reproduces transformers 4.x / the Qwen team's `rope2d.py` (DECISIONS.md): after any vision block
the next text starts at (largest id so far) + 1, which also accounts for a video's temporal extent.
transformers 5.x advances by max(gh, gw) only (§11.4 item 3); the two agree except after videos whose
last temporal id exceeds max(gh, gw) - 1.

Vectorised numpy: the per-item loop runs once per image/video (a handful), never once per token, so
100k-token video sequences cost a few array operations.
"""
from __future__ import annotations

import numpy as np

from .errors import PlaceholderMismatchError
from .presets import IMAGE_PAD_ID, QWEN25_VL, VIDEO_PAD_ID, VISION_START_ID, Preset, get_preset


def temporal_ids(grid_t: int, second_per_grid_t: float | None = None, preset: Preset | str = QWEN25_VL) -> np.ndarray:
    """Relative temporal ids (int64 [grid_t]) of a video's temporal patches.

    Qwen2.5-VL: floor(k * s * tokens_per_second). The product is taken in float32, as the reference
    does it (second_per_grid_ts is a float32 tensor there; k * s, then * tokens_per_second, then
    truncation). `s` is never cast to an integer first — that was the 4.52–4.57 bug (§11.4 item 1),
    which collapses s = 0.5 to all-zero ids. Missing `s` means 1.0, as in 4.x.
    Qwen2-VL (tokens_per_second None): the temporal patch index k.
    """
    preset = get_preset(preset)
    if not preset.is_mrope:
        raise ValueError(f"preset {preset.name!r} has no M-RoPE temporal ids (no video support)")
    if grid_t < 0:
        raise ValueError(f"grid_t must be >= 0, got {grid_t}")
    k = np.arange(grid_t, dtype=np.int64)
    if preset.tokens_per_second is None or preset.rope != "qwen2.5-vl":
        return k
    s = 1.0 if second_per_grid_t is None else float(second_per_grid_t)
    if not np.isfinite(s) or s < 0:
        raise ValueError(f"second_per_grid_t must be a finite number >= 0, got {second_per_grid_t!r}")
    scaled = k.astype(np.float32) * np.float32(s) * np.float32(preset.tokens_per_second)
    return scaled.astype(np.int64)  # truncation == floor for non-negative values


def temporal_patch_times(grid_t: int, second_per_grid_t: float) -> list[float]:
    """Start time in seconds (relative to the first sampled frame) of each temporal patch: k * s.

    Kept in the sample metadata so a reader can map temporal ids back to wall-clock time.
    """
    s = float(second_per_grid_t)
    return [k * s for k in range(int(grid_t))]


def video_timestamps(video_grid_thw, second_per_grid_ts) -> list[list[float]]:
    """`temporal_patch_times` for every video of a sample (grids [v, 3], seconds [v])."""
    grids = _as_grid(video_grid_thw, "video_grid_thw")
    secs = [] if second_per_grid_ts is None else [float(s) for s in np.asarray(second_per_grid_ts).reshape(-1)]
    if len(secs) != len(grids):
        raise ValueError(f"{len(grids)} video grids but {len(secs)} second_per_grid_ts values")
    return [temporal_patch_times(g[0], s) for g, s in zip(grids, secs)]


def _as_grid(grid, name: str) -> np.ndarray:
    if grid is None:
        return np.zeros((0, 3), dtype=np.int64)
    arr = np.asarray(grid, dtype=np.int64)
    if arr.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    arr = arr.reshape(-1, 3) if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape [n, 3], got {np.asarray(grid).shape}")
    if (arr <= 0).any():
        raise ValueError(f"{name} entries must be positive, got {arr.tolist()}")
    return arr


def _vision_items(ids: np.ndarray, vision_start=VISION_START_ID, image_pad=IMAGE_PAD_ID,
                  video_pad=VIDEO_PAD_ID) -> list[tuple[int, bool]]:
    """(index of the first pad, is_video) for each pad run directly preceded by <|vision_start|>.

    Only such pads open a vision block (§11.1 requirement); a stray pad elsewhere is ordinary text.
    """
    starts = np.flatnonzero(ids[:-1] == vision_start) + 1
    nxt = ids[starts]
    keep = (nxt == image_pad) | (nxt == video_pad)
    return [(int(i), bool(v)) for i, v in zip(starts[keep], nxt[keep] == video_pad)]


def get_rope_index(
    input_ids,
    image_grid_thw=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    preset: Preset | str = QWEN25_VL,
    token_ids=None,
) -> tuple[np.ndarray, int]:
    """Position ids int32 [3, L] (int32 [1, L] for qwen-vl) and the rope delta for one unpadded sequence.

    delta = (max position + 1) - L; generation continues at cache_position + delta on all axes.
    `token_ids`: the tokenizer's `processors.tokenizer.SpecialIds` (default: the Qwen2/Qwen3 ids).
    Raises PlaceholderMismatchError when the vision blocks in `input_ids` do not match the grids
    (count, or a pad run of the wrong length): a mismatch is an error, never silently fixed.
    """
    preset = get_preset(preset)
    ids = np.asarray(input_ids)
    if ids.ndim != 1:
        raise ValueError(f"input_ids must be one unpadded sequence of shape [L], got shape {ids.shape}")
    n = ids.shape[0]
    if not preset.is_mrope:
        return np.arange(n, dtype=np.int32)[None], 0

    images = _as_grid(image_grid_thw, "image_grid_thw")
    videos = _as_grid(video_grid_thw, "video_grid_thw")
    if preset.rope == "qwen3-vl" and len(videos):
        # Qwen3-VL: timestamps text separates a video's temporal groups, each its own [1, h, w] vision
        # block (Qwen3VLModel.get_rope_index splits video_grid_thw the same way); no time stride.
        videos = np.repeat(videos, videos[:, 0], axis=0)
        videos[:, 0] = 1
        second_per_grid_ts = None
    secs = None
    if second_per_grid_ts is not None:
        secs = np.asarray(second_per_grid_ts, dtype=np.float64).reshape(-1)
        if secs.size != len(videos):
            raise ValueError(f"{len(videos)} video grids but {secs.size} second_per_grid_ts values")

    v_start, image_pad, video_pad = ((VISION_START_ID, IMAGE_PAD_ID, VIDEO_PAD_ID) if token_ids is None else
                                     (token_ids.vision_start, token_ids.image_pad, token_ids.video_pad))
    items = _vision_items(ids, v_start, image_pad, video_pad) if n else []
    n_img = sum(1 for _, v in items if not v)
    n_vid = len(items) - n_img
    if n_img != len(images) or n_vid != len(videos):
        raise PlaceholderMismatchError(
            f"input_ids hold {n_img} image and {n_vid} video blocks (<|vision_start|> + pad) but "
            f"{len(images)} image and {len(videos)} video grids were given"
        )

    merge = preset.merge_size
    pos = np.empty((3, n), dtype=np.int64)
    cursor = 0  # first index not yet assigned
    next_start = 0  # (max id so far) + 1
    i_img = i_vid = 0
    for first, is_video in items:
        if is_video:
            t, h, w = (int(x) for x in videos[i_vid])
            s = None if secs is None else float(secs[i_vid])
            t_ids = temporal_ids(t, s, preset)
            pad, i_vid = video_pad, i_vid + 1
        else:
            t, h, w = (int(x) for x in images[i_img])
            # Images: s = 0 in Qwen2.5-VL, so every temporal patch gets id 0 (t is 1 for images);
            # Qwen2-VL uses the patch index, as for video.
            t_ids = np.arange(t, dtype=np.int64) if preset.rope == "qwen2-vl" else np.zeros(t, np.int64)
            pad, i_img = image_pad, i_img + 1
        if h % merge or w % merge:
            raise ValueError(f"grid ({t}, {h}, {w}) is not divisible by merge_size {merge}")
        gh, gw = h // merge, w // merge
        count = t * gh * gw
        run = ids[first:first + count]
        if run.shape[0] != count or (run != pad).any() or (first + count < n and ids[first + count] == pad):
            actual = _run_length(ids, first, pad)
            raise PlaceholderMismatchError(
                f"vision block at token {first} has {actual} pad tokens but its grid ({t}, {h}, {w}) needs {count}"
            )
        text_len = first - cursor
        cursor_end = first + count
        pos[:, cursor:first] = next_start + np.arange(text_len, dtype=np.int64)
        base = next_start + text_len
        shape = (t, gh, gw)  # row-major: k, then row a, then column b
        pos[0, first:cursor_end] = np.broadcast_to(base + t_ids[:, None, None], shape).ravel()
        pos[1, first:cursor_end] = np.broadcast_to(base + np.arange(gh, dtype=np.int64)[None, :, None], shape).ravel()
        pos[2, first:cursor_end] = np.broadcast_to(base + np.arange(gw, dtype=np.int64)[None, None, :], shape).ravel()
        last_t = int(t_ids[-1]) if t else 0
        next_start = base + max(last_t, gh - 1, gw - 1) + 1
        cursor = cursor_end
    pos[:, cursor:] = next_start + np.arange(n - cursor, dtype=np.int64)

    delta = int(pos.max()) + 1 - n if n else 0
    if pos.size and pos.max() > np.iinfo(np.int32).max:
        raise ValueError("position ids exceed int32")
    return pos.astype(np.int32), delta


def _run_length(ids: np.ndarray, first: int, pad: int) -> int:
    other = np.flatnonzero(ids[first:] != pad)
    return int(other[0]) if other.size else int(ids.shape[0] - first)
