"""Deterministic webdataset shard writer: same samples in → same bytes out.

Per sample the members are `{key}.{array}.npy` for the EncodedSample arrays other than
`pixel_values`, the pixels as format-2 frame members (pipeline/storage.py: each pixel once,
losslessly compressed, plus `{key}.pixels.json`) and `{key}.meta.json`, sorted by name; headers carry mtime 0, uid/gid 0, empty user/group names and
mode 0644, so nothing about the machine or the clock leaks into the bytes. Samples are streamed
into the tar one at a time (a unit's tensors are never all held in memory), into a temporary
file that is renamed into place only when the shard is complete.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np

from processors.sample import EncodedSample

from .io import tmp_path
from .storage import DEFAULT_CODEC, FORMAT_VERSION, check_codec, pixel_members

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MAX_KEY_CHARS = 100


def sanitize_key(sample_id: str) -> str:
    """A webdataset key for `sample_id`: [A-Za-z0-9_-] only (a dot would split the key), at most
    MAX_KEY_CHARS characters (a tar member name, not a place to store a whole record).

    When characters had to be replaced or the id was cut, a short hash of the original id is
    appended so that `a.b` and `a_b` never share a key.
    """
    key = _UNSAFE.sub("_", sample_id)
    if key != sample_id or not key or len(key) > MAX_KEY_CHARS:
        key = f"{key[:80]}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}".lstrip("-")
    return key


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def meta_bytes(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sample_members(key: str, encoded: EncodedSample, meta: dict, *, codec: str = DEFAULT_CODEC,
                   preset=None, fmt: int = FORMAT_VERSION) -> list[tuple[str, bytes]]:
    """A sample's (member name, bytes), sorted. `preset` (default: the one named in meta) gives the
    patch geometry the pixels are stored with; `fmt=1` writes format 1 (raw pixel_values.npy: tests of
    old shards only)."""
    arrays = encoded.arrays()
    if fmt == 1:
        members = [(f"{key}.{name}.npy", npy_bytes(arr)) for name, arr in arrays.items()]
    else:
        from processors.presets import get_preset

        pv = arrays.pop("pixel_values")
        members = [(f"{key}.{name}.npy", npy_bytes(arr)) for name, arr in arrays.items()]
        members += pixel_members(key, pv, encoded.image_grid_thw, encoded.video_grid_thw,
                                 get_preset(preset if preset is not None else meta.get("preset")), codec)
    members.append((f"{key}.meta.json", meta_bytes(meta)))
    return sorted(members)


TAR_BLOCK = 512


def member_bytes(size: int) -> int:
    """Bytes one member of `size` bytes takes in the tar (header block + data padded to a block)."""
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


class ShardWriter:
    """`with ShardWriter(path) as w: w.write(key, encoded, meta)`; the tar appears at `path` on exit."""

    def __init__(self, path: str | os.PathLike, *, codec: str = DEFAULT_CODEC, preset=None,
                 fmt: int = FORMAT_VERSION):
        self.path = Path(path)
        self.codec = check_codec(codec)
        self.preset = preset
        self.fmt = fmt
        self.tmp = tmp_path(self.path)
        self.keys: set[str] = set()
        self.count = 0
        self._file = None
        self._tar: tarfile.TarFile | None = None

    def __enter__(self) -> "ShardWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        return self

    def write(self, key: str, encoded: EncodedSample, meta: dict) -> int:
        """Append one sample; returns the bytes it takes in the tar (member headers and padding
        included). Keys must be unique in the shard."""
        if key in self.keys:
            raise ValueError(f"duplicate key {key!r} in shard {self.path.name}")
        # serialise first: a failure adds nothing
        members = sample_members(key, encoded, meta, codec=self.codec, preset=self.preset, fmt=self.fmt)
        self.keys.add(key)
        total = 0
        for name, data in members:
            self._add(name, data)
            total += member_bytes(len(data))
        self.count += 1
        return total

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._tar.close()
            self._file.flush()
            if exc_type is None:
                os.fsync(self._file.fileno())
        finally:
            self._file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
