"""Deterministic webdataset shard writer: same samples in → same bytes out.

Per sample the members are `{key}.{array}.npy` for the 7 EncodedSample arrays plus
`{key}.meta.json`, sorted by name; headers carry mtime 0, uid/gid 0, empty user/group names and
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


def sample_members(key: str, encoded: EncodedSample, meta: dict) -> list[tuple[str, bytes]]:
    members = [(f"{key}.{name}.npy", npy_bytes(arr)) for name, arr in encoded.arrays().items()]
    members.append((f"{key}.meta.json", meta_bytes(meta)))
    return sorted(members)


class ShardWriter:
    """`with ShardWriter(path) as w: w.write(key, encoded, meta)`; the tar appears at `path` on exit."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
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
        """Append one sample; returns the bytes of its members. Keys must be unique in the shard."""
        if key in self.keys:
            raise ValueError(f"duplicate key {key!r} in shard {self.path.name}")
        members = sample_members(key, encoded, meta)   # serialise first: a failure adds nothing
        self.keys.add(key)
        total = 0
        for name, data in members:
            self._add(name, data)
            total += len(data)
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
