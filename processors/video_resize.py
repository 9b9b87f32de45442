"""Video frame resize: bicubic with antialias, in one of two modes, each bit-exact to a reference.

`mode="qwen-vl-utils"` (the default) equals `torchvision.transforms.functional.resize` (v1 API) on a
uint8 TCHW tensor, which is what qwen-vl-utils' `fetch_video` calls: uint8 → float32 →
`interpolate(bicubic, antialias=True, align_corners=False)` → clamp to [0, 255] → round → uint8.
It also equals transformers' video processors when they run on a CUDA device (torchvision v2 casts
uint8 to float there, the same steps).

`mode="transformers"` equals `torchvision.transforms.v2.functional.resize` on CPU, which is what
transformers' video processors (`BaseVideoProcessor` → `TorchvisionBackend.resize`) do to the uint8
frames of a video on CPU: torch's native uint8 bicubic+antialias kernel (fixed-point weights, the
intermediate pass rounded to uint8). It is 5–12× cheaper than the float path.

The two references differ from each other (on decoded video ~12–20 % of values by 1 level, up to
~20 levels next to clipped hard edges); each mode is equal to its own reference bit for bit on every
golden case (tests/test_video_resize_reference.py; goldens from the real torchvision 0.28,
transformers 5.24 and qwen-vl-utils 0.0.14 by `make reference`). torchvision is not a dependency:
the same torch calls are made directly (imported lazily: processors must not import torch at import
time). Which training stacks feed which reference: docs/video.md.
"""
from __future__ import annotations

import numpy as np

QWEN_VL_UTILS = "qwen-vl-utils"
TRANSFORMERS = "transformers"
RESIZE_MODES = (QWEN_VL_UTILS, TRANSFORMERS)
DEFAULT_RESIZE = QWEN_VL_UTILS
# Float mode: the horizontal pass converts and resizes _STRIP_ROWS rows of a frame at a time (see
# _float_resize_into). Each call of torch's kernel recomputes that axis's weights (35-75 µs for a
# 720p-4K row), so much thinner strips cost more than the cache saves (4K, 32 rows: ≈ 4.8 ms); 96-256
# rows measured equal within 2 % on 720p-4K, one whole-frame strip 6 % slower at 4K
# (`python bench/video_resize.py --against '' --strip-rows 96,128,256`).
_STRIP_ROWS = 192


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


def resize_mode(resize: str | None = None, fast: bool | None = None, default: str = DEFAULT_RESIZE) -> str:
    """The mode for a `resize=` value and the deprecated `fast=` flag (True → "transformers");
    neither: `default` (a preset's `video_resize`)."""
    if resize is not None and resize not in RESIZE_MODES:
        raise ValueError(f"video resize must be one of {list(RESIZE_MODES)}, got {resize!r}")
    if fast is not None and resize is not None and (resize == TRANSFORMERS) != bool(fast):
        raise ValueError(f"fast={fast} (deprecated) contradicts resize={resize!r}; drop `fast`")
    if resize is not None:
        return resize
    return TRANSFORMERS if fast else default


def resize_frames(frames, height: int, width: int, *, mode: str = DEFAULT_RESIZE,
                  fast: bool | None = None, out=None, on_frame=None) -> np.ndarray:
    """uint8 [T, h, w, 3] (or [h, w, 3], or a list of [h, w, 3] frames of one size) -> uint8
    [T, H, W, 3] (or [H, W, 3]).

    `mode`: "qwen-vl-utils" (float32 path, torchvision v1) or "transformers" (uint8 path,
    torchvision v2 on CPU). `fast=True` is the deprecated spelling of mode="transformers".
    `out`: where to write the T resized frames (a uint8 [T, H, W, 3] array or a sequence of T
    writable [H, W, 3] arrays); it is returned. Frames are resized one at a time, each straight
    from its own buffer into its place in `out` (no stacked copy of the inputs).
    `on_frame(i, row)`: called after frame i is written into its row of `out`, before the next frame
    is resized (so `out` may name one buffer T times, each row consumed by `on_frame` while it is
    still in cache: `process_video` patchifies it there)."""
    if fast is not None:
        mode = resize_mode(None, fast) if mode == DEFAULT_RESIZE else resize_mode(mode, fast)
    elif mode not in RESIZE_MODES:
        raise ValueError(f"video resize mode must be one of {list(RESIZE_MODES)}, got {mode!r}")
    single = isinstance(frames, np.ndarray) and frames.ndim == 3
    seq = [frames] if single else frames if isinstance(frames, (list, tuple)) else None
    if seq is None:
        x = np.asarray(frames)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {x.dtype} {x.shape}")
        seq = list(x)
    if not seq:
        raise ValueError("expected at least one frame, got 0")
    shape = seq[0].shape
    for f in seq:
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[-1] != 3 or f.shape != shape:
            what = f"{f.dtype} {f.shape}" if isinstance(f, np.ndarray) else type(f).__name__
            raise ValueError(f"expected uint8 frames [T, H, W, 3] of one size, got {what} after {shape}")
    if out is None:
        out = np.empty((len(seq), height, width, 3), dtype=np.uint8)
        result = out[0] if single else out
    else:
        result = out
        if single:
            out = [out]
    if len(out) != len(seq):
        raise ValueError(f"out holds {len(out)} frames for {len(seq)} inputs")
    if shape[0] == height and shape[1] == width:
        for i, (src, dst) in enumerate(zip(seq, out)):
            dst[...] = src  # torchvision returns the input unchanged when the size already matches
            if on_frame is not None:
                on_frame(i, dst)
        return result
    torch = require_torch()

    scratch: dict = {}
    for i, (src, dst) in enumerate(zip(seq, out)):
        if not src.flags.writeable:  # torch.from_numpy wants a writable buffer (it never writes here)
            src = src.copy()
        if mode == TRANSFORMERS:  # channels-last NCHW views, no copy
            _uint8_resize_into(torch.from_numpy(src).permute(2, 0, 1)[None],
                               torch.from_numpy(dst).permute(2, 0, 1)[None])
        else:
            _float_resize_into(torch.from_numpy(src), torch.from_numpy(dst), scratch)
        if on_frame is not None:
            on_frame(i, dst)
    return result


def _uint8_resize_into(t, d) -> None:
    """torchvision v2's uint8 resize (`interpolate(t, bicubic, antialias=True)` on uint8) of one frame
    [1, C, h, w] written straight into `d` [1, C, H, W], a channels-last view of the output row.

    torch's uint8 antialias kernel works on channels-last (RGBA-unpacked) data whatever layout it is
    given, and `F.interpolate` returns a contiguous NCHW tensor: copying that into the channels-last
    row transposed every value again, 2/3 of the CPU of the whole resize (issue #14: 720p -> 560x1008,
    3.1-3.7 -> 1.2-1.3 ms per frame, one thread). The kernel writes channels-last `out` directly; same
    kernel, same values (the golden tests run this path)."""
    import torch.nn.functional as F

    try:
        _upsample_bicubic_aa(t, [d.shape[2], d.shape[3]], False, None, None, out=d)
    except (AttributeError, TypeError, RuntimeError):  # an older torch without the out= overload
        d.copy_(F.interpolate(t, size=tuple(d.shape[2:]), mode="bicubic", antialias=True, align_corners=False))


def _upsample_bicubic_aa(*args, **kw):
    import torch

    return torch._C._nn._upsample_bicubic2d_aa(*args, **kw)


def _float_resize_into(t, d, scratch: dict) -> None:
    """torchvision v1's resize of one uint8 frame `t` [h, w, C] (any strides) into `d` [H, W, C]
    (any strides): `interpolate(float32, bicubic, antialias=True)` → clamp → round → uint8, bit for bit.

    torch's antialiased interpolation is separable: a horizontal pass (w → W) into a float32 buffer
    of (h, W), then a vertical pass (h → H); each pass's weights depend only on that axis's two sizes,
    and each output value is the same sum of the same products in the same order whatever the memory
    layout and whatever the other axis. So the two passes are run as two calls on layouts that need
    no copies between them:
    * the horizontal pass sees every (row, channel) pair as one row of samples: rows as [h, C, w]
      float32 (the uint8 → float32 copy of the frame writes this order, `_STRIP_ROWS` rows at a time
      into a buffer that stays in cache), viewed as [1, 1, rows·C, w] and resized to width W straight
      into rows r0:r1 of `tmp` [h, C, W] — a contiguous block, so the kernel's `out=` writes it
      (the planar NCHW layout of before made each strip a strided view: `interpolate` + copy);
    * the vertical pass sees `tmp` as [1, 1, h, C·W] (columns are independent) → `y` [H, C, W];
    * clamp and round in place, then one strided copy per channel into `d` (the float → uint8 cast of
      whole numbers; one copy of the permuted [H, C, W] view walks 3-element inner loops, 2× slower).
    An axis whose size does not change is not resized (torch's identity weights are exactly 1 and 0).
    One-column outputs: torch 2.13's kernel is wrong on contiguous NCHW planes 1 px wide (the planar
    buffers of before gave those values); these layouts give what qwen-vl-utils' channels-last
    tensor gets, the right values (tests/test_video_float_resize.py::test_one_column_output).
    `scratch`: a dict the caller keeps across frames of one size; the float buffers live there, so a
    batch allocates (and page-faults) them once. Tested against the golden files and the literal v1
    steps on 1-px to 4K shapes, up and down, at every strip boundary (tests/test_video_float_resize.py)."""
    import torch

    h, w, c = t.shape
    height, width = d.shape[0], d.shape[1]

    def buf(name, shape):
        b = scratch.get(name)
        if b is None or tuple(b.shape) != shape:
            b = scratch[name] = torch.empty(shape, dtype=torch.float32)
        return b

    tmp = buf("h", (h, c, width))
    if w == width:
        tmp.copy_(t.permute(0, 2, 1))
    else:
        rows = max(1, _STRIP_ROWS)
        x = buf("x", (min(h, rows), c, w))
        for r0 in range(0, h, rows):
            r1 = min(r0 + rows, h)
            strip = x[: r1 - r0]
            strip.copy_(t[r0:r1].permute(0, 2, 1))
            _interp_into(strip.view(1, 1, (r1 - r0) * c, w), tmp[r0:r1].view(1, 1, (r1 - r0) * c, width))
    if h == height:
        y = tmp  # the next frame overwrites every value
    else:
        y = buf("y", (height, c, width))
        _interp_into(tmp.view(1, 1, h, c * width), y.view(1, 1, height, c * width))
    y.clamp_(0, 255).round_()
    for k in range(c):
        d[:, :, k].copy_(y[:, k])


def _interp_into(x, out):
    """`out[...] = interpolate(x, out's size, bicubic, antialias=True)` (float32), without a temporary
    where torch has the out= overload."""
    import torch.nn.functional as F

    if out.is_contiguous():
        try:
            return _upsample_bicubic_aa(x, [out.shape[2], out.shape[3]], False, None, None, out=out)
        except (AttributeError, TypeError, RuntimeError):
            pass
    out.copy_(F.interpolate(x, size=tuple(out.shape[2:]), mode="bicubic", antialias=True, align_corners=False))
    return out
