"""Output layout, parquet schemas and atomic file writes of the prepare job.

OUT/shards/{unit}.tar, OUT/parts/manifest/{unit}.parquet, OUT/parts/ledger/{unit}.parquet are the
three files a finished unit leaves; OUT/manifest.parquet and OUT/ledger.parquet are their merge.
Every file is written under a temporary name in the same folder and then `os.replace`d, so a
reader (or a resumed job) never sees a partial file under its final name.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

TMP_MARK = ".tmp-"

MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("record_index", pa.int64()),
    ("unit", pa.string()),
    ("shard", pa.string()),
    ("key", pa.string()),
    ("preset", pa.string()),
    ("n_tokens", pa.int64()),
    ("n_text_tokens", pa.int64()),
    ("n_image_tokens", pa.int64()),
    ("n_video_tokens", pa.int64()),
    ("n_supervised_tokens", pa.int64()),
    ("n_images", pa.int64()),
    ("n_videos", pa.int64()),
    ("n_boxes", pa.int64()),
    ("pixel_rows", pa.int64()),
    ("image_sizes", pa.list_(pa.list_(pa.int64()))),
    ("image_resized", pa.list_(pa.list_(pa.int64()))),
    ("video_durations", pa.list_(pa.float64())),
    ("video_fps", pa.list_(pa.float64())),
    ("video_sample_fps", pa.list_(pa.float64())),
    ("video_frames", pa.list_(pa.int64())),
    ("video_sizes", pa.list_(pa.list_(pa.int64()))),
    ("video_resized", pa.list_(pa.list_(pa.int64()))),
    ("sample_bytes", pa.int64()),        # bytes the sample takes in its shard (tar headers included)
    ("media_bytes", pa.int64()),         # bytes of its media files as read (bytes in)
], metadata={"vlprep.shard_format": "2"})  # pipeline/storage.py FORMAT_VERSION (tests/test_storage.py checks)

LEDGER_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("record_index", pa.int64()),
    ("unit", pa.string()),
    ("status", pa.string()),
    ("stage", pa.string()),
    ("rule", pa.string()),
    ("value", pa.float64()),
    ("message", pa.string()),
])


class Layout:
    """Paths inside one output directory."""

    def __init__(self, out_dir: str | os.PathLike):
        self.root = Path(out_dir)
        self.shards = self.root / "shards"
        self.manifest_parts = self.root / "parts" / "manifest"
        self.ledger_parts = self.root / "parts" / "ledger"
        self.index_parts = self.root / "parts" / "index"
        self.progress_parts = self.root / "parts" / "progress"
        self.manifest = self.root / "manifest.parquet"
        self.ledger = self.root / "ledger.parquet"
        self.job = self.root / "job.json"
        self.plan = self.root / "parts" / "plan.json"

    def mkdirs(self) -> None:
        for d in (self.shards, self.manifest_parts, self.ledger_parts, self.index_parts, self.progress_parts):
            d.mkdir(parents=True, exist_ok=True)

    def shard(self, unit: str) -> Path:
        return self.shards / f"{unit}.tar"

    def shard_rel(self, unit: str) -> str:
        return f"shards/{unit}.tar"

    def manifest_part(self, unit: str) -> Path:
        return self.manifest_parts / f"{unit}.parquet"

    def ledger_part(self, unit: str) -> Path:
        return self.ledger_parts / f"{unit}.parquet"

    def index_part(self, unit: str) -> Path:
        return self.index_parts / f"{unit}.parquet"

    def progress(self, unit: str) -> Path:
        """Which record a unit's worker is on (pipeline.work.UnitProgress); gone once the unit is done."""
        return self.progress_parts / f"{unit}.txt"

    def unit_done(self, unit: str) -> bool:
        """A unit is finished when all three of its files exist (each was renamed into place)."""
        return self.shard(unit).exists() and self.manifest_part(unit).exists() and self.ledger_part(unit).exists()

    def remove_temporaries(self) -> int:
        """Delete leftovers of a killed run (never visible under a final name anyway)."""
        n = 0
        if self.root.exists():
            for p in self.root.rglob(f"*{TMP_MARK}*"):
                if p.is_file():
                    p.unlink(missing_ok=True)
                    n += 1
        return n


def tmp_path(final: Path) -> Path:
    # pid in the name: two processes finishing the same unit never write the same temp file
    return final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}")


@contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary sibling of `final`; on success fsync and rename it into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(final)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_table(table: pa.Table, final: str | os.PathLike) -> None:
    """Write a parquet table atomically (no statistics-dependent metadata: same rows, same bytes)."""
    with atomic_file(final) as f:
        pq.write_table(table, f, compression="zstd")


def write_text(text: str, final: str | os.PathLike) -> None:
    with atomic_file(final, "w") as f:
        f.write(text)


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)


def read_manifest(out_dir: str | os.PathLike) -> pa.Table:
    """The merged manifest of a finished prepare job (one row per kept sample)."""
    return _read(Layout(out_dir).manifest, "manifest")


def read_ledger(out_dir: str | os.PathLike) -> pa.Table:
    """The merged ledger of a finished prepare job (one row per input record)."""
    return _read(Layout(out_dir).ledger, "ledger")


def _read(path: Path, what: str) -> pa.Table:
    if not path.exists():
        raise FileNotFoundError(f"no {what}: {path} not found; is {path.parent} the output of a finished "
                                f"`vlprep prepare`?")
    return pq.read_table(path)
