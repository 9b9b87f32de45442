"""Small generated media for tests and benchmarks: real encoded files, written with Pillow and PyAV."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def gradient_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic, textured uint8 [H, W, 3] image (gradients + noise, so resizes are non-trivial)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    b = ((x + y + seed * 37) % 256).astype(np.uint8)
    img = np.stack([r, g, b], axis=-1).astype(np.int16)
    img += rng.integers(-20, 21, size=img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image(path: str | Path, width: int, height: int, *, fmt: str | None = None, mode: str = "RGB",
               seed: int = 0, **save_kwargs) -> Path:
    """Write a generated image; `mode` converts before saving (e.g. "CMYK", "P", "LA", "I;16", "1")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(gradient_rgb(width, height, seed))
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt, **save_kwargs)
    return path


def video_frame(index: int, width: int, height: int) -> np.ndarray:
    """Frame `index` of a synthetic clip: a moving square over a gradient, plus the index encoded in a corner."""
    frame = gradient_rgb(width, height, seed=1)
    s = max(4, min(width, height) // 4)
    x0 = (index * 7) % max(width - s, 1)
    y0 = (index * 3) % max(height - s, 1)
    frame[y0:y0 + s, x0:x0 + s] = (255, 255 - (index * 5) % 256, (index * 11) % 256)
    return frame


def make_video(path: str | Path, *, width: int = 160, height: int = 120, num_frames: int = 30,
               fps: float = 30.0, codec: str = "libx264", gop: int | None = None,
               pix_fmt: str = "yuv420p", rotation: int | None = None,
               frame_times: list[float] | None = None, options: dict | None = None) -> Path:
    """Encode a synthetic clip with PyAV (see video_factory.make_clip, which this forwards to).

    `frame_times` (seconds, increasing) makes a variable-frame-rate clip; `rotation` writes the
    display matrix (counter-clockwise degrees).
    """
    from video_factory import make_clip

    return make_clip(path, codec=codec, width=width, height=height, num_frames=num_frames, fps=fps, gop=gop,
                     pix_fmt=pix_fmt, rotation=rotation, frame_times=frame_times, options=options)
