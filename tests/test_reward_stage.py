"""End to end on a small prepared directory: `vlprep score` (resume, added scorers, Ray) and
`vlprep select` (kept manifest, select ledger rows, accounting)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filters.reward.batching import ARRAY_FIELDS
from jobs.cli import main
from pipeline.loader import ShardLoader
from test_reward_fixtures import encode_frames, photo, tiny_qwen25_vl, write_shard  # noqa: F401

QA = [
    ("What animal is on the sofa?", "A grey cat is sleeping on the sofa."),
    ("How many cars are parked outside?", "Three cars are parked outside the house."),
    ("What is the chef cooking?", "The chef is frying noodles in a wok."),
    ("What colour is the bus?", "The bus is bright yellow."),
]


def _prepared(tmp_path):
    out = tmp_path / "prepared"
    blank = np.full((56, 84, 3), 30, np.uint8)
    units = {
        "u0000": [encode_frames("s0", *QA[0], images=[photo(56, 84, 0)]),
                  encode_frames("s1", QA[1][0], QA[3][1], images=[photo(84, 56, 1)]),   # mismatched answer
                  encode_frames("s2", *QA[2])],                                          # text only
        "u0001": [encode_frames("s3", *QA[3], images=[blank]),                           # blank image
                  encode_frames("s4", *QA[1], videos=[np.stack([photo(56, 56, k) for k in range(4)])], secs=[1.0])],
    }
    rows = []
    for unit, enc in units.items():
        shard = write_shard(out, unit, enc)
        rows += [{"id": e.id, "unit": unit, "shard": shard, "preset": "qwen2.5-vl", "key": e.id,
                  "n_tokens": len(e.input_ids)} for e in enc]
    pq.write_table(pa.Table.from_pylist(rows), out / "manifest.parquet")
    ledger = [{"id": r["id"], "source": "t.json", "record_index": i, "unit": r["unit"], "status": "kept",
               "stage": "write", "rule": None, "value": None, "message": None} for i, r in enumerate(rows)]
    ledger.append({"id": "bad", "source": "t.json", "record_index": 5, "unit": "u0001", "status": "error",
                   "stage": "encode", "rule": "image_decode", "value": None, "message": "broken"})
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("record_index", pa.int64()),
                        ("unit", pa.string()), ("status", pa.string()), ("stage", pa.string()),
                        ("rule", pa.string()), ("value", pa.float64()), ("message", pa.string())])
    pq.write_table(pa.Table.from_pylist(ledger, schema=schema), out / "ledger.parquet")
    return out


def _scores(out):
    return pa.concat_tables([pq.read_table(p) for p in sorted((out / "scores").glob("*.parquet"))],
                            promote_options="default")


def test_score_resume_add_vlm_then_select(tmp_path, tiny_qwen25_vl, capsys):
    out = _prepared(tmp_path)
    assert main(["score", str(out), "--batch-tokens", "2048"]) == 0
    s = _scores(out)
    assert s.column("id").to_pylist() == ["s0", "s1", "s2", "s3", "s4"]
    assert [c for c in s.column_names if c != "id"] == [
        "text.qa_relevance", "text.informativeness", "text.lexical_diversity",
        "pixels.blank", "pixels.luma_std", "pixels.sharpness", "pixels.brightness", "pixels.clipped"]
    rel = dict(zip(s.column("id").to_pylist(), s.column("text.qa_relevance").to_pylist()))
    assert rel["s0"] > rel["s1"] + 0.2
    blank = dict(zip(s.column("id").to_pylist(), s.column("pixels.blank").to_pylist()))
    assert blank["s3"] == 1.0 and blank["s0"] < 0.1 and np.isnan(blank["s2"])
    printed = capsys.readouterr().out
    assert "scored 5 samples" in printed and "padding" in printed

    # a re-run finds every unit done and touches nothing
    before = {p.name: p.stat().st_mtime_ns for p in (out / "scores").glob("*.parquet")}
    assert main(["score", str(out)]) == 0
    assert "scoring 0 of 2 units" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "scores").glob("*.parquet")}

    # adding the vlm scorer adds its columns and keeps the others
    assert main(["score", str(out), "--model", str(tiny_qwen25_vl), "--scorers", "vlm"]) == 0
    s2 = _scores(out)
    assert {"vlm.mean_logprob", "vlm.visual_gain", "text.qa_relevance"} <= set(s2.column_names)
    assert s2.column("text.qa_relevance").to_pylist() == s.column("text.qa_relevance").to_pylist()
    assert np.all(np.array(s2.column("vlm.mean_logprob").to_pylist()) < 0)
    assert np.isnan(s2.column("vlm.visual_gain").to_pylist()[2])  # the text-only sample

    assert main(["select", str(out), "--rule", "text.qa_relevance > 0.3 and pixels.blank < 0.5"]) == 0
    printed = capsys.readouterr().out
    kept = pq.read_table(out / "selection" / "manifest.parquet").column("id").to_pylist()
    assert kept == ["s0", "s2", "s4"]
    led = pq.read_table(out / "selection" / "ledger.parquet").to_pylist()
    by_id = {r["id"]: r for r in led}
    assert by_id["s1"]["status"] == "dropped" and by_id["s1"]["stage"] == "select"
    assert by_id["s1"]["rule"] == "text.qa_relevance > 0.3" and by_id["s1"]["value"] == pytest.approx(rel["s1"])
    assert by_id["s3"]["rule"] == "pixels.blank < 0.5" and by_id["s3"]["value"] == 1.0
    assert by_id["bad"]["status"] == "error" and by_id["s0"]["status"] == "kept"
    assert "inputs 6 == kept 3 + dropped 2 + errors 1: ok" in printed
    assert len(list((out / "shards").glob("*.tar"))) == 2  # nothing deleted


def test_select_errors_are_specific(tmp_path, capsys):
    out = _prepared(tmp_path)
    assert main(["select", str(out), "--rule", "pixels.blank < 0.5"]) == 2
    assert "run `vlprep score" in capsys.readouterr().err
    assert main(["score", str(out), "--scorers", "pixels"]) == 0
    assert main(["select", str(out), "--rule", "text.qa_relevance > 0.1"]) == 2
    assert "available: ['pixels.blank'" in capsys.readouterr().err


def test_score_arguments_are_checked(tmp_path, capsys):
    out = _prepared(tmp_path)
    assert main(["score", str(out), "--scorers", "vlm"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "nowhere")]) == 2
    assert "manifest.parquet not found" in capsys.readouterr().err


def test_the_loader_yields_what_the_stage_reads(tmp_path):
    """The stage is handed pipeline.loader.ShardLoader by `vlprep score`: its dicts carry the id and
    the 7 arrays the batcher reads, equal to what the fixture wrote."""
    out = _prepared(tmp_path)
    got = list(ShardLoader(out).iter_shard("shards/u0000.tar"))
    assert [s["id"] for s in got] == ["s0", "s1", "s2"]
    want = encode_frames("s0", *QA[0], images=[photo(56, 84, 0)]).arrays()
    for k in ARRAY_FIELDS:
        np.testing.assert_array_equal(got[0][k], want[k])
    assert got[2]["pixel_values"].shape[0] == 0 and got[0]["pixel_values"].dtype == np.uint8


@pytest.mark.slow
def test_ray_executor_scores_like_local(tmp_path):
    ray = pytest.importorskip("ray")
    out = _prepared(tmp_path)
    try:
        assert main(["score", str(out), "--scorers", "pixels", "--executor", "ray", "--workers", "2"]) == 0
    finally:
        ray.shutdown()
    via_ray = _scores(out)
    assert main(["score", str(out), "--scorers", "pixels", "--overwrite"]) == 0
    local = _scores(out)
    assert via_ray.column_names == local.column_names
    for name in local.column_names:
        np.testing.assert_array_equal(via_ray.column(name).to_numpy(zero_copy_only=False),
                                      local.column(name).to_numpy(zero_copy_only=False))
