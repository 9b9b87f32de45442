"""A minimal reader of vlprep shards (webdataset tars, member names per docs/CONTRACTS.md).

The stage prefers `pipeline.loader.ShardLoader`, handed in by `jobs/score.py` (filters never import
pipeline); this reader is what it falls back to when that loader is not installed, and it yields the
same dicts: `id`, the 7 arrays as numpy, `meta`.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .batching import ARRAY_FIELDS

_SUFFIXES = {f".{name}.npy": name for name in ARRAY_FIELDS}
_SUFFIXES[".meta.json"] = "meta"


class ShardFormatError(ValueError):
    """A shard is missing a member or holds one that is not what the contract names."""


class TarShardReader:
    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir)

    def shards(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in (self.root / "shards").glob("*.tar"))

    def iter_shard(self, shard: str) -> Iterator[dict]:
        path = self.root / shard
        if not path.exists():
            raise FileNotFoundError(f"shard {path} not found; was {self.root} prepared by `vlprep prepare`?")
        current: dict | None = None
        key = None
        with tarfile.open(path, "r") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                for suffix, field in _SUFFIXES.items():
                    if member.name.endswith(suffix):
                        break
                else:
                    continue  # members vlprep did not write (e.g. a user's extra files) are ignored
                k = member.name[: -len(suffix)]
                if k != key:  # members of one sample are contiguous (the writer sorts them by name)
                    if current is not None:
                        yield _finish(current, key, path)
                    current, key = {}, k
                data = tar.extractfile(member).read()
                current[field] = json.loads(data) if field == "meta" else np.load(io.BytesIO(data), allow_pickle=False)
        if current is not None:
            yield _finish(current, key, path)


def _finish(d: dict, key: str, path: Path) -> dict:
    missing = [f for f in ARRAY_FIELDS if f not in d]
    if missing:
        raise ShardFormatError(f"{path}: sample {key!r} lacks member(s) {missing}")
    meta = d.get("meta") or {}
    d["meta"] = meta
    d["id"] = meta.get("id", key)
    return d
