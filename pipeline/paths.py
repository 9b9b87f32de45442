"""Media references → files under the media root, checked before anything is decoded.

The escape rules (`..`, absolute paths elsewhere, symlinks pointing out, URLs) live in
processors.media so a notebook user of `encode_sample` gets the same protection; this module adds
what the pipeline needs on top: existence, a format allow-list, and pipeline-specific error codes.
"""
from __future__ import annotations

import os
from pathlib import Path

from processors.errors import MediaError, MediaMissingError, PathEscapeError  # noqa: F401  (re-exported)
from processors.media import resolve_media_path, show_reference


class MediaFormatError(MediaError):
    """A media file's container/format is not in the job's allow-list."""

    code = "media_format"


def resolve_media(path_as_written: str, media_root: str | os.PathLike | None) -> Path:
    """Resolve a record's media reference; raises PathEscapeError / MediaError (URLs) / MediaMissingError."""
    path = resolve_media_path(path_as_written, media_root)
    ref = show_reference(path_as_written)
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as exc:      # e.g. ENAMETOOLONG: no such file can exist
        raise MediaMissingError(f"media reference {ref} cannot be opened: {exc.strerror or exc}") from None
    if not exists:
        if path.is_symlink():
            raise MediaMissingError(f"media reference {ref} is a dangling symlink or a symlink loop ({path})")
        raise MediaMissingError(f"media file {ref} not found (looked at {show_reference(str(path))}); "
                                f"check the source's media_root")
    if not is_file:
        raise MediaMissingError(f"media reference {ref} is not a regular file ({path})")
    return path
