"""What one worker does with one unit: the index pass (dedup keys, ids) and the main pass.

Both are plain functions of (unit, config json, output dir, ...) so the runner can call them in a
Ray task or in-process (the benchmark's single-process loop), and a unit's outputs depend on
nothing but its inputs. The main pass streams samples into the shard and keeps only the small
manifest/ledger rows in memory; the three files land atomically (shard, manifest part, ledger part).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa

from .dedup import exact_key, image_phashes, phash_eligible
from .io import LEDGER_SCHEMA, MANIFEST_SCHEMA, Layout, rows_to_table, write_table
from .ledger import Outcome, ledger_row, manifest_row
from .sizes import media_bytes
from .sources import iter_records
from .stages import Prepared, context_for, encode, fallback_id, prepare
from .units import Unit
from .writer import ShardWriter, sanitize_key

# Bump when what the index pass computes changes (v2: pHash per image of multi-image samples, per-item
# media options in the exact key); a resumed job re-indexes parts written by another version.
INDEX_VERSION = "2"
INDEX_SCHEMA = pa.schema([("source", pa.string()), ("record_index", pa.int64()), ("id", pa.string()),
                          ("key", pa.string()), ("phash", pa.list_(pa.uint64()))],
                         metadata={"vlprep.index_version": INDEX_VERSION})


def index_current(path) -> bool:
    """Whether an index part exists and was written by this version of the index pass."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return False
    return meta.get(b"vlprep.index_version") == INDEX_VERSION.encode()


def _records(unit: Unit):
    return iter_records(unit.source, start=unit.start, stop=unit.stop, byte_offset=unit.byte_offset)


def index_unit(unit_d: dict, cfg_json: str, out_dir: str, decisions: dict | None = None) -> int:
    """Write parts/index/{unit}.parquet: id, exact key and per-image pHashes per record (key null = not a candidate).

    `decisions`: records quarantined by the driver (`{"quarantine": ...}`: they killed or hung an
    earlier attempt) get a row without a key and are not read further."""
    unit = Unit.from_dict(unit_d)
    ctx = context_for(cfg_json)
    dd = ctx.cfg.dedup
    decisions = decisions or {}
    layout = Layout(out_dir)
    progress = UnitProgress(layout.progress(index_progress_name(unit.name)))
    rows = []
    for raw in _records(unit):
        row = {"source": raw.source, "record_index": raw.index, "id": fallback_id(raw.source, raw.index),
               "key": None, "phash": None}
        if "quarantine" in (decisions.get(raw.index) or decisions.get(str(raw.index)) or {}):
            row["id"] = _id_only(raw, unit)
            rows.append(row)
            continue
        progress.at(raw.index)
        if dd.exact or dd.phash:
            r = prepare(raw, unit.source, ctx)
            if isinstance(r, Prepared):
                row["id"] = r.sample.id
                try:
                    row["key"] = exact_key(r)
                    if dd.phash and phash_eligible(r):
                        row["phash"] = image_phashes(r)
                except Exception:      # unreadable bytes: the main pass reports it at encode
                    row["key"], row["phash"] = None, None
            else:
                row["id"] = r.id
        else:
            row["id"] = _id_only(raw, unit)
        rows.append(row)
    progress.at(-1)
    write_table(rows_to_table(rows, INDEX_SCHEMA), layout.index_part(unit.name))
    progress.done()
    return len(rows)


def index_progress_name(unit: str) -> str:
    return f"{unit}.index"


def _id_only(raw, unit: Unit) -> str:
    if raw.error is not None:
        return fallback_id(raw.source, raw.index)
    if raw.sample is not None:
        return raw.sample.id
    try:
        from processors.formats import parse_record

        return parse_record(raw.record, source=raw.source, index=raw.index, fmt=unit.source.format).id
    except Exception:
        return fallback_id(raw.source, raw.index, raw.record)


class UnitProgress:
    """A one-line file naming the record the worker is on ("record_index pid attempt").

    Written before each record (one small write, no fsync: it must only survive the worker process,
    not the machine). When a worker dies (segfault in a decoder, OOM kill) or hangs, the driver
    reads it to learn which record did it and re-runs the unit with that record quarantined
    (runner), so one bad record costs one ledger row, not its whole unit.
    """

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "w", encoding="ascii")
        self._pid = os.getpid()

    def at(self, record_index: int) -> None:
        self._f.seek(0)
        self._f.write(f"{record_index} {self._pid}".ljust(40) + "\n")
        self._f.flush()

    def done(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)

    @staticmethod
    def read(path: Path) -> tuple[int, int] | None:
        """(record_index, pid) of the last record started, or None (no file / unreadable)."""
        try:
            idx, pid = path.read_text(encoding="ascii").split()[:2]
            return int(idx), int(pid)
        except (OSError, ValueError):
            return None


def process_unit(unit_d: dict, cfg_json: str, out_dir: str, decisions: dict) -> dict:
    """Run every stage over the unit's records; write its shard, manifest part and ledger part.

    `decisions`: per record index, from the driver: dedup ("drop", "id") and quarantine
    (`{"quarantine": (rule, message)}`: the record killed or hung a worker before; it becomes an
    error row and is not touched again)."""
    t0 = time.perf_counter()
    unit = Unit.from_dict(unit_d)
    ctx = context_for(cfg_json)
    layout = Layout(out_dir)
    shard_rel = layout.shard_rel(unit.name)
    ledger, manifest = [], []
    progress = UnitProgress(layout.progress(unit.name))
    with ShardWriter(layout.shard(unit.name), codec=ctx.cfg.storage.codec, preset=ctx.preset) as writer:
        for raw in _records(unit):
            dec = decisions.get(raw.index) or decisions.get(str(raw.index)) or {}
            if "quarantine" in dec:
                rule, message = dec["quarantine"]
                sid = dec.get("id") or _id_only(raw, unit)
                outcome = Outcome.error(sid, raw.source, raw.index, "encode", rule, message)
            else:
                progress.at(raw.index)
                outcome = _one(raw, unit, ctx, dec, writer, shard_rel, manifest)
            ledger.append(ledger_row(unit.name, outcome))
        progress.at(-1)   # the unit's tail (closing the shard, writing parts): no record to blame
    if len(ledger) != unit.n_records:
        raise RuntimeError(f"unit {unit.name}: read {len(ledger)} records from {unit.source.path} "
                           f"[{unit.start}, {unit.stop}) but planning counted {unit.n_records}; "
                           f"did the source change during the job? re-run with --overwrite")
    write_table(rows_to_table(manifest, MANIFEST_SCHEMA), layout.manifest_part(unit.name))
    write_table(rows_to_table(ledger, LEDGER_SCHEMA), layout.ledger_part(unit.name))
    progress.done()
    counts = {"kept": 0, "dropped": 0, "error": 0}
    for row in ledger:
        counts[row["status"]] += 1
    return {"unit": unit.name, "inputs": len(ledger), **counts, "seconds": time.perf_counter() - t0}


def _one(raw, unit: Unit, ctx, dec: dict, writer: ShardWriter, shard_rel: str, manifest: list) -> Outcome:
    r = prepare(raw, unit.source, ctx, dec.get("id"))
    if not isinstance(r, Prepared):
        return r
    s = r.sample
    if "drop" in dec:
        rule, value, message = dec["drop"]
        return Outcome.dropped(s.id, s.source, s.record_index, "clean", rule, value, message)
    enc = encode(r, unit.source, ctx)
    if isinstance(enc, Outcome):
        return enc
    key = sanitize_key(s.id)
    if key in writer.keys:     # ids are unique per job (index pass), keys can still collide after sanitising
        key = f"{key}-r{s.record_index}"
    meta = dict(enc.meta)
    meta.update({"id": s.id, "key": key, "unit": unit.name, "source": s.source, "record_index": s.record_index,
                 "rope_delta": int(enc.rope_delta)})
    try:
        nbytes = writer.write(key, enc, meta)
    except Exception as exc:
        return Outcome.error(s.id, s.source, s.record_index, "write", exc)
    manifest.append(manifest_row(unit.name, shard_rel, key, meta, enc.pixel_values.shape[0], nbytes,
                                 media_bytes(r.media)))
    return Outcome(s.id, s.source, s.record_index, "kept")
