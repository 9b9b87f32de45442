"""Small generated media for tests and benchmarks: real encoded files, written with Pillow and PyAV."""
from __future__ import annotations

import fractions
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
    """Encode a synthetic clip with PyAV.

    `frame_times` (seconds, increasing) makes a variable-frame-rate clip; `rotation` writes
    display-matrix metadata (degrees) where the container supports it.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = fractions.Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        opts = dict(options or {})
        if gop is not None:
            stream.codec_context.gop_size = gop
        if opts:
            stream.options = opts
        if frame_times is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 90000)
        if rotation is not None:
            stream.metadata["rotate"] = str(rotation)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(video_frame(i, width, height), format="rgb24")
            if frame_times is not None:
                frame.pts = int(round(frame_times[i] * 90000))
                frame.time_base = fractions.Fraction(1, 90000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
