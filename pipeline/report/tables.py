"""Reading a prepare OUT directory: manifest, ledger, scores (CONTRACTS.md "Shards, manifest, ledger").

The manifest and ledger are read by `pipeline.io`, the job's own readers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import io as job_io
from processors.errors import UserInputError


class ReportInputError(UserInputError):
    """PATH is not something `vlprep stats` can report on; the message says what was expected
    (a user mistake: one line, exit 2)."""


def is_prepared_dir(path: Path) -> bool:
    return path.is_dir() and (path / "manifest.parquet").exists() and (path / "ledger.parquet").exists()


def read_manifest(out: Path) -> pa.Table:
    return _checked(job_io.read_manifest, out, "manifest.parquet")


def read_ledger(out: Path) -> pa.Table:
    return _checked(job_io.read_ledger, out, "ledger.parquet")


def _checked(read, out: Path, name: str) -> pa.Table:
    try:
        return read(out)
    except pa.ArrowInvalid as exc:
        raise ReportInputError(f"{out / name} is not a readable parquet file: {exc}") from exc


def scores_dir(out: Path) -> Path | None:
    """OUT/scores, or for OUT/selection (same schema as OUT) the parent's scores."""
    for cand in (out / "scores", out.parent / "scores" if out.name == "selection" else None):
        if cand is not None and cand.is_dir() and any(cand.glob("*.parquet")):
            return cand
    return None


def read_scores(out: Path) -> pa.Table | None:
    """All score shards concatenated (id + float columns); None when `vlprep score` has not run."""
    d = scores_dir(out)
    if d is None:
        return None
    tables = [pq.read_table(p) for p in sorted(d.glob("*.parquet"))]
    return pa.concat_tables(tables, promote_options="default")


def column(table: pa.Table, name: str, default=None) -> np.ndarray | None:
    """A scalar column as float64 numpy (nulls → NaN), or `default` when a manifest lacks it."""
    if name not in table.column_names:
        return default
    col = table.column(name)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(col.to_pylist(), dtype=np.float64)


def pairs(table: pa.Table, name: str) -> np.ndarray:
    """A list<list<int64>> column of (h, w) pairs flattened across samples → int64 [n, 2]."""
    if name not in table.column_names:
        return np.zeros((0, 2), dtype=np.int64)
    flat = pc.list_flatten(pc.list_flatten(table.column(name)))
    a = flat.to_numpy(zero_copy_only=False).astype(np.int64)
    return a.reshape(-1, 2)


def flat_values(table: pa.Table, name: str) -> np.ndarray:
    """A list<number> column flattened across samples → float64 (e.g. every video's duration)."""
    if name not in table.column_names:
        return np.zeros(0)
    flat = pc.list_flatten(table.column(name))
    return pc.cast(flat, pa.float64()).to_numpy(zero_copy_only=False)


def strings(table: pa.Table, name: str) -> list[str]:
    if name not in table.column_names:
        return [""] * table.num_rows
    return ["" if v is None else str(v) for v in table.column(name).to_pylist()]
