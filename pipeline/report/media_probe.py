"""Media facts from headers and container metadata only: no pixel is decoded.

Thin views over the loader's own readers, `processors.image.image_size_from_header` and
`processors.video.probe_video`, so the pre-flight sees the sizes the prepare job will see.
"""
from __future__ import annotations

from dataclasses import dataclass

from processors.errors import MediaError
from processors.image import image_size_from_header
from processors.video import probe_video


@dataclass(frozen=True)
class ImageFacts:
    height: int
    width: int


@dataclass(frozen=True)
class VideoFacts:
    height: int            # display orientation (rotation applied)
    width: int
    num_frames: int
    fps: float
    duration: float
    frame_times: tuple[float, ...] | None = None   # variable-rate clips only: every frame's time (s)


def image_facts(src) -> ImageFacts:
    """(height, width) as the loader will see it (EXIF orientation applied)."""
    h, w = image_size_from_header(src)
    return ImageFacts(int(h), int(w))


def video_facts(path) -> VideoFacts:
    return facts_from_info(probe_video(path))


def facts_from_info(info) -> VideoFacts:
    """processors.video.VideoInfo → VideoFacts, sides in display orientation."""
    h, w = info.display_size
    times = tuple(float(t) for t in info.frame_times) if info.is_vfr else None
    return VideoFacts(int(h), int(w), int(info.num_frames), float(info.avg_fps), float(info.duration), times)


def error_code(exc: BaseException) -> str:
    """The ledger error type the prepare job would record for this failure."""
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, MediaError) or hasattr(exc, "code"):
        return getattr(exc, "code", "media")
    return type(exc).__name__
