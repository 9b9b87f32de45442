"""Media facts from headers and container metadata only: no pixel is decoded.

`processors.image.image_size_from_header` and `processors.video.probe_video` are the reference
implementations and are used when importable; the FALLBACKs read the same facts with Pillow's
lazy `Image.open` (header only) and PyAV's container metadata.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from processors.errors import ImageDecodeError, MediaError, VideoDecodeError

_EXIF_ORIENTATION = 0x0112


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


def image_facts(src) -> ImageFacts:
    """(height, width) as the loader will see it (EXIF orientation applied)."""
    try:
        from processors.image import image_size_from_header
    except ImportError:
        h, w = _fallback_image_size(src)
    else:
        h, w = image_size_from_header(src)
    return ImageFacts(int(h), int(w))


def _fallback_image_size(src) -> tuple[int, int]:
    """FALLBACK: Pillow parses only the header on open; `.size` never triggers a decode."""
    from PIL import Image, UnidentifiedImageError

    fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
    try:
        with Image.open(fp) as img:
            w, h = img.size
            # Orientations 5-8 are transposes: the loader (exif_transpose) swaps the sides.
            if _orientation(img) in (5, 6, 7, 8):
                w, h = h, w
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"cannot read the image header of {_name(src)}: {exc}") from exc
    return h, w


def _orientation(img) -> int:
    """EXIF orientation from the header. PNG's getexif() decodes the whole image to look for an
    eXIf chunk after the pixel data, so for PNG only an eXIf chunk before IDAT is consulted."""
    from PIL import Image

    try:
        if img.format == "PNG":
            raw = img.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            return exif.get(_EXIF_ORIENTATION, 1)
        return img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block counts as upright, as the loader treats it
        return 1


def video_facts(path) -> VideoFacts:
    try:
        from processors.video import probe_video
    except ImportError:
        return _fallback_probe(path)
    return facts_from_info(probe_video(path))


def facts_from_info(info) -> VideoFacts:
    """processors.video.VideoInfo → VideoFacts, sides in display orientation."""
    h, w = int(info.height), int(info.width)
    if int(getattr(info, "rotation", 0) or 0) % 180 == 90:
        h, w = w, h
    return VideoFacts(h, w, int(info.num_frames), float(info.avg_fps), float(info.duration))


def _fallback_probe(path) -> VideoFacts:
    """FALLBACK: PyAV stream metadata (frame count, average rate, duration); no decode."""
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoDecodeError(f"{path} has no video stream")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0)
            duration = float(s.duration * s.time_base) if s.duration else (
                c.duration / 1e6 if c.duration else 0.0)
            frames = int(s.frames) or int(round(duration * fps))
            h, w = s.codec_context.height, s.codec_context.width
            rotation = 0
            try:
                rotation = int(float(s.metadata.get("rotate", 0)))
            except ValueError:
                pass
            if rotation % 180 == 90:
                h, w = w, h
    except FileNotFoundError:
        raise
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoDecodeError(f"cannot read the container metadata of {path}: {exc}") from exc
    if fps <= 0 or frames <= 0:
        raise VideoDecodeError(f"{path}: container reports fps={fps}, frames={frames}; cannot plan sampling")
    return VideoFacts(int(h), int(w), frames, fps, duration or frames / fps)


def _name(src) -> str:
    return f"<{len(src)} bytes>" if isinstance(src, (bytes, bytearray)) else str(src)


def error_code(exc: BaseException) -> str:
    """The ledger error type the prepare job would record for this failure."""
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, MediaError) or hasattr(exc, "code"):
        return getattr(exc, "code", "media")
    return type(exc).__name__
