"""Where a sample's media reference points: a file under the media root, or bytes.

References that leave the media root (`..`, absolute paths elsewhere, symlinks pointing out) and
URLs are refused per sample with a `PathEscapeError` / `MediaError` that names the reference.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import MediaError, MediaMissingError, PathEscapeError

_URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "ftp://")


def show_reference(reference: str, limit: int = 200) -> str:
    """repr() of a reference for an error message, cut to `limit` characters (paths can be hostile)."""
    text = repr(reference)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(reference):,} characters)"


def resolve_media_path(reference: str, media_root: str | os.PathLike | None) -> Path:
    """Resolve `reference` (as written in a record) against `media_root`; refuse escapes and URLs."""
    if not reference or not isinstance(reference, str):
        raise MediaError(f"empty or non-string media reference {reference!r}")
    if reference.startswith(_URL_SCHEMES):
        raise MediaError(f"remote media {show_reference(reference)} is not fetched (vlprep runs offline); "
                         f"download it first")
    if reference.startswith("file://"):
        reference = reference[len("file://"):]
    if "\x00" in reference:
        raise PathEscapeError(f"media reference {show_reference(reference)} contains a NUL byte")
    if media_root is None:
        return Path(reference)
    root = Path(media_root).resolve()
    candidate = Path(reference)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve()
    except RuntimeError as exc:  # Python < 3.13 (later ones stop resolving; exists() then says False)
        raise MediaMissingError(f"media reference {show_reference(reference)} is a symlink loop ({exc})") from None
    except OSError as exc:
        raise MediaMissingError(f"media reference {show_reference(reference)} cannot be resolved: {exc}") from None
    if resolved != root and root not in resolved.parents:
        raise PathEscapeError(f"media reference {show_reference(reference)} resolves to {resolved}, "
                              f"outside the media root {root}")
    return resolved
