"""Deterministic work units: (source file, record range), named so a re-run finds them again.

A unit's name depends only on the source's name and the unit's position, never on timing or
cluster size: `{source-stem}-{sha1(source)[:8]}-{i:05d}`. One unit = one shard + one manifest part
+ one ledger part.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import JobConfig
from .sources import SourceFile, expand_sources, scan

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Unit:
    name: str
    order: int            # position in the job (sources in config order, then ranges)
    source: SourceFile
    start: int
    stop: int
    byte_offset: int = 0
    n_records: int = 0    # ledger rows this unit must produce (positions minus blank jsonl lines)

    @property
    def n_positions(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Unit":
        d = dict(d)
        d["source"] = SourceFile(**d["source"])
        return cls(**d)


def unit_name(source_name: str, i: int) -> str:
    stem = _UNSAFE.sub("_", Path(source_name).name.split(".")[0]).strip("_")[:40] or "source"
    digest = hashlib.sha1(source_name.encode()).hexdigest()[:8]
    return f"{stem}-{digest}-{i:05d}"


def plan_units(cfg: JobConfig) -> list[Unit]:
    """All units of a job, in input order (config order of sources, then record ranges)."""
    units: list[Unit] = []
    for src in expand_sources(cfg):
        for i, (start, stop, off, n) in enumerate(scan(src, int(cfg.unit_size))):
            units.append(Unit(unit_name(src.name, i), len(units), src, start, stop, off, n))
    return units
