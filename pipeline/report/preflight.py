"""Pre-flight: what a raw corpus will become under a preset, before any pixel is decoded.

Each record is parsed with the job's own readers, its media sized from headers, and its tokens
predicted (predict.py). The predictions are laid out as a *predicted* manifest and ledger with the
prepare job's schema, so the very same code that reports on a finished run (prepared.py) reports
here, and `--compare preflight.json prepared_out/` lines the two up column for column.
"""
from __future__ import annotations

import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from processors.presets import get_preset

from .predict import MediaCache, Prediction, Predictor
from .prepared import accounting, box_stats, image_stats, source_stats, token_stats, video_stats
from .records import ParsedRecord, iter_parsed, load_config
from .summary import Report, share
from .tables import ReportInputError

LEDGER_FIELDS = ("id", "source", "record_index", "status", "stage", "rule", "value", "message")


def default_workers() -> int:
    # Header reads wait on the disk far more than on the CPU: a few threads per core pays off.
    return min(32, 4 * (os.cpu_count() or 1))


def build_preflight_report(path: str | Path, *, preset: str | None = None, overrides: list[str] | None = None,
                           max_length: int | None = None, min_pixels: int | None = None,
                           max_pixels: int | None = None, workers: int | None = None,
                           dedupe_media: bool = True, limit: int | None = None) -> Report:
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
    tokenizer = None
    if cfg.tokenizer:
        from processors.tokenizer import get_tokenizer

        tokenizer = get_tokenizer(cfg.resolve_path(cfg.tokenizer), preset=p)
    cache = MediaCache(enabled=dedupe_media)
    predictor = Predictor(p, cfg.encode_options(), cleaning=dict(cfg.cleaning), tokenizer=tokenizer, cache=cache)

    t0 = time.perf_counter()
    records = list(itertools.islice(iter_parsed(cfg), limit))
    t_read = time.perf_counter() - t0
    parsed = [r for r in records if r.sample is not None]
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        preds = list(pool.map(lambda r: predictor.predict(r.sample, r.media_root), parsed, chunksize=64))
    elapsed = time.perf_counter() - t0

    manifest, ledger = predicted_tables(records, preds, cfg.max_length)
    series: dict[str, np.ndarray] = {}
    stats: dict = {"kind": "preflight", "path": str(path), "presets": [p.name]}
    stats["settings"] = {
        "preset": p.name, "max_length": cfg.max_length,
        "image_min_pixels": cfg.image.min_pixels or p.min_pixels,
        "image_max_pixels": cfg.image.max_pixels or p.max_pixels,
        "video_fps": cfg.video.fps or p.fps, "video_total_pixels": cfg.video.total_pixels or p.video_total_pixels,
        "sources": [s.path for s in cfg.sources],
    }
    stats["accounting"] = accounting(ledger, manifest.num_rows)
    stats["tokens"] = token_stats(manifest, series)
    stats["text_tokens_exact"] = predictor.text_note is None
    if predictor.text_note:
        stats["text_tokens_note"] = predictor.text_note
    stats["max_length"] = max_length_block(preds, cfg.max_length)
    stats["images"] = image_stats(manifest, series, [p.name])
    stats["videos"] = video_stats(manifest, series)
    stats["boxes"] = box_stats(manifest, series)
    stats["sources"] = source_stats(manifest, ledger)
    stats["media"] = media_block(parsed, preds, cache)
    stats["timing"] = {"seconds": elapsed, "read_parse_seconds": t_read, "records": len(records),
                       "records_per_s": len(records) / elapsed if elapsed > 0 else None,
                       "header_reads": cache.reads, "workers": workers or default_workers()}
    from .prepared import headline

    stats["headline"] = headline(stats)
    stats["headline"]["over_max_length"] = stats["max_length"].get("over")
    return Report(stats, series)


def _status(pred: Prediction, max_length: int | None) -> tuple[str, str, str, float | None, str]:
    """(status, stage, rule, value, message) the prepare job's ledger would carry for this sample."""
    if not pred.ok:
        return "error", "encode", pred.error_type, None, pred.error
    if max_length is not None and pred.n_tokens is not None and pred.n_tokens > max_length:
        return "dropped", "filter", "max_length", float(pred.n_tokens), f"{pred.n_tokens} tokens > {max_length}"
    return "kept", "write", "", None, ""


def predicted_tables(records: list[ParsedRecord], preds: list[Prediction], max_length: int | None):
    """The manifest + ledger the prepare job would write (kept rows get the manifest's columns)."""
    ledger_rows, kept = [], []
    for r in records:
        if r.sample is None:
            ledger_rows.append({"id": f"{r.source}:{r.index}", "source": r.source, "record_index": r.index,
                                "status": "error", "stage": "read", "rule": r.error_type,
                                "value": None, "message": r.error})
    for pred in preds:
        status, stage, rule, value, msg = _status(pred, max_length)
        ledger_rows.append({"id": pred.id, "source": pred.source, "record_index": pred.index, "status": status,
                            "stage": stage, "rule": rule, "value": value, "message": msg})
        if status == "kept":
            kept.append(pred)
    ledger = pa.Table.from_pylist(ledger_rows, schema=pa.schema([
        ("id", pa.string()), ("source", pa.string()), ("record_index", pa.int64()), ("status", pa.string()),
        ("stage", pa.string()), ("rule", pa.string()), ("value", pa.float64()), ("message", pa.string())]))
    return manifest_table(kept), ledger


def manifest_table(preds: list[Prediction]) -> pa.Table:
    i64, pairs = pa.int64(), pa.list_(pa.list_(pa.int64()))
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
        "video_durations": (pa.list_(pa.float64()), [p.video_durations for p in preds]),
        "video_fps": (pa.list_(pa.float64()), [p.video_fps for p in preds]),
        "video_sample_fps": (pa.list_(pa.float64()), [p.video_sample_fps for p in preds]),
        "video_frames": (pa.list_(i64), [p.video_frames for p in preds]),
        "video_sizes": (pairs, [[list(s) for s in p.video_sizes] for p in preds]),
        "video_resized": (pairs, [[list(s) for s in p.video_resized] for p in preds]),
    }
    return pa.table({k: pa.array(v, type=t) for k, (t, v) in cols.items()})


def max_length_block(preds: list[Prediction], max_length: int | None) -> dict:
    ok = [p for p in preds if p.ok and p.n_tokens is not None]
    out = {"max_length": max_length, "samples": len(ok)}
    if max_length is not None:
        over = sum(1 for p in ok if p.n_tokens > max_length)
        out.update(over=over, share=share(over, len(ok)))
    # What the common limits would drop: answers "which max_length do I need?" without a re-run.
    out["over_limit"] = {str(m): sum(1 for p in ok if p.n_tokens > m) for m in (2048, 4096, 8192, 16384, 32768)}
    return out


def media_block(parsed: list[ParsedRecord], preds: list[Prediction], cache: MediaCache, examples: int = 5) -> dict:
    refs = {"image": 0, "video": 0}
    paths = {"image": set(), "video": set()}
    for r in parsed:
        for kind, items in (("image", r.sample.images), ("video", r.sample.videos)):
            refs[kind] += len(items)
            paths[kind].update((str(r.media_root), m.path) for m in items if m.path is not None)
    failures: dict[str, list[str]] = {}
    for p in preds:
        if not p.ok:
            failures.setdefault(p.error_type, []).append(p.id)
    return {
        "image_references": refs["image"], "unique_image_paths": len(paths["image"]),
        "video_references": refs["video"], "unique_video_paths": len(paths["video"]),
        "header_reads": cache.reads,
        "failures": {k: {"samples": len(v), "examples": v[:examples]} for k, v in sorted(failures.items())},
        "missing": len(failures.get("missing", [])),
    }
