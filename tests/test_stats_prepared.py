"""`vlprep stats` on a prepare OUT dir: every figure checked against counts computed here, by hand.

The manifest/ledger/scores parquet files are written directly with pyarrow following CONTRACTS.md,
so these tests need nothing from the prepare job.
"""
from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.report.prepared import build_prepared_report

RNG = np.random.default_rng(7)
N_KEPT = 40

LIST2 = pa.list_(pa.list_(pa.int64()))


def _manifest_rows():
    rows = []
    for i in range(N_KEPT):
        n_img = i % 3                      # 0, 1, 2 images
        n_vid = 1 if i % 5 == 0 else 0     # every fifth sample has one video
        sizes = [[100 + 10 * i, 200 + 7 * j] for j in range(n_img)]
        resized = [[(h // 28 + 1) * 28, (w // 28) * 28] for h, w in sizes]
        img_tok = sum(h // 28 * (w // 28) for h, w in resized)
        frames = [4 + 2 * (i % 4)] if n_vid else []
        vres = [[252, 336]] if n_vid else []
        vid_tok = sum(f // 2 * (252 // 28) * (336 // 28) for f in frames)
        text = 20 + (i * 37) % 300
        rows.append({
            "id": f"s{i:03d}", "source": "a.jsonl" if i < 25 else "b.json", "record_index": i,
            "unit": "u0", "shard": "shards/u0.tar", "preset": "qwen2.5-vl",
            "n_tokens": text + img_tok + vid_tok, "n_text_tokens": text, "n_image_tokens": img_tok,
            "n_video_tokens": vid_tok, "n_supervised_tokens": text // 2, "n_images": n_img,
            "n_videos": n_vid, "n_boxes": (i * 7) % 4, "pixel_rows": 4 * (img_tok + vid_tok),
            "image_sizes": sizes, "image_resized": resized,
            "video_durations": [1.5 * (i + 1)] if n_vid else [], "video_fps": [30.0] if n_vid else [],
            "video_sample_fps": [2.0] if n_vid else [], "video_frames": frames,
            "video_sizes": [[480, 640]] if n_vid else [], "video_resized": vres,
        })
    return rows


MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("record_index", pa.int64()), ("unit", pa.string()),
    ("shard", pa.string()), ("preset", pa.string()),
    *[(c, pa.int64()) for c in ("n_tokens", "n_text_tokens", "n_image_tokens", "n_video_tokens",
                                "n_supervised_tokens", "n_images", "n_videos", "n_boxes", "pixel_rows")],
    ("image_sizes", LIST2), ("image_resized", LIST2),
    ("video_durations", pa.list_(pa.float64())), ("video_fps", pa.list_(pa.float64())),
    ("video_sample_fps", pa.list_(pa.float64())), ("video_frames", pa.list_(pa.int64())),
    ("video_sizes", LIST2), ("video_resized", LIST2),
])

# 40 kept + 7 dropped (min_side: 4, too_long: 3) + 2 errors.
DROPS = [("d0", "a.jsonl", "dropped", "filter", "min_side", 12.0),
         ("d1", "a.jsonl", "dropped", "filter", "min_side", 20.0),
         ("d2", "b.json", "dropped", "filter", "min_side", 8.0),
         ("d3", "b.json", "dropped", "filter", "min_side", 27.0),
         ("d4", "a.jsonl", "dropped", "encode", "too_long", 9000.0),
         ("d5", "a.jsonl", "dropped", "encode", "too_long", 12000.0),
         ("d6", "b.json", "dropped", "encode", "too_long", 8200.0),
         ("e0", "a.jsonl", "error", "read", "image_decode", None),
         ("e1", "b.json", "error", "encode", "video_decode", None)]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    rows = _manifest_rows()
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), out / "manifest.parquet")
    ledger = [{"id": r["id"], "source": r["source"], "record_index": r["record_index"], "unit": "u0",
               "status": "kept", "stage": "write", "rule": "", "value": None, "message": ""} for r in rows]
    ledger += [{"id": i, "source": s, "record_index": 100 + k, "unit": "u0", "status": st, "stage": stg,
                "rule": rule, "value": v, "message": f"{rule} on {i}"}
               for k, (i, s, st, stg, rule, v) in enumerate(DROPS)]
    pq.write_table(pa.Table.from_pylist(ledger), out / "ledger.parquet")
    (out / "scores").mkdir()
    scores = [{"id": r["id"], "text.qa_relevance": float(RNG.random()),
               "pixels.sharpness": float("nan") if k % 10 == 3 else float(k)} for k, r in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist(scores[:20]), out / "scores" / "u0.parquet")
    pq.write_table(pa.Table.from_pylist(scores[20:]), out / "scores" / "u1.parquet")
    return out, rows, scores


def pct(values, q):
    """Linear-interpolation percentile computed with the standard library (independent of numpy)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def test_accounting_matches_ledger(out_dir):
    out, rows, _ = out_dir
    acc = build_prepared_report(out).stats["accounting"]
    assert (acc["inputs"], acc["kept"], acc["dropped"], acc["error"]) == (49, 40, 7, 2)
    assert acc["balanced"] is True
    by = {(r["status"], r["stage"], r["rule"]): r for r in acc["by_rule"]}
    assert by[("dropped", "filter", "min_side")]["count"] == 4
    assert [e["id"] for e in by[("dropped", "filter", "min_side")]["examples"]] == ["d0", "d1", "d2", "d3"]
    assert by[("dropped", "filter", "min_side")]["value"]["max"] == 27
    assert by[("dropped", "encode", "too_long")]["value"]["p50"] == 9000.0
    assert by[("error", "read", "image_decode")]["value"] is None
    assert acc["by_rule"][0]["rule"] == "min_side"          # biggest first
    assert acc["by_stage"]["encode"] == {"dropped": 3, "error": 1}


def test_unbalanced_ledger_is_flagged(tmp_path, out_dir):
    out, rows, _ = out_dir
    # A manifest row the ledger does not mark kept: the report must say the books don't balance.
    pq.write_table(pa.Table.from_pylist(rows + [dict(rows[0], id="extra")], schema=MANIFEST_SCHEMA),
                   tmp_path / "manifest.parquet")
    pq.write_table(pq.read_table(out / "ledger.parquet"), tmp_path / "ledger.parquet")
    acc = build_prepared_report(tmp_path).stats["accounting"]
    assert acc["balanced"] is False and acc["manifest_rows"] == 41


def test_token_percentiles(out_dir):
    out, rows, _ = out_dir
    tok = build_prepared_report(out).stats["tokens"]
    for key, col in [("text", "n_text_tokens"), ("image", "n_image_tokens"), ("total", "n_tokens")]:
        vals = [r[col] for r in rows]
        assert tok[key]["count"] == 40 and tok[key]["sum"] == sum(vals)
        assert tok[key]["min"] == min(vals) and tok[key]["max"] == max(vals)
        for q in (5, 50, 90, 99):
            assert tok[key][f"p{q}"] == pytest.approx(pct(vals, q), rel=1e-12)
        assert sum(tok[key]["histogram"]["counts"]) == 40
    visual = [r["n_image_tokens"] + r["n_video_tokens"] for r in rows]
    assert tok["visual"]["sum"] == sum(visual)
    assert tok["visual_share_of_total"] == pytest.approx(sum(visual) / sum(r["n_tokens"] for r in rows))


def test_images_videos_boxes(out_dir):
    out, rows, _ = out_dir
    s = build_prepared_report(out).stats
    img = s["images"]
    all_sizes = [hw for r in rows for hw in r["image_sizes"]]
    all_res = [hw for r in rows for hw in r["image_resized"]]
    assert img["total"] == len(all_sizes) == sum(r["n_images"] for r in rows)
    assert img["samples_with_images"] == sum(1 for r in rows if r["n_images"])
    assert img["original"]["width"]["max"] == max(w for _, w in all_sizes)
    assert img["resized"]["height"]["p50"] == pytest.approx(pct([h for h, _ in all_res], 50))
    ar = [w / h for h, w in all_sizes]
    assert img["original"]["aspect_ratio_w_over_h"]["p90"] == pytest.approx(pct(ar, 90))
    assert img["tokens_per_image"]["sum"] == sum(r["n_image_tokens"] for r in rows)
    assert img["downscaled"] + img["upscaled"] + img["same_pixel_count"] == len(all_sizes)
    assert img["upscaled"] == sum(1 for (h, w), (H, W) in zip(all_sizes, all_res) if H * W > h * w)
    top = img["original"]["top_sizes_wxh"][0]
    assert top["count"] == max(sum(1 for hw in all_sizes if hw == x) for x in all_sizes)

    vid = s["videos"]
    durs = [d for r in rows for d in r["video_durations"]]
    assert vid["total"] == len(durs) == 8
    assert vid["total_duration_s"] == pytest.approx(sum(durs))
    assert vid["duration_s"]["p50"] == pytest.approx(pct(durs, 50))
    assert vid["sampled_frames"]["sum"] == sum(f for r in rows for f in r["video_frames"])
    assert vid["sample_fps"]["min"] == 2.0

    box = s["boxes"]
    counts = [r["n_boxes"] for r in rows]
    assert box["total"] == sum(counts) and box["samples_with_boxes"] == sum(1 for c in counts if c)
    # one histogram bin per integer value 0..3
    assert box["per_sample"]["histogram"]["counts"] == [counts.count(v) for v in range(4)]


def test_sources(out_dir):
    out, rows, _ = out_dir
    src = {r["source"]: r for r in build_prepared_report(out).stats["sources"]}
    assert set(src) == {"a.jsonl", "b.json"}
    a = src["a.jsonl"]
    assert a["kept"] == 25 and a["dropped"] == 4 and a["error"] == 1 and a["inputs"] == 30
    assert a["total_tokens"] == sum(r["n_tokens"] for r in rows if r["source"] == "a.jsonl")
    assert src["b.json"]["kept"] == 15 and src["b.json"]["dropped"] == 3


def test_score_deciles(out_dir):
    out, rows, scores = out_dir
    sc = build_prepared_report(out).stats["scores"]
    assert set(sc) == {"text.qa_relevance", "pixels.sharpness"}
    sharp = sc["pixels.sharpness"]
    vals = [s["pixels.sharpness"] for s in scores if not math.isnan(s["pixels.sharpness"])]
    assert sharp["missing"] == 4 and sharp["count"] == 36
    tok = {r["id"]: r["n_tokens"] for r in rows}
    for d in sharp["threshold_at_decile"]:
        t = pct(vals, d["decile"])
        assert d["threshold"] == pytest.approx(t)
        kept = [s for s in scores if not math.isnan(s["pixels.sharpness"]) and s["pixels.sharpness"] >= t]
        assert d["kept"] == len(kept)
        assert d["kept_tokens"] == sum(tok[s["id"]] for s in kept)
    rel = sc["text.qa_relevance"]["threshold_at_decile"]
    assert [d["decile"] for d in rel] == list(range(10, 100, 10))
    assert rel[4]["kept"] == 20  # median of 40 distinct values keeps exactly half


def test_stats_json_serialisable(out_dir):
    out, _, _ = out_dir
    s = build_prepared_report(out).stats
    assert json.loads(json.dumps(s, allow_nan=False))["headline"]["kept"] == 40
