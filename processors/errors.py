"""Error classes shared by every processor.

Each carries a short machine-readable `code` (what lands in the ledger's error type) and a
message that says which input, which limit and what to do.
"""
from __future__ import annotations


class UserInputError(ValueError):
    """A setting the user gave (a command-line option, a config key, a preset name) is invalid: the
    command stops before any work with this one-line message (exit 2), never a traceback."""


def did_you_mean(names, valid) -> str:
    """' (did you mean 'x'?)' for the closest valid spelling of each misspelt name, else ''."""
    import difflib

    close = [c[0] for n in ([names] if isinstance(names, str) else names)
             if (c := difflib.get_close_matches(str(n), [str(v) for v in valid], n=1))]
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


class VlprepError(ValueError):
    code = "invalid"


class MediaError(VlprepError):
    """A media file could not be read or decoded."""

    code = "media"


class MediaMissingError(MediaError):
    """A referenced media file does not exist, is not a regular file, or its path cannot be resolved."""

    code = "media_missing"


class ImageDecodeError(MediaError):
    code = "image_decode"


class ImageTooLargeError(MediaError):
    """Pixel count above the decompression-bomb limit."""

    code = "image_too_large"


class AspectRatioError(VlprepError):
    code = "aspect_ratio"


class VideoDecodeError(MediaError):
    code = "video_decode"


class VideoTimeoutError(MediaError):
    code = "video_timeout"


class VideoTooShortError(VlprepError):
    code = "video_too_short"


class FormatError(VlprepError):
    """A record does not match any supported input format, or is malformed."""

    code = "format"


class PlaceholderMismatchError(FormatError):
    code = "placeholder_mismatch"


class SequenceTooLongError(VlprepError):
    code = "too_long"


class GroundingError(VlprepError):
    code = "grounding"


class PathEscapeError(VlprepError):
    code = "path_escape"
