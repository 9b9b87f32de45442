"""Generated video files for the video tests and bench: real encodes with PyAV.

Unlike media_factory.make_video this writes real display-matrix rotation (PyAV 18's
`set_display_rotation`), variable frame rates with explicit timestamps, and also audio-only and
broken files.
"""
from __future__ import annotations

import fractions
from pathlib import Path

import numpy as np

from media_factory import video_frame

# Quiet, fast encoder settings per codec; everything else is the codec's default.
_CODEC_OPTIONS = {
    "libx264": {"preset": "ultrafast"},
    "libx265": {"preset": "ultrafast", "x265-params": "log-level=error"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
}


def make_clip(path: str | Path, *, codec: str = "libx264", width: int = 96, height: int = 64,
              num_frames: int = 30, fps: float = 30.0, gop: int | None = None, pix_fmt: str = "yuv420p",
              rotation: int | None = None, frame_times: list[float] | None = None,
              bframes: int | None = None, options: dict | None = None, frame_fn=video_frame) -> Path:
    """Encode `num_frames` synthetic frames. `rotation` (counter-clockwise degrees) goes into the
    display matrix; `frame_times` (seconds, increasing) gives a variable-frame-rate clip."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = fractions.Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        opts = dict(_CODEC_OPTIONS.get(codec, {}))
        opts.update(options or {})
        if opts:
            stream.codec_context.options = opts
        if frame_times is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 90000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_fn(i, width, height), format="rgb24")
            if frame_times is not None:
                frame.pts = int(round(frame_times[i] * 90000))
                frame.time_base = fractions.Fraction(1, 90000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_audio_only(path: str | Path, seconds: float = 0.5) -> Path:
    import av

    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000)
        stream.layout = "mono"
        samples = np.zeros((1, int(16000 * seconds)), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def full_decode(path: str | Path) -> tuple[np.ndarray, list[int]]:
    """The plain reference: decode every frame with PyAV from the start, in presentation order."""
    import av

    frames, pts = [], []
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.video[0]):
            frames.append(f.to_ndarray(format="rgb24"))
            pts.append(f.pts)
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    return np.stack([frames[i] for i in order]), [pts[i] for i in order]
