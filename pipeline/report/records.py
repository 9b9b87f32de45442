"""Raw records for the pre-flight: PATH (config YAML, json/jsonl/parquet file, folder) → Samples.

The prepare job's own readers are used — `pipeline.config.JobConfig`, `pipeline.sources.iter_records`,
`processors.formats.parse_record` — so the pre-flight sees exactly the samples the job will see.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import JobConfig, apply_overrides
from pipeline.sources import RawRecord, expand_sources, iter_records
from processors.errors import FormatError
from processors.formats import parse_record
from processors.sample import Sample


@dataclass
class ParsedRecord:
    source: str
    index: int
    sample: Sample | None
    error_type: str | None = None       # ledger rule of a read failure (read / json_decode / format …)
    error: str | None = None
    media_root: Path | None = None


def load_config(path: Path, overrides: list[str] | None = None, *, preset: str | None = None):
    """A JobConfig for PATH: the YAML itself, or a one-source config around a data file/folder."""
    if path.suffix.lower() in (".yaml", ".yml"):
        cfg = JobConfig.from_yaml(path, overrides or [])
    else:
        cfg = JobConfig.from_dict({"sources": [{"path": str(path.resolve())}]}, base_dir=Path.cwd())
        if overrides:
            cfg = JobConfig.from_dict(apply_overrides(cfg.to_dict(), overrides), base_dir=Path.cwd())
    if preset is not None:
        cfg.preset = preset
        cfg.validate()
    return cfg


def parse_raw(raw: RawRecord, fmt: str, media_root) -> ParsedRecord:
    """One raw record → a ParsedRecord with its Sample, or the read error the job would record."""
    if raw.sample is not None:      # caption sources build the Sample themselves
        return ParsedRecord(raw.source, raw.index, raw.sample, media_root=media_root)
    if raw.error is not None or raw.record is None:
        return ParsedRecord(raw.source, raw.index, None, raw.error_type or "read",
                            raw.error or "empty record", media_root)
    try:
        sample = parse_record(raw.record, source=raw.source, index=raw.index, fmt=fmt)
    except FormatError as exc:
        return ParsedRecord(raw.source, raw.index, None, exc.code, f"{type(exc).__name__}: {exc}", media_root)
    sample.source, sample.record_index = raw.source, raw.index
    return ParsedRecord(raw.source, raw.index, sample, media_root=media_root)


def iter_sources(cfg):
    """(SourceFile, path, format, media_root, raw record iterator) per source file, as the job expands them."""
    for src in expand_sources(cfg):
        yield src, Path(src.path), src.format, Path(src.media_root), iter_records(src)
