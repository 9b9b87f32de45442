"""Reading raw corpora: one RawRecord per input record, in a stable order, by record range.

Kinds: `json` (a list of records), `jsonl` (a bad line becomes an error record for that line only),
`parquet` (one row per record), `webdataset` (img2dataset tars: {key}.jpg + {key}.txt and/or
{key}.json → a caption sample), `folder` (media files + sidecar captions img.jpg + img.txt/json).

Record indices are positions in the source (jsonl: the 0-based line number, so blank lines leave
gaps; webdataset: the n-th key group in the tar; folder: the n-th media file in sorted order), so
a record's id and its ledger row never depend on how the job is cut into units.
"""
from __future__ import annotations

import functools
import glob
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart, VideoPart

from .config import ConfigError, JobConfig, SourceSpec

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpeg", ".mpg", ".ts", ".m2ts", ".mts", ".flv", ".3gp")
DEFAULT_INSTRUCTION = {"image": "Describe this image.", "video": "Describe this video."}


@dataclass
class RawRecord:
    """One input record. Exactly one of `record`/`sample` is set, or `error` says why neither is."""

    source: str
    index: int
    record: dict | None
    error: str | None = None
    error_type: str | None = None      # ledger rule for read errors (e.g. json_decode)
    sample: Sample | None = None       # caption sources build the Sample directly (media as bytes)


@dataclass(frozen=True)
class SourceFile:
    """A concrete source file (globs expanded), with everything needed to read it in a worker."""

    name: str          # as the ledger/manifest and the sample ids name it (stable, relative if possible)
    path: str          # absolute
    kind: str
    format: str
    media_root: str    # absolute
    instruction: str | None
    caption_key: str


def expand_sources(cfg: JobConfig) -> list[SourceFile]:
    """Resolve globs (sorted) and kinds; a pattern matching nothing is a configuration error."""
    out: list[SourceFile] = []
    base = Path(cfg.base_dir).resolve()
    for i, spec in enumerate(cfg.sources):
        pattern = str(cfg.resolve_path(spec.path))
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.exists(m)]
        if not matches:
            raise ConfigError(f"sources[{i}].path {spec.path!r} matches no file (looked for {pattern})")
        for m in matches:
            p = Path(m).resolve()
            kind = spec.kind_for(p)
            if spec.media_root is not None:
                root = cfg.resolve_path(spec.media_root).resolve()
            else:
                root = p if kind == "folder" else p.parent
            try:
                name = str(Path(m).resolve().relative_to(base))
            except ValueError:
                name = str(p)
            out.append(SourceFile(name, str(p), kind, spec.format, str(root), spec.instruction, spec.caption_key))
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"source file(s) listed twice: {dup}; every input must be read once")
    return out


def as_source_file(source: SourceSpec | SourceFile, media_root=None) -> SourceFile:
    if isinstance(source, SourceFile):
        return source
    p = Path(source.path).resolve()
    kind = source.kind_for(p)
    root = media_root or source.media_root or (p if kind == "folder" else p.parent)
    return SourceFile(source.path, str(p), kind, source.format, str(Path(root).resolve()),
                      source.instruction, source.caption_key)


# -- record counting and unit boundaries --------------------------------------------------------

def scan(src: SourceFile, unit_size: int) -> list[tuple[int, int, int, int]]:
    """[(start, stop, byte_offset, n_records)] per unit of one source file.

    Positions are record indices; a unit covers [start, stop). For jsonl `byte_offset` is where
    line `start` begins so a worker can seek straight to it (elsewhere 0), and `n_records` leaves
    out blank lines: it is the number of ledger rows the unit must produce.
    """
    if src.kind == "jsonl":
        units: list[list[int]] = []
        n = pos = 0
        with open(src.path, "rb") as f:
            for line in f:
                if n % unit_size == 0:
                    units.append([n, n, pos, 0])
                units[-1][1] = n + 1
                units[-1][3] += bool(line.strip())
                pos += len(line)
                n += 1
        return [tuple(u) for u in units]
    n = count_positions(src)
    return [(s, min(n, s + unit_size), 0, min(n, s + unit_size) - s) for s in range(0, n, unit_size)]


def count_positions(src: SourceFile) -> int:
    if src.kind == "json":
        records = _load_json(src.path, *_stamp(src.path))
        return len(records) if isinstance(records, list) else 1
    if src.kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(src.path).metadata.num_rows
    if src.kind == "webdataset":
        return sum(1 for _ in _tar_groups(src.path, with_data=False))
    if src.kind == "folder":
        return len(_folder_media(src.path))
    raise ConfigError(f"unknown source kind {src.kind!r}")


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=4)
def _load_json(path: str, _mtime: int, _size: int):
    """A json source parsed once per worker process (units of the same file reuse it)."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _JsonFileError(f"{path} is not valid JSON: {exc}")
    except RecursionError:
        return _JsonFileError(f"{path}: JSON nested too deeply to parse")


class _JsonFileError(str):
    pass


# JSON may spell a lone UTF-16 surrogate (\ud800) that no UTF-8 text can hold: such a record would
# fail later in the tokenizer, the parquet ledger or the shard's meta.json, so it is refused at
# read. Only records whose bytes contain a surrogate escape are checked (a valid pair is fine).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _surrogate_error(rec) -> str | None:
    try:
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end]
        return (f"a string holds a lone UTF-16 surrogate {bad.encode('unicode_escape').decode()} "
                f"(a \\uXXXX escape without its pair), not valid Unicode text")
    return None


@functools.lru_cache(maxsize=4)
def _json_has_surrogate_escape(path: str, _mtime: int, _size: int) -> bool:
    with open(path, "rb") as f:
        return _SURROGATE_ESCAPE.search(f.read()) is not None


# -- iteration ------------------------------------------------------------------------------------

def iter_records(source: SourceSpec | SourceFile, *, media_root=None, start: int = 0, stop: int | None = None,
                 byte_offset: int = 0) -> Iterator[RawRecord]:
    """Yield the RawRecords at positions [start, stop) of one source, in order."""
    src = as_source_file(source, media_root)
    reader = {"json": _iter_json, "jsonl": _iter_jsonl, "parquet": _iter_parquet,
              "webdataset": _iter_webdataset, "folder": _iter_folder}.get(src.kind)
    if reader is None:
        raise ConfigError(f"unknown source kind {src.kind!r}")
    yield from reader(src, start, stop, byte_offset)


def _iter_json(src: SourceFile, start, stop, _offset):
    data = _load_json(src.path, *_stamp(src.path))
    if isinstance(data, _JsonFileError):
        if start == 0:
            yield RawRecord(src.name, 0, None, str(data), "json_decode")
        return
    if not isinstance(data, list):
        if start == 0:
            yield RawRecord(src.name, 0, None, f"{src.path}: a json source must hold a list of records, "
                            f"got {type(data).__name__}; use kind: jsonl for one record per line", "format")
        return
    stop = len(data) if stop is None else min(stop, len(data))
    check = _json_has_surrogate_escape(src.path, *_stamp(src.path))
    for i in range(start, stop):
        rec = data[i]
        bad = _surrogate_error(rec) if check and isinstance(rec, dict) else None
        if bad:
            yield RawRecord(src.name, i, None, f"record {i}: {bad}", "json_decode")
        elif isinstance(rec, dict):
            yield RawRecord(src.name, i, rec)
        else:
            yield RawRecord(src.name, i, None, f"record {i} is a {type(rec).__name__}, not an object", "format")


def _iter_jsonl(src: SourceFile, start, stop, byte_offset):
    with open(src.path, "rb") as f:
        f.seek(byte_offset)
        i = start
        for raw in f:
            if stop is not None and i >= stop:
                break
            line = raw.strip()
            if line:
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    yield RawRecord(src.name, i, None, f"line {i + 1}: invalid JSON: {exc}", "json_decode")
                except RecursionError:
                    yield RawRecord(src.name, i, None, f"line {i + 1}: JSON nested too deeply to parse "
                                    f"({len(line):,} bytes; a record is a few levels deep)", "json_decode")
                else:
                    bad = _surrogate_error(rec) if _SURROGATE_ESCAPE.search(line) else None
                    if bad:
                        yield RawRecord(src.name, i, None, f"line {i + 1}: {bad}", "json_decode")
                    elif isinstance(rec, dict):
                        yield RawRecord(src.name, i, rec)
                    else:
                        yield RawRecord(src.name, i, None,
                                        f"line {i + 1}: a record must be a JSON object, got {type(rec).__name__}",
                                        "format")
            i += 1


def _iter_parquet(src: SourceFile, start, stop, _offset):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src.path)
    stop = pf.metadata.num_rows if stop is None else min(stop, pf.metadata.num_rows)
    row0 = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        lo, hi = max(start, row0), min(stop, row0 + n)
        if lo < hi:
            rows = pf.read_row_group(g).slice(lo - row0, hi - lo).to_pylist()
            for k, rec in enumerate(rows):
                yield RawRecord(src.name, lo + k, rec)
        row0 += n
        if row0 >= stop:
            break


def _tar_groups(path: str, with_data: bool, start: int = 0, stop: int | None = None):
    """(index, key, {ext: bytes|None}) for consecutive member groups sharing a webdataset key.

    A truncated or corrupt tar ends with one group `{"__error__": message}` at the next index, so
    the samples before the damage are still used and the damage is one ledger error.
    """
    idx = -1
    key = None
    group: dict = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                d, base = os.path.split(member.name)
                if base.startswith("."):
                    continue
                k, _, ext = base.partition(".")
                k = f"{d}/{k}" if d else k
                if k != key:
                    if key is not None and idx >= start:
                        yield idx, key, group
                    idx += 1
                    key, group = k, {}
                    if stop is not None and idx >= stop:
                        return
                want = with_data and idx >= start
                group[ext.lower()] = tar.extractfile(member).read() if want else None
            # tarfile stops silently at a truncated header; a whole archive ends with zero blocks
            if tar.offset + 512 > os.path.getsize(path):
                raise tarfile.ReadError(f"archive ends at byte {os.path.getsize(path)} without its end marker")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if key is not None and idx >= start and (stop is None or idx < stop):
            yield idx, key, group
        idx += 1
        if idx >= start and (stop is None or idx < stop):
            yield idx, None, {"__error__": f"{path}: tar is truncated or corrupt after {idx} samples: {exc}"}
        return
    if key is not None and idx >= start and (stop is None or idx < stop):
        yield idx, key, group


def _caption_sample(src: SourceFile, index: int, sid: str, kind: str, media: MediaRef, caption: str) -> Sample:
    instruction = src.instruction if src.instruction is not None else DEFAULT_INSTRUCTION[kind]
    part = ImagePart(0) if kind == "image" else VideoPart(0)
    messages = [Message("user", [part, TextPart(instruction)]), Message("assistant", [TextPart(caption)])]
    images, videos = ([media], []) if kind == "image" else ([], [media])
    return Sample(sid, messages, images, videos, source=src.name, record_index=index)


def _caption_from(json_blob: bytes | None, txt: bytes | None, key: str) -> tuple[str | None, dict]:
    meta: dict = {}
    if json_blob:
        try:
            meta = json.loads(json_blob)
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = {}
    if txt is not None:
        return txt.decode("utf-8", errors="replace").strip(), meta
    cap = meta.get(key) if isinstance(meta, dict) else None
    return (str(cap).strip() if cap is not None else None), meta


def _iter_webdataset(src: SourceFile, start, stop, _offset):
    for idx, key, group in _tar_groups(src.path, True, start, stop):
        if "__error__" in group:
            yield RawRecord(src.name, idx, None, group["__error__"], "tar_corrupt")
            continue
        record = {"key": key, "members": sorted(group)}
        img_ext = next((e for e in ("jpg", "jpeg", "png", "webp", "bmp") if e in group), None)
        caption, meta = _caption_from(group.get("json"), group.get("txt"), src.caption_key)
        if img_ext is None:
            yield RawRecord(src.name, idx, record, f"tar key {key!r} has no image member (.jpg/.png/.webp); "
                            f"members: {sorted(group)}", "missing_image")
            continue
        if not caption:
            yield RawRecord(src.name, idx, record, f"tar key {key!r} has no caption (.txt or "
                            f"'{src.caption_key}' in .json)", "missing_caption")
            continue
        record["caption"] = caption
        media = MediaRef("image", path=None, data=group[img_ext], options={})
        sample = _caption_sample(src, idx, key, "image", media, caption)
        if isinstance(meta, dict) and meta:
            sample.meta["source_meta"] = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}
        yield RawRecord(src.name, idx, record, sample=sample)


@functools.lru_cache(maxsize=8)
def _folder_media_cached(root: str, _mtime: int) -> tuple[str, ...]:
    found = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in files:
            if f.lower().endswith(IMAGE_EXTS + VIDEO_EXTS) and not f.startswith("."):
                found.append(os.path.relpath(os.path.join(d, f), root))
    return tuple(sorted(found))


def _folder_media(root: str) -> tuple[str, ...]:
    return _folder_media_cached(root, os.stat(root).st_mtime_ns)


def _iter_folder(src: SourceFile, start, stop, _offset):
    files = _folder_media(src.path)
    stop = len(files) if stop is None else min(stop, len(files))
    for idx in range(start, stop):
        rel = files[idx]
        stem = os.path.splitext(rel)[0]
        record = {"media": rel}
        kind = "video" if rel.lower().endswith(VIDEO_EXTS) else "image"
        txt = os.path.join(src.path, stem + ".txt")
        js = os.path.join(src.path, stem + ".json")
        caption, _ = _caption_from(_read_or_none(js), _read_or_none(txt), src.caption_key)
        if not caption:
            yield RawRecord(src.name, idx, record, f"{rel}: no sidecar caption ({stem}.txt or "
                            f"'{src.caption_key}' in {stem}.json)", "missing_caption")
            continue
        record["caption"] = caption
        # the path stays relative to the folder: media checks resolve it against media_root,
        # which is where a symlink pointing outside the folder is refused
        rel_to_root = os.path.relpath(os.path.join(src.path, rel), src.media_root)
        yield RawRecord(src.name, idx, record,
                        sample=_caption_sample(src, idx, stem, kind, MediaRef(kind, path=rel_to_root), caption))


def _read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError):
        return None
