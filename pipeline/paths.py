"""Media references → files under the media root, checked before anything is decoded.

The escape rules (`..`, absolute paths elsewhere, symlinks pointing out, URLs) live in
processors.media so a notebook user of `encode_sample` gets the same protection; this module adds
what the pipeline needs on top: existence, a format allow-list, and pipeline-specific error codes.
"""
from __future__ import annotations

import os
from pathlib import Path

from processors.errors import MediaError, PathEscapeError  # noqa: F401  (re-exported for callers)
from processors.media import resolve_media_path


class MediaMissingError(MediaError):
    """A referenced media file does not exist (or is not a regular file)."""

    code = "media_missing"


class MediaFormatError(MediaError):
    """A media file's container/format is not in the job's allow-list."""

    code = "media_format"


def resolve_media(path_as_written: str, media_root: str | os.PathLike | None) -> Path:
    """Resolve a record's media reference; raises PathEscapeError / MediaError (URLs) / MediaMissingError."""
    path = resolve_media_path(path_as_written, media_root)
    if not path.exists():
        raise MediaMissingError(f"media file {path_as_written!r} not found (looked at {path}); "
                                f"check the source's media_root")
    if not path.is_file():
        raise MediaMissingError(f"media reference {path_as_written!r} is not a regular file ({path})")
    return path
