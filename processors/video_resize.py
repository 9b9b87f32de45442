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
# Float mode on frames of more than 1080p's pixels: the horizontal pass runs on strips of
# _STRIP_ROWS rows converted to float32 one at a time (see _float_resize). Below that a whole planar
# float32 frame is as fast (measured for issue #14: 720p 11.3 vs 11.9, 1080p 20.5 vs 21.3 CPU ms;
# 4K 57 vs 123 ms with strips).
_STRIP_MIN_PIXELS = 2_100_000
_STRIP_ROWS = 32



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
                  fast: bool | None = None, out=None) -> np.ndarray:
    """uint8 [T, h, w, 3] (or [h, w, 3], or a list of [h, w, 3] frames of one size) -> uint8
    [T, H, W, 3] (or [H, W, 3]).

    `mode`: "qwen-vl-utils" (float32 path, torchvision v1) or "transformers" (uint8 path,
    torchvision v2 on CPU). `fast=True` is the deprecated spelling of mode="transformers".
    `out`: where to write the T resized frames (a uint8 [T, H, W, 3] array or a sequence of T
    writable [H, W, 3] arrays); it is returned. Frames are resized one at a time, each straight
    from its own buffer into its place in `out` (no stacked copy of the inputs)."""
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
        for src, dst in zip(seq, out):
            dst[...] = src  # torchvision returns the input unchanged when the size already matches
        return result
    torch = require_torch()

    scratch: dict = {}
    for src, dst in zip(seq, out):
        if not src.flags.writeable:  # torch.from_numpy wants a writable buffer (it never writes here)
            src = src.copy()
        t = torch.from_numpy(src).permute(2, 0, 1)[None]  # channels-last view, no copy
        d = torch.from_numpy(dst).permute(2, 0, 1)[None]
        if mode == TRANSFORMERS:
            _uint8_resize_into(t, d)
        else:
            y = _float_resize(t, height, width, scratch)
            d.copy_(y.clamp_(0, 255).round_())  # float -> uint8 cast of whole numbers: `.to(torch.uint8)`
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


def _float_resize(t, height: int, width: int, scratch: dict | None = None):
    """One uint8 frame [1, C, h, w] (any strides) -> float32 [1, C, H, W]:
    torchvision v1's `interpolate(t.float(), bicubic, antialias=True)`, bit for bit.

    torch's antialiased interpolation is separable: a horizontal pass into a float32 buffer of
    (h, width), then a vertical pass. Each pass's weights depend only on that axis's two sizes, and
    each output value is the same sum of the same products whatever the memory layout, so running
    the horizontal pass alone (`size=(h, width)`) on row strips and then the vertical pass alone
    (`size=(height, width)`) gives the same values as one call on the whole frame. What it saves
    (issue #14, CPU per 720p-4K frame, one thread): the uint8 -> float32 copy of the whole frame
    (4 bytes per value, the largest buffer of the float path) becomes one strip at a time that stays
    in cache, and the passes run on planar (contiguous NCHW) float32 one frame at a time, which
    torch's generic antialias kernel walks 1.5-2x faster than the channels-last batch it got before.
    `scratch`: a dict the caller keeps across frames of one size; the float input, the horizontal
    pass and the result are written into buffers kept there (`out=`), not allocated (and page-faulted)
    per frame. The result is one of them: use it before the next call.
    Tested against the golden files with the strip path forced on every case."""
    import torch

    scratch = {} if scratch is None else scratch
    n, c, h, w = t.shape

    def buf(name, shape):
        b = scratch.get(name)
        if b is None or tuple(b.shape) != shape:
            b = scratch[name] = torch.empty(shape, dtype=torch.float32)
        return b

    if h * w < _STRIP_MIN_PIXELS or w == width or h <= _STRIP_ROWS:
        x = buf("x", (n, c, h, w))
        x.copy_(t)
        return _interp_into(x, buf("y", (n, c, height, width)))
    tmp = buf("h", (n, c, h, width))
    for r0 in range(0, h, _STRIP_ROWS):
        r1 = min(r0 + _STRIP_ROWS, h)
        strip = t[:, :, r0:r1].to(torch.float32, memory_format=torch.contiguous_format)
        _interp_into(strip, tmp[:, :, r0:r1])
    if h == height:
        return tmp  # the caller rounds it in place; the next frame overwrites every value
    return _interp_into(tmp, buf("y", (n, c, height, width)))


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
