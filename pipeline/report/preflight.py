"""Pre-flight: what a raw corpus will become under a preset, before any pixel is decoded.

Each record goes through the job's own cheap stages — `pipeline.stages.prepare`: read, clean, raw
filters, media header checks, media filters — and its tokens are then predicted from the header
facts (predict.py). Not evaluated: dedup (needs the whole corpus hashed) and the filters that need
encoded pixels. `use_stages=False` (`vlprep stats --fast`) runs a lighter chain of the same
modules — `processors.formats.parse_record`, `processors.text.clean_sample`, header reads cached per
file — without the job's filters and format checks; stats.json says which ran under `mode`.

The results are laid out as a *predicted* manifest and ledger with the prepare job's schema, so the
code that reports on a finished run (prepared.py) reports here too, and `--compare` lines a
pre-flight up against the run it predicted, column for column.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline import stages
from pipeline.ledger import Outcome
from processors.presets import get_preset
from processors.tokenizer import get_tokenizer

from .predict import MediaCache, Prediction, Predictor
from .prepared import accounting, box_stats, headline, image_stats, source_stats, token_stats, video_stats
from .records import iter_sources, load_config, parse_raw
from .summary import Report, share
from .tables import ReportInputError

LEDGER_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("record_index", pa.int64()), ("status", pa.string()),
    ("stage", pa.string()), ("rule", pa.string()), ("value", pa.float64()), ("message", pa.string())])
LIMITS = (2048, 4096, 8192, 16384, 32768)


def default_workers() -> int:
    # Header reads wait on the disk far more than on the CPU: a few threads per core pays off.
    return min(32, 4 * (os.cpu_count() or 1))


@dataclass
class Evaluated:
    """One input record's fate: a ledger row for a failure, or a prediction."""

    row: dict | None = None
    pred: Prediction | None = None
    media: list[tuple[str, str]] = field(default_factory=list)   # (kind, reference as written)


def build_preflight_report(path: str | Path, *, preset: str | None = None, overrides: list[str] | None = None,
                           max_length: int | None = None, min_pixels: int | None = None,
                           max_pixels: int | None = None, workers: int | None = None,
                           dedupe_media: bool = True, limit: int | None = None,
                           use_stages: bool = True) -> Report:
    path = Path(path)
    if not path.exists():
        raise ReportInputError(f"{path} does not exist; give a config YAML, a json/jsonl/parquet file, "
                               f"a media folder, or a `vlprep prepare` OUT directory")
    cfg = load_config(path, overrides, preset=preset)
    if max_length is not None:
        cfg.max_length = max_length
    if min_pixels is not None:
        cfg.image.min_pixels = min_pixels
    if max_pixels is not None:
        cfg.image.max_pixels = max_pixels
    p = get_preset(cfg.preset)
    if use_stages:
        stages_ctx = stages.context_for(json.dumps(cfg.to_dict(), default=str))
        tokenizer = stages_ctx.tokenizer
    else:
        stages_ctx = None
        tokenizer = get_tokenizer(cfg.resolve_path(cfg.tokenizer) if cfg.tokenizer else None, preset=p)
    cache = MediaCache(enabled=dedupe_media)
    predictor = Predictor(p, cfg.encode_options(), cleaning=dict(cfg.cleaning), tokenizer=tokenizer, cache=cache)

    t0 = time.perf_counter()
    items = list(itertools.islice(_iter_items(cfg), limit))
    t_read = time.perf_counter() - t0
    evaluate = _make_evaluator(predictor, stages_ctx)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        results = list(pool.map(evaluate, items, chunksize=64))
    elapsed = time.perf_counter() - t0

    preds = [r.pred for r in results if r.pred is not None]
    manifest, ledger = predicted_tables(results, cfg.max_length)
    series: dict = {"manifest": manifest, "ledger": ledger}   # per-sample predictions, for callers
    stats: dict = {"kind": "preflight", "path": str(path), "presets": [p.name],
                   "mode": "pipeline.stages" if stages_ctx is not None else "fast (no filters)"}
    stats["settings"] = {
        "preset": p.name, "max_length": cfg.max_length,
        "image_min_pixels": cfg.image.min_pixels or p.min_pixels,
        "image_max_pixels": cfg.image.max_pixels or p.max_pixels,
        "video_fps": cfg.video.fps or p.fps, "video_total_pixels": cfg.video.total_pixels or p.video_total_pixels,
        "sources": [s.path for s in cfg.sources], "filters": sorted(cfg.filters or {}),
    }
    stats["accounting"] = accounting(ledger, manifest.num_rows)
    stats["tokens"] = token_stats(manifest, series)
    stats["max_length"] = max_length_block(preds, cfg.max_length)
    stats["images"] = image_stats(manifest, series, [p.name])
    stats["videos"] = video_stats(manifest, series)
    stats["boxes"] = box_stats(manifest, series)
    stats["sources"] = source_stats(manifest, ledger)
    stats["media"] = media_block(results, cache)
    stats["timing"] = {"seconds": elapsed, "read_parse_seconds": t_read, "records": len(items),
                       "records_per_s": len(items) / elapsed if elapsed > 0 else None,
                       "header_reads": cache.reads, "workers": workers or default_workers()}
    stats["headline"] = headline(stats)
    stats["headline"]["over_max_length"] = stats["max_length"].get("over")
    return Report(stats, series)


def _iter_items(cfg):
    for src, _path, fmt, media_root, raws in iter_sources(cfg):
        for raw in raws:
            yield src, fmt, media_root, raw


def _make_evaluator(predictor: Predictor, ctx):
    def refs(sample) -> list[tuple[str, str]]:
        return [(m.kind, m.path) for m in [*sample.images, *sample.videos] if m.path is not None]

    def evaluate(item) -> Evaluated:
        src, fmt, media_root, raw = item
        if ctx is not None:
            r = stages.prepare(raw, src, ctx)
            if isinstance(r, Outcome):  # read error, clean/media error or a filter drop
                return Evaluated(row={"id": r.id, "source": r.source, "record_index": r.record_index,
                                      "status": r.status, "stage": r.stage, "rule": r.rule, "value": r.value,
                                      "message": r.message})
            pred = predictor.predict(r.sample, media_root, image_sizes=r.image_sizes,
                                     video_infos=r.video_infos, clean=False)
            return Evaluated(pred=pred, media=refs(r.sample))
        parsed = parse_raw(raw, fmt, media_root)
        if parsed.sample is None:
            return Evaluated(row={"id": stages.fallback_id(parsed.source, parsed.index), "source": parsed.source,
                                  "record_index": parsed.index, "status": "error", "stage": "read",
                                  "rule": parsed.error_type, "value": None, "message": parsed.error})
        return Evaluated(pred=predictor.predict(parsed.sample, media_root), media=refs(parsed.sample))

    return evaluate


def _status(pred: Prediction, max_length: int | None) -> tuple[str, str, str, float | None, str]:
    """(status, stage, rule, value, message) the prepare job's ledger would carry for this sample."""
    if not pred.ok:
        return "error", "encode", pred.error_type, None, pred.error
    if max_length is not None and pred.n_tokens is not None and pred.n_tokens > max_length:
        return ("dropped", "filter", "max_length", float(pred.n_tokens),
                f"{pred.n_tokens} tokens > max_length {max_length}")
    return "kept", "write", "", None, ""


def predicted_tables(results: list[Evaluated], max_length: int | None):
    """The manifest + ledger the prepare job would write (kept rows get the manifest's columns)."""
    ledger_rows, kept = [], []
    for r in results:
        if r.row is not None:
            ledger_rows.append(r.row)
            continue
        status, stage, rule, value, msg = _status(r.pred, max_length)
        ledger_rows.append({"id": r.pred.id, "source": r.pred.source, "record_index": r.pred.index,
                            "status": status, "stage": stage, "rule": rule, "value": value, "message": msg})
        if status == "kept":
            kept.append(r.pred)
    return manifest_table(kept), pa.Table.from_pylist(ledger_rows, schema=LEDGER_SCHEMA)


def manifest_table(preds: list[Prediction]) -> pa.Table:
    i64, pairs, floats = pa.int64(), pa.list_(pa.list_(pa.int64())), pa.list_(pa.float64())
    cols = {
        "id": (pa.string(), [p.id for p in preds]),
        "source": (pa.string(), [p.source for p in preds]),
        "record_index": (i64, [p.index for p in preds]),
        "n_tokens": (i64, [p.n_tokens for p in preds]),
        "n_text_tokens": (i64, [p.n_text_tokens for p in preds]),
        "n_image_tokens": (i64, [sum(p.image_tokens) for p in preds]),
        "n_video_tokens": (i64, [sum(p.video_tokens) for p in preds]),
        "n_supervised_tokens": (i64, [p.n_supervised_tokens for p in preds]),
        "n_images": (i64, [len(p.image_tokens) for p in preds]),
        "n_videos": (i64, [len(p.video_tokens) for p in preds]),
        "image_sizes": (pairs, [[list(s) for s in p.image_sizes] for p in preds]),
        "image_resized": (pairs, [[list(s) for s in p.image_resized] for p in preds]),
        "video_durations": (floats, [p.video_durations for p in preds]),
        "video_fps": (floats, [p.video_fps for p in preds]),
        "video_sample_fps": (floats, [p.video_sample_fps for p in preds]),
        "video_frames": (pa.list_(i64), [p.video_frames for p in preds]),
        "video_sizes": (pairs, [[list(s) for s in p.video_sizes] for p in preds]),
        "video_resized": (pairs, [[list(s) for s in p.video_resized] for p in preds]),
    }
    return pa.table({k: pa.array(v, type=t) for k, (t, v) in cols.items()})


def max_length_block(preds: list[Prediction], max_length: int | None) -> dict:
    """Over the samples that would encode: how many exceed the configured and the common limits."""
    ok = [p.n_tokens for p in preds if p.ok and p.n_tokens is not None]
    out: dict = {"max_length": max_length, "samples": len(ok)}
    if max_length is not None:
        over = sum(1 for n in ok if n > max_length)
        out.update(over=over, share=share(over, len(ok)))
    # Answers "which max_length do I need?" without another run.
    out["over_limit"] = {str(m): sum(1 for n in ok if n > m) for m in LIMITS}
    return out


def media_block(results: list[Evaluated], cache: MediaCache, examples: int = 5) -> dict:
    refs = {"image": 0, "video": 0}
    uniq: dict[str, set] = {"image": set(), "video": set()}
    for r in results:
        for kind, ref in r.media:
            refs[kind] += 1
            uniq[kind].add(ref)
    failures: dict[str, list[str]] = {}
    for r in results:
        if r.pred is not None and not r.pred.ok:
            failures.setdefault(r.pred.error_type, []).append(r.pred.id)
        elif r.row is not None and r.row["status"] == "error" and r.row["stage"] == "clean":
            failures.setdefault(r.row["rule"], []).append(r.row["id"])  # the job's media checks
    return {
        "image_references": refs["image"], "unique_image_references": len(uniq["image"]),
        "video_references": refs["video"], "unique_video_references": len(uniq["video"]),
        "header_reads_by_report": cache.reads,
        "failures": {k: {"samples": len(v), "examples": v[:examples]} for k, v in sorted(failures.items())},
    }
