"""Report on a prepare OUT directory: what was kept, dropped and why, and what the kept data looks like.

Reads only manifest.parquet, ledger.parquet and scores/*.parquet (never the shards), so a report on
millions of samples takes seconds. Column names follow docs/CONTRACTS.md.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..sizes import bytes_headline
from .summary import Report, share, size_block, summarize
from .tables import (column, flat_values, is_prepared_dir, pairs, read_ledger, read_manifest, read_scores, strings)

EXAMPLES = 5
TOKEN_KINDS = {  # stats.json key → manifest column
    "text": "n_text_tokens",
    "image": "n_image_tokens",
    "video": "n_video_tokens",
    "total": "n_tokens",
    "supervised": "n_supervised_tokens",
}
DECILES = tuple(range(10, 100, 10))


def build_prepared_report(out: str | Path, *, examples: int = EXAMPLES) -> Report:
    out = Path(out)
    manifest = read_manifest(out)
    ledger = read_ledger(out)
    series: dict = {"manifest": manifest, "ledger": ledger}
    stats: dict = {"kind": "prepared", "path": str(out)}
    presets = sorted(set(strings(manifest, "preset")) - {""})
    stats["presets"] = presets

    stats["accounting"] = accounting(ledger, manifest.num_rows, examples=examples)
    stats["tokens"] = token_stats(manifest, series)
    stats["images"] = image_stats(manifest, series, presets)
    stats["videos"] = video_stats(manifest, series)
    stats["videos"]["resize"] = video_resize_reference(out)
    stats["boxes"] = box_stats(manifest, series)
    stats["sources"] = source_stats(manifest, ledger)
    scores = read_scores(out)
    stats["scores"] = score_stats(scores, manifest, series) if scores is not None else {}
    stats["storage"] = _storage(out, manifest)
    stats["categories"] = category_stats(scores, manifest, out) if scores is not None else {}
    stats["headline"] = headline(stats)
    stats["headline"].update(bytes_headline(stats["storage"]))
    return Report(stats, series)


def _storage(out: Path, manifest) -> dict:
    import json

    from ..sizes import shard_files_bytes, storage_stats

    try:
        codec = json.loads((out / "job.json").read_text()).get("storage", {}).get("codec")
    except (OSError, ValueError):
        codec = None
    return storage_stats(manifest, codec=codec, shards_on_disk=shard_files_bytes(out))


def accounting(ledger, manifest_rows: int, *, examples: int = EXAMPLES) -> dict:
    """inputs = kept + dropped + error, and one row per (status, stage, rule) with example ids.

    Example ids are the first ones in ledger order (the ledger is written deterministically), so the
    same run always shows the same examples.
    """
    ids, status = strings(ledger, "id"), strings(ledger, "status")
    stage, rule, msg = strings(ledger, "stage"), strings(ledger, "rule"), strings(ledger, "message")
    value = column(ledger, "value", np.full(ledger.num_rows, np.nan))
    groups: dict[tuple, list[int]] = defaultdict(list)
    totals = {"kept": 0, "dropped": 0, "error": 0}
    for i, s in enumerate(status):
        totals[s] = totals.get(s, 0) + 1
        if s != "kept":
            groups[(s, stage[i], rule[i])].append(i)
    n = ledger.num_rows
    rows = []
    for (s, st, r), idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        v = value[idx]
        rows.append({
            "status": s, "stage": st, "rule": r, "count": len(idx), "share": share(len(idx), n),
            "value": summarize(v) if np.isfinite(v).any() else None,
            "examples": [{"id": ids[i], "value": None if not np.isfinite(value[i]) else float(value[i]),
                          "message": msg[i]} for i in idx[:examples]],
        })
    acc = {"inputs": n, **{k: totals.get(k, 0) for k in ("kept", "dropped", "error")},
           "kept_share": share(totals.get("kept", 0), n), "manifest_rows": manifest_rows}
    unknown = sorted(set(totals) - {"kept", "dropped", "error"})
    # The contract: every input ends in exactly one place. Say so loudly when it does not.
    acc["balanced"] = (not unknown and acc["kept"] + acc["dropped"] + acc["error"] == n
                       and acc["kept"] == manifest_rows)
    if unknown:
        acc["unknown_statuses"] = {k: totals[k] for k in unknown}
    acc["by_rule"] = rows
    by_stage: dict[str, dict] = defaultdict(lambda: {"dropped": 0, "error": 0})
    for row in rows:
        by_stage[row["stage"]][row["status"]] = by_stage[row["stage"]].get(row["status"], 0) + row["count"]
    acc["by_stage"] = dict(sorted(by_stage.items()))
    return acc


def token_stats(manifest, series: dict) -> dict:
    out = {}
    for key, col in TOKEN_KINDS.items():
        a = column(manifest, col)
        if a is None:
            continue
        series[f"tokens.{key}"] = a
        out[key] = summarize(a)
    img, vid = column(manifest, "n_image_tokens"), column(manifest, "n_video_tokens")
    if img is not None and vid is not None:
        visual = img + vid
        series["tokens.visual"] = visual
        out["visual"] = summarize(visual)
        total = column(manifest, "n_tokens")
        if total is not None and total.sum() > 0:
            out["visual_share_of_total"] = float(visual.sum() / total.sum())
    return out


def _tokens_per_frame(hw: np.ndarray, presets: list[str]) -> np.ndarray:
    from processors.presets import get_preset

    p = get_preset(presets[0]) if presets else get_preset(None)
    if p.image_tokens_fixed is not None:
        return np.full(len(hw), p.image_tokens_fixed, dtype=np.float64)
    return (hw[:, 0] // p.factor * (hw[:, 1] // p.factor)).astype(np.float64)


def image_stats(manifest, series: dict, presets: list[str]) -> dict:
    n_images = column(manifest, "n_images")
    orig, resized = pairs(manifest, "image_sizes"), pairs(manifest, "image_resized")
    series["images.original_hw"], series["images.resized_hw"] = orig, resized
    out = {
        "total": int(n_images.sum()) if n_images is not None else int(len(orig)),
        "per_sample": summarize(n_images) if n_images is not None else {"count": 0},
        "samples_with_images": int((n_images > 0).sum()) if n_images is not None else None,
        "original": size_block(orig),
        "resized": size_block(resized),
    }
    if len(resized):
        tok = _tokens_per_frame(resized, presets)
        series["images.tokens_each"] = tok
        out["tokens_per_image"] = summarize(tok)
    if len(orig) and len(orig) == len(resized):
        before, after = orig.prod(axis=1), resized.prod(axis=1)
        out["downscaled"] = int((after < before).sum())
        out["upscaled"] = int((after > before).sum())
        out["same_pixel_count"] = int((after == before).sum())
    return out


def video_stats(manifest, series: dict) -> dict:
    n_videos = column(manifest, "n_videos")
    dur, fps = flat_values(manifest, "video_durations"), flat_values(manifest, "video_fps")
    sfps, frames = flat_values(manifest, "video_sample_fps"), flat_values(manifest, "video_frames")
    series.update({"videos.duration_s": dur, "videos.fps": fps, "videos.sample_fps": sfps,
                   "videos.frames": frames,
                   "videos.original_hw": pairs(manifest, "video_sizes"),
                   "videos.resized_hw": pairs(manifest, "video_resized")})
    return {
        "total": int(n_videos.sum()) if n_videos is not None else int(len(dur)),
        "per_sample": summarize(n_videos) if n_videos is not None else {"count": 0},
        "samples_with_videos": int((n_videos > 0).sum()) if n_videos is not None else None,
        "duration_s": summarize(dur),
        "total_duration_s": float(dur.sum()),
        "fps": summarize(fps),
        "sample_fps": summarize(sfps),
        "sampled_frames": summarize(frames),
        "original": size_block(series["videos.original_hw"]),
        "resized": size_block(series["videos.resized_hw"]),
    }


def video_resize_reference(out: Path) -> str | None:
    """Which reference the run's video frames were resized bit-exactly to ("qwen-vl-utils" or
    "transformers", docs/video.md), from OUT/job.json; None without one."""
    import json

    from processors.presets import get_preset
    from processors.video_resize import resize_mode

    try:
        job = json.loads((Path(out) / "job.json").read_text())
        video = job.get("video") or {}
        return resize_mode(video.get("resize"), video.get("fast") or None,
                           default=get_preset(job.get("preset")).video_resize)
    except (OSError, ValueError, AttributeError):
        return None


def box_stats(manifest, series: dict) -> dict:
    boxes = column(manifest, "n_boxes")
    if boxes is None:
        return {}
    series["boxes.per_sample"] = boxes
    return {"total": int(boxes.sum()), "samples_with_boxes": int((boxes > 0).sum()),
            "per_sample": summarize(boxes)}


def source_stats(manifest, ledger) -> list[dict]:
    """Per source: the ledger's accounting plus the kept samples' token totals."""
    rows: dict[str, dict] = defaultdict(lambda: {"inputs": 0, "kept": 0, "dropped": 0, "error": 0})
    for src, st in zip(strings(ledger, "source"), strings(ledger, "status")):
        rows[src]["inputs"] += 1
        rows[src][st] = rows[src].get(st, 0) + 1
    msrc = np.asarray(strings(manifest, "source"), dtype=object)
    toks = {k: column(manifest, c) for k, c in TOKEN_KINDS.items()}
    out = []
    for src in sorted(set(rows) | set(msrc.tolist())):
        r = {"source": src, **rows[src]}
        mask = msrc == src
        r["kept_share"] = share(r["kept"], r["inputs"])
        r["manifest_rows"] = int(mask.sum())
        for k, a in toks.items():
            if a is not None:
                r[f"{k}_tokens"] = int(a[mask].sum())
        if toks.get("total") is not None and mask.any():
            r["mean_tokens"] = float(toks["total"][mask].mean())
        out.append(r)
    return out


def score_stats(scores, manifest, series: dict) -> dict:
    """Per score column: its distribution and what a decile threshold would keep (`>=` it, or `<=` it
    for the lower-is-better signals of filters.reward.pixel_scorer.LOWER_IS_BETTER).

    Only the samples of this manifest count (a selection's manifest is a subset of what was scored);
    the others are counted in `not_in_manifest`, NaN scores (not applicable) in `missing`.
    """
    from filters.reward.pixel_scorer import LOWER_IS_BETTER

    tok_by_id = dict(zip(strings(manifest, "id"), column(manifest, "n_tokens", np.zeros(manifest.num_rows))))
    ids = strings(scores, "id")
    tokens = np.asarray([tok_by_id.get(i, np.nan) for i in ids], dtype=np.float64)
    listed = np.asarray([i in tok_by_id for i in ids], dtype=bool)
    out = {}
    for name in scores.column_names:
        if name == "id" or pa.types.is_string(scores.schema.field(name).type):
            continue  # label columns (category.*) are counted by category_stats
        v = column(scores, name)
        if v is None:
            continue
        ok = np.isfinite(v) & listed
        series[f"scores.{name}"] = v[ok]
        block = summarize(v[ok])
        block["missing"] = int((~np.isfinite(v) & listed).sum())
        block["not_in_manifest"] = int((~listed).sum())
        lower = name in LOWER_IS_BETTER
        block["keep_if"] = "<=" if lower else ">="
        thresholds = []
        if ok.any():
            for q, t in zip(DECILES, np.percentile(v[ok], DECILES)):
                keep = ok & ((v <= t) if lower else (v >= t))
                thresholds.append({"decile": q, "threshold": float(t), "kept": int(keep.sum()),
                                   "kept_share": share(int(keep.sum()), int(ok.sum())),
                                   "kept_tokens": int(np.nansum(tokens[keep]))})
        block["threshold_at_decile"] = thresholds
        out[name] = block
    return out


def category_stats(scores, manifest, out: Path | None = None) -> dict:
    """{label column: {label: {stage: {"samples", "tokens"}}}} for every label column of the scores
    (category.coarse, category.fine, vlm_category.*, verify.kind; not the free text verify.answer(s)):
    filters.reward.mixing.category_table, the table `vlprep select` prints. Stages: `scored` (the
    prepared manifest: what select chose from); with `out` (the directory reported on) and a selection
    there (OUT/selection, or OUT is one) also `after_rules` (not dropped by a --rule) and `selected`."""
    from filters.reward.mixing import category_table, is_quota_rule

    base, sel = out, None if out is None else out / "selection"
    if out is not None and out.name == "selection" and is_prepared_dir(out.parent):
        base, sel = out.parent, out  # the report of a selection: its parent's rows are what select chose from
    if base != out:
        manifest = read_manifest(base)
    ids = strings(manifest, "id")
    masks = {"scored": np.ones(len(ids), dtype=bool)}
    if sel is not None and is_prepared_dir(sel) and (sel / "selection.json").exists():
        chosen = set(strings(read_manifest(sel), "id"))
        led = read_ledger(sel)
        # a --rule drop: stage select, rule text not a quota's
        by_rule = {i for i, st, stage, rule in zip(strings(led, "id"), strings(led, "status"), strings(led, "stage"),
                                                   strings(led, "rule"))
                   if st == "dropped" and stage == "select" and not is_quota_rule(rule)}
        masks["after_rules"] = np.array([i not in by_rule for i in ids], dtype=bool)
        masks["selected"] = np.array([i in chosen for i in ids], dtype=bool)
    tokens = column(manifest, "n_tokens", np.zeros(len(ids)))
    row_of = {sid: k for k, sid in enumerate(strings(scores, "id"))}
    take = [row_of.get(sid) for sid in ids]
    out_: dict = {}
    for name in scores.column_names:
        if name == "id" or not pa.types.is_string(scores.schema.field(name).type) or \
                name.endswith((".answer", ".answers")):
            continue  # free text (verify.answer, verify.answers) is no label
        values = scores.column(name).to_pylist()
        labels = np.array([None if k is None else values[k] for k in take], dtype=object)
        table = category_table(labels, tokens, masks)
        if table:  # no rows (nothing kept): no table, rather than an empty one the report cannot summarise
            out_[name] = table
    return out_


def headline(stats: dict) -> dict:
    acc, tok = stats["accounting"], stats["tokens"]
    h = {"inputs": acc["inputs"], "kept": acc["kept"], "dropped": acc["dropped"], "error": acc["error"],
         "kept_share": acc["kept_share"], "balanced": acc["balanced"]}
    for k in ("total", "text", "visual"):
        if k in tok and tok[k].get("count"):
            h[f"{k}_tokens"] = tok[k]["sum"]
    if "total" in tok and tok["total"].get("count"):
        h["median_tokens_per_sample"] = tok["total"]["p50"]
    h["images"] = stats["images"].get("total", 0)
    h["videos"] = stats["videos"].get("total", 0)
    h["video_hours"] = stats["videos"].get("total_duration_s", 0.0) / 3600
    h["sources"] = len(stats["sources"])
    return h
