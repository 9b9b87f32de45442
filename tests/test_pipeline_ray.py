"""End-to-end prepare jobs on a real local Ray: accounting, round trips, kill-and-resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from corpus_factory import has_video, make_bench_corpus, make_mixed_corpus
from pipeline.config import JobConfig
from pipeline.loader import ShardLoader, to_model_inputs
from pipeline.runner import REPO_ROOT, run_job
from pipeline.sources import iter_records
from pipeline.units import plan_units

pytestmark = pytest.mark.slow
OUTPUTS = ("manifest.parquet", "ledger.parquet")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def outputs(out: Path) -> dict[str, bytes]:
    files = {name: (out / name).read_bytes() for name in OUTPUTS}
    files.update({f"shards/{p.name}": p.read_bytes() for p in sorted((out / "shards").glob("*"))})
    return files


def ledger_outcomes(out: Path) -> dict:
    rows = pq.read_table(out / "ledger.parquet").to_pylist()
    return {(r["source"], r["record_index"]): (r["status"], r["stage"], r["rule"]) for r in rows}


@pytest.fixture(scope="module")
def mixed(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    cfg_path, expected = make_mixed_corpus(root)
    result = run_job(JobConfig.from_yaml(cfg_path), progress=False)
    return root, cfg_path, expected, result


def test_every_record_lands_where_it_should(mixed):
    root, _, expected, result = mixed
    assert result.ok and not result.failed
    acc = result.accounting
    assert acc.inputs == acc.kept + acc.dropped + acc.errors == len(expected) + 1
    got = ledger_outcomes(root / "out")
    assert len(got) == acc.inputs
    assert {k: got[k] for k, v in expected.items() if v} == {k: v for k, v in expected.items() if v}
    manifest = pq.read_table(root / "out" / "manifest.parquet")
    kept = sorted(k for k, v in got.items() if v[0] == "kept")
    assert sorted(zip(manifest.column("source").to_pylist(), manifest.column("record_index").to_pylist())) == kept
    assert manifest.column("id").to_pylist() == sorted(set(manifest.column("id").to_pylist()),
                                                       key=manifest.column("id").to_pylist().index)
    keys = list(zip(manifest.column("source").to_pylist(), manifest.column("record_index").to_pylist()))
    assert keys == sorted(keys)   # merged in (source, record_index) order
    msgs = {(r["source"], r["record_index"]): r["message"] for r in pq.read_table(root / "out" / "ledger.parquet").to_pylist()}
    assert msgs[("corpus/conv.jsonl", 6)].startswith("line 7: invalid JSON")
    assert "outside the media root" in msgs[("corpus/conv.jsonl", 11)]
    assert "download it first" in msgs[("corpus/conv.jsonl", 12)]
    job = json.loads((root / "out" / "job.json").read_text())
    assert job["max_length"] == 600 and job["unit_size"] == 4


def test_ray_output_is_byte_identical_to_the_in_process_loop(mixed):
    root, cfg_path, _, _ = mixed
    run_job(JobConfig.from_yaml(cfg_path), out=root / "out_local", executor="local", progress=False)
    assert outputs(root / "out") == outputs(root / "out_local")


def test_shards_round_trip_to_what_the_processors_produce(mixed):
    from processors.encode import EncodeOptions, encode_sample
    from processors.formats import parse_record
    from processors.patches import normalize_patches
    from processors.presets import QWEN25_VL
    from processors.text import clean_sample

    root, cfg_path, _, _ = mixed
    cfg = JobConfig.from_yaml(cfg_path)
    loader = ShardLoader(root / "out")
    conv = next(u for u in plan_units(cfg) if u.source.name == "corpus/conv.jsonl").source
    checked = 0
    for raw in iter_records(conv, start=0, stop=23):
        if raw.index not in (0, 3, 17, 20, 22) or raw.record is None:
            continue
        sample = clean_sample(parse_record(raw.record, source=raw.source, index=raw.index, fmt="llamafactory"))
        if sample.videos and not has_video():
            continue
        want = encode_sample(sample, QWEN25_VL, media_root=conv.media_root,
                             options=EncodeOptions.from_dict(cfg.encode_options()))
        got = loader.get(sample.id)
        for name in want.ARRAY_FIELDS:
            assert np.array_equal(got[name], getattr(want, name)), (raw.index, name)
            assert got[name].dtype == getattr(want, name).dtype
        assert got["meta"]["n_tokens"] == want.input_ids.size
        x = to_model_inputs(got, "qwen2.5-vl")
        assert x["input_ids"][0].tolist() == want.input_ids.tolist()
        if want.image_grid_thw.size:
            ref = normalize_patches(want.pixel_values, QWEN25_VL.image_mean, QWEN25_VL.image_std)
            assert np.abs(x["pixel_values"].numpy() - ref).max() <= 1e-6
        if want.video_grid_thw.size:
            assert x["second_per_grid_ts"].tolist() == pytest.approx(want.second_per_grid_ts.tolist())
        checked += 1
    assert checked >= 4


def test_demo_corpus(ray_local, shared_corpus, tmp_path):
    cfg_path = tmp_path / "demo.yaml"
    cfg_path.write_text(json.dumps({"sources": [str(shared_corpus / "mllm_demo.json"),
                                                str(shared_corpus / "mllm_video_demo.json")],
                                    "unit_size": 2, "out": str(tmp_path / "out")}))
    result = run_job(JobConfig.from_yaml(cfg_path), progress=False)
    acc = result.accounting
    n_records = sum(len(json.loads((shared_corpus / f).read_text())) for f in ("mllm_demo.json", "mllm_video_demo.json"))
    assert acc.inputs == n_records and acc.balanced and result.ok
    rows = pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()
    assert [r for r in rows if r["status"] != "kept"] == []
    manifest = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    videos = [m for m in manifest if m["n_videos"]]
    assert len(videos) == len(json.loads((shared_corpus / "mllm_video_demo.json").read_text()))
    assert all(m["n_video_tokens"] > 0 and m["video_durations"][0] > 0 for m in videos)
    assert all(m["n_image_tokens"] == sum(h * w for h, w in m["image_resized"]) // 784 for m in manifest if m["n_images"])


def test_killed_job_resumes_to_byte_identical_output(ray_local, tmp_path):
    cfg_path = make_bench_corpus(tmp_path, 240, video_share=0.0, size=(160, 120), unit_size=8)
    clean = run_job(JobConfig.from_yaml(cfg_path), out=tmp_path / "clean", progress=False)
    assert clean.ok and clean.accounting.kept == 240

    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "prepare", str(cfg_path), "--out", str(killed),
                             "--workers", "1", "--no-progress"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(list((killed / "parts" / "ledger").glob("*.parquet"))) < 3:
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = len(list((killed / "parts" / "ledger").glob("*.parquet")))
    assert 3 <= done < 30 and not (killed / "ledger.parquet").exists()
    # nothing partial under a final name: every shard there is a complete tar of its unit
    for shard in (killed / "shards").glob("*.tar"):
        assert shard.read_bytes() == (tmp_path / "clean" / "shards" / shard.name).read_bytes()

    resumed = run_job(JobConfig.from_yaml(cfg_path), out=killed, progress=False)
    assert resumed.ok and resumed.units_skipped >= done
    assert outputs(killed) == outputs(tmp_path / "clean")
    assert not list(killed.rglob("*.tmp-*"))
