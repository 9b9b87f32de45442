"""Raw records for the pre-flight: PATH (config YAML, json/jsonl/parquet file, folder) → Samples.

The prepare job's own readers are used whenever they are importable — `pipeline.config.JobConfig`,
`pipeline.sources.iter_records`, `processors.formats.parse_record` — so the pre-flight sees exactly
the samples the job will see. The private fallbacks below only exist so `vlprep stats` works on
json/jsonl/parquet while those modules are being written; each is marked FALLBACK.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from processors.errors import FormatError
from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart, VideoPart


@dataclass
class ParsedRecord:
    source: str
    index: int
    sample: Sample | None
    error_type: str | None = None       # ledger rule of a failure (read / format / a filter rule …)
    error: str | None = None
    media_root: Path | None = None
    stage: str = "read"                 # ledger stage of a failure
    status: str = "error"               # error | dropped (a raw/media filter dropped it)
    value: float | None = None
    prepared: object | None = None      # pipeline.stages.Prepared: header facts already read


def load_config(path: Path, overrides: list[str] | None = None, *, preset: str | None = None):
    """A JobConfig for PATH: the YAML itself, or a one-source config around a data file/folder."""
    from pipeline.config import JobConfig

    if path.suffix.lower() in (".yaml", ".yml"):
        cfg = JobConfig.from_yaml(path, overrides or [])
    else:
        cfg = JobConfig.from_dict({"sources": [{"path": str(path.resolve())}]}, base_dir=Path.cwd())
        if overrides:
            from pipeline.config import apply_overrides

            cfg = JobConfig.from_dict(apply_overrides(cfg.to_dict(), overrides), base_dir=Path.cwd())
    if preset is not None:
        cfg.preset = preset
        cfg.validate()
    return cfg


def iter_parsed(cfg) -> Iterator[ParsedRecord]:
    """Every record of every source of `cfg`, parsed, in the job's order."""
    for _src, _path, fmt, media_root, raws in iter_sources(cfg):
        for raw in raws:
            yield parse_raw(raw, fmt, media_root)


def parse_raw(raw, fmt: str, media_root) -> ParsedRecord:
    """One raw record → a ParsedRecord with its Sample, or the read error the job would record."""
    if getattr(raw, "sample", None) is not None:      # caption sources build the Sample themselves
        return ParsedRecord(raw.source, raw.index, raw.sample, media_root=media_root)
    if raw.error is not None or raw.record is None:
        return ParsedRecord(raw.source, raw.index, None, getattr(raw, "error_type", None) or "read",
                            raw.error or "empty record", media_root)
    try:
        sample = _parse(raw.record, source=raw.source, index=raw.index, fmt=fmt)
    except FormatError as exc:
        return ParsedRecord(raw.source, raw.index, None, exc.code, f"{type(exc).__name__}: {exc}", media_root)
    sample.source, sample.record_index = raw.source, raw.index
    return ParsedRecord(raw.source, raw.index, sample, media_root=media_root)


@dataclass
class _Raw:
    source: str
    index: int
    record: dict | None
    error: str | None = None


def iter_sources(cfg):
    """(SourceFile or None, path, format, media_root, raw record iterator) per source file, as the job
    expands them (None: pipeline.sources is not importable and the FALLBACK reader is used)."""
    try:
        from pipeline.sources import expand_sources, iter_records
    except ImportError:
        for spec in cfg.sources:
            path = cfg.resolve_path(spec.path)
            root = cfg.resolve_path(spec.media_root) if spec.media_root else (path if path.is_dir() else path.parent)
            yield None, path, spec.format, root, _fallback_iter_records(spec, path)
        return
    for src in expand_sources(cfg):
        yield src, Path(src.path), src.format, Path(src.media_root), iter_records(src)


def _parse(record: dict, *, source: str, index: int, fmt: str) -> Sample:
    try:
        from processors.formats import parse_record
    except ImportError:
        return _fallback_parse(record, source=source, index=index)
    return parse_record(record, source=source, index=index, fmt=fmt)


# ---- FALLBACK readers: json / jsonl / parquet only (pipeline.sources handles every kind) --------

def _fallback_iter_records(spec, path: Path) -> Iterator[_Raw]:
    kind = spec.kind_for(path)
    src = path.name
    if kind == "jsonl":
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    yield _Raw(src, i, json.loads(line))
                except json.JSONDecodeError as exc:
                    yield _Raw(src, i, None, f"{path}:{i + 1}: invalid JSON ({exc.msg})")
    elif kind == "json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise FormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        for i, rec in enumerate(data):
            yield _Raw(src, i, rec if isinstance(rec, dict) else None,
                       None if isinstance(rec, dict) else f"{path}[{i}] is not an object")
    elif kind == "parquet":
        import pyarrow.parquet as pq

        for i, rec in enumerate(pq.read_table(path).to_pylist()):
            yield _Raw(src, i, rec)
    else:
        raise NotImplementedError(
            f"source kind {kind!r} ({path}) needs pipeline.sources.iter_records, which is not importable yet")


_PLACEHOLDER = re.compile(r"(<image>|<video>)")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _fallback_parse(record: dict, *, source: str, index: int) -> Sample:
    """FALLBACK for processors.formats.parse_record: LLaMA-Factory/ShareGPT/LLaVA with <image>/<video>."""
    turns = record.get("messages") or record.get("conversations")
    if not isinstance(turns, list):
        raise FormatError(f"{source}[{index}]: no `messages` or `conversations` list")
    images = record.get("images", record.get("image", []))
    videos = record.get("videos", record.get("video", []))
    images = [images] if isinstance(images, str) else list(images or [])
    videos = [videos] if isinstance(videos, str) else list(videos or [])
    msgs, n_img, n_vid = [], 0, 0
    for t in turns:
        role = _ROLES.get(str(t.get("role", t.get("from", ""))).lower())
        if role is None:
            raise FormatError(f"{source}[{index}]: unknown role in {t!r}")
        parts = []
        for piece in _PLACEHOLDER.split(str(t.get("content", t.get("value", "")))):
            if piece == "<image>":
                parts.append(ImagePart(n_img))
                n_img += 1
            elif piece == "<video>":
                parts.append(VideoPart(n_vid))
                n_vid += 1
            elif piece:
                parts.append(TextPart(piece))
        msgs.append(Message(role, parts))
    if n_img != len(images) or n_vid != len(videos):
        raise FormatError(f"{source}[{index}]: {n_img} <image> / {n_vid} <video> placeholders but "
                          f"{len(images)} images / {len(videos)} videos")
    sid = str(record["id"]) if record.get("id") is not None else \
        hashlib.sha1(f"{source}:{index}".encode()).hexdigest()[:16]
    return Sample(sid, msgs, [MediaRef("image", path=p) for p in images],
                  [MediaRef("video", path=p) for p in videos], source, index)


def fallback_id(source: str, index: int) -> str:
    """The id the job gives a record it could not parse (pipeline.stages.fallback_id)."""
    try:
        from pipeline.stages import fallback_id as _fid
    except ImportError:
        return hashlib.sha1(f"{source}:{index}".encode()).hexdigest()[:16]
    return _fid(source, index)
