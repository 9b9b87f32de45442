"""Pre-flight: what a raw corpus will become under a preset, before any pixel is decoded.

Each record goes through the job's own cheap stages — `pipeline.stages.prepare`: read, clean, raw
filters, media header checks, media filters — and its tokens are then predicted from the header
facts (predict.py). Not evaluated: dedup (needs the whole corpus hashed) and the filters that need
encoded pixels. `use_stages=False` (`vlprep stats --fast`) runs a lighter chain of the same
modules — `processors.formats.parse_record`, `processors.text.clean_sample`, header reads cached per
file — without the job's filters and format checks; stats.json says which ran under `mode`.

The records are evaluated on threads, in-process or as Ray tasks over work units
(preflight_run.py; `vlprep stats` runs on Ray); the report is the same whichever ran it, only
`timing` says how long it took and where.

The results are laid out as a *predicted* manifest and ledger with the prepare job's schema, so the
code that reports on a finished run (prepared.py) reports here too, and `--compare` lines a
pre-flight up against the run it predicted, column for column.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from processors.presets import get_preset

from .evaluate import Evaluated
from .predict import Prediction
from ..io import Layout
from ..sizes import bytes_headline, storage_stats
from .prepared import accounting, box_stats, headline, image_stats, source_stats, token_stats, video_stats
from .preflight_run import evaluate_corpus
from .records import load_config
from .summary import Report, share
from .tables import ReportInputError

LEDGER_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("record_index", pa.int64()), ("status", pa.string()),
    ("stage", pa.string()), ("rule", pa.string()), ("value", pa.float64()), ("message", pa.string())])
LIMITS = (2048, 4096, 8192, 16384, 32768)


def build_preflight_report(path: str | Path, *, preset: str | None = None, overrides: list[str] | None = None,
                           max_length: int | None = None, min_pixels: int | None = None,
                           max_pixels: int | None = None, workers: int | None = None,
                           dedupe_media: bool = True, limit: int | None = None,
                           use_stages: bool = True, executor: str = "threads", address: str | None = None,
                           progress: bool = False) -> Report:
    """`executor`: `threads` (default here; `workers` threads), `local` (in-process loop over work
    units) or `ray` (work units as Ray tasks: an embedded local Ray with `workers` CPUs, the cluster
    at `address`, or a Ray the caller initialised). `vlprep stats` defaults to `ray`."""
    path = Path(path)
    if not path.exists():
        raise ReportInputError(f"{path} does not exist; give a config YAML, a json/jsonl/parquet file, "
                               f"a media folder, or a `vlprep prepare` OUT directory")
    if path.is_dir() and Layout(path).job.exists():
        raise ReportInputError(f"{path} is an unfinished `vlprep prepare` OUT (job.json but no manifest.parquet "
                               f"and ledger.parquet): run the same `vlprep prepare` command again to finish it")
    cfg = load_config(path, overrides, preset=preset)
    from ..runner import check_tokenizer

    check_tokenizer(cfg)   # once, before any unit: a missing special token is one line, exit 2
    if max_length is not None:
        cfg.max_length = max_length
    if min_pixels is not None:
        cfg.image.min_pixels = min_pixels
    if max_pixels is not None:
        cfg.image.max_pixels = max_pixels
    p = get_preset(cfg.preset)
    run = evaluate_corpus(cfg, executor=executor, use_stages=use_stages, dedupe_media=dedupe_media, limit=limit,
                          workers=workers, address=address, progress=progress)
    results = run.results
    if not results and path.is_dir():
        raise ReportInputError(f"{path} holds no records: it is not a `vlprep prepare` OUT (no manifest.parquet "
                               f"and ledger.parquet) and no image or video in it has a sidecar caption; give an "
                               f"OUT, a config YAML, a json/jsonl/parquet file or a captioned media folder")

    preds = [r.pred for r in results if r.pred is not None]
    size_model = predict_sizes(results, cfg, p)
    manifest, ledger = predicted_tables(results, cfg.max_length)
    series: dict = {"manifest": manifest, "ledger": ledger}   # per-sample predictions, for callers
    stats: dict = {"kind": "preflight", "path": str(path), "presets": [p.name],
                   "mode": "pipeline.stages" if use_stages else "fast (no filters)"}
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
    stats["media"] = media_block(results)
    stats["storage"] = storage_stats(manifest, predicted=True, codec=cfg.storage.codec, model=size_model)
    if run.failed_units:
        stats["failed_units"] = run.failed_units
    seconds = run.timing["seconds"]
    # how long and where: the one block that differs between executors and runs
    stats["timing"] = {**run.timing, "records": len(results),
                       "records_per_s": len(results) / seconds if seconds > 0 else None,
                       "header_reads": run.header_reads}
    stats["headline"] = headline(stats)
    stats["headline"]["over_max_length"] = stats["max_length"].get("over")
    stats["headline"].update(bytes_headline(stats["storage"]))
    return Report(stats, series)


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
        "sample_bytes": (i64, [p.sample_bytes for p in preds]),
        "media_bytes": (i64, [p.media_bytes for p in preds]),
    }
    return pa.table({k: pa.array(v, type=t) for k, (t, v) in cols.items()})


def predict_sizes(results: list[Evaluated], cfg, preset):
    """Each kept prediction's shard bytes (pipeline/sizes.py), the pixel ratio measured on a few of
    the corpus's own items through the job's codec."""
    from ..sizes import calibrate

    kept = [r.pred for r in results
            if r.pred is not None and r.row is None and _status(r.pred, cfg.max_length)[0] == "kept"]
    model = calibrate(kept, preset, cfg.encode_options(), cfg.storage.codec)
    for pred in kept:
        pred.sample_bytes = model.sample_bytes(pred, rope_rows=3 if preset.is_mrope else 1)
    return model


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


def media_block(results: list[Evaluated], examples: int = 5) -> dict:
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
        "failures": {k: {"samples": len(v), "examples": v[:examples]} for k, v in sorted(failures.items())},
    }
