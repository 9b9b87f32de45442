"""A record that kills its worker (segfault, OOM kill) or hangs it costs one ledger row, not its
unit: the runner reads which record the worker was on, re-runs the unit with that record
quarantined, and every other record of the unit is processed as usual."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig
from pipeline.runner import REPO_ROOT, run_job
from media_factory import make_image

pytestmark = pytest.mark.slow
TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture()
def ray_with_crash_hook():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join(p for p in (TESTS, REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"worker_process_setup_hook": "crash_hook.install", "env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def _corpus(tmp_path: Path, bad: dict[int, str], n: int = 10, max_retries: int = 0) -> Path:
    (tmp_path / "m").mkdir()
    lines = []
    for i in range(n):
        make_image(tmp_path / "m" / f"{i}.jpg", 64 + 4 * i, 56, seed=i)
        rec = {"id": f"r{i}", "messages": [{"role": "user", "content": f"<image>Picture {i}?"},
                                           {"role": "assistant", "content": f"Gradient number {i}."}],
               "images": [f"m/{i}.jpg"]}
        if i in bad:
            rec["crash_worker"] = bad[i]
            rec["crash_log"] = str(tmp_path / f"crashes-{i}.log")
        lines.append(json.dumps(rec))
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"sources: [{{path: c.jsonl, media_root: .}}]\nout: out\nunit_size: 5\nray: {{max_retries: {max_retries}}}\n")
    return cfg


def test_segfaulting_records_are_quarantined_and_the_rest_kept(tmp_path, ray_with_crash_hook):
    cfg = _corpus(tmp_path, {2: "segv", 3: "segv", 7: "segv"})
    r = run_job(JobConfig.from_yaml(cfg), progress=False)
    assert r.ok and r.accounting.balanced, r.failed
    ledger = {x["record_index"]: x for x in pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()}
    errors = {i: x for i, x in ledger.items() if x["status"] == "error"}
    assert sorted(errors) == [2, 3, 7]
    assert all(x["stage"] == "encode" and x["rule"] == "worker_crash" for x in errors.values())
    assert "died" in errors[2]["message"] and errors[2]["id"] == "r2"
    assert sorted(i for i, x in ledger.items() if x["status"] == "kept") == [0, 1, 4, 5, 6, 8, 9]
    manifest = pq.read_table(tmp_path / "out" / "manifest.parquet").column("id").to_pylist()
    assert sorted(manifest) == [f"r{i}" for i in (0, 1, 4, 5, 6, 8, 9)]
    assert not list((tmp_path / "out" / "parts" / "progress").glob("*.txt"))


def test_a_hanging_record_is_cut_off_by_the_record_timeout(tmp_path, ray_with_crash_hook):
    cfg = _corpus(tmp_path, {6: "hang"})
    job = JobConfig.from_yaml(cfg, ["ray.record_timeout_s=4"])
    r = run_job(job, progress=False)
    assert r.ok and r.accounting.balanced, r.failed
    ledger = {x["record_index"]: x for x in pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()}
    assert [i for i, x in ledger.items() if x["status"] == "error"] == [6]
    assert ledger[6]["rule"] == "hard_timeout" and "record_timeout_s=4" in ledger[6]["message"]
    assert sum(x["status"] == "kept" for x in ledger.values()) == 9


def test_a_record_is_blamed_only_after_it_killed_the_worker_max_retries_plus_one_times(tmp_path, ray_with_crash_hook):
    # max_retries 1: the unit is re-run once as is (a worker may die for reasons of its own, e.g. an
    # OOM kill of a busy machine); the second death on the same record quarantines it. A short
    # record_timeout_s must not mistake the re-run waiting to start for a hang.
    cfg = _corpus(tmp_path, {1: "segv"}, max_retries=1)
    r = run_job(JobConfig.from_yaml(cfg, ["ray.record_timeout_s=5"]), progress=False)
    assert r.ok and r.accounting.balanced, r.failed
    ledger = {x["record_index"]: x for x in pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()}
    assert [i for i, x in ledger.items() if x["status"] == "error"] == [1]
    assert ledger[1]["rule"] == "worker_crash" and "(2 times;" in ledger[1]["message"]
    assert len((tmp_path / "crashes-1.log").read_text().split()) == 2
    leftovers = [p.name for p in (tmp_path / "out").rglob("*") if "tmp-" in p.name]
    assert leftovers == []


def test_a_record_that_kills_the_index_pass_is_quarantined_there(tmp_path, ray_with_crash_hook):
    # dedup is on by default, so the index pass reads every record first: a crash there must cost the
    # record, not the job, and the main pass must not run it again
    cfg = _corpus(tmp_path, {4: "segv-prepare"})
    r = run_job(JobConfig.from_yaml(cfg), progress=False)
    assert r.ok and r.accounting.balanced, r.failed
    ledger = {x["record_index"]: x for x in pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()}
    assert [i for i, x in ledger.items() if x["status"] == "error"] == [4]
    assert ledger[4]["rule"] == "worker_crash" and "index pass" in ledger[4]["message"]
    assert len((tmp_path / "crashes-4.log").read_text().split()) == 1   # never touched again
    assert sum(x["status"] == "kept" for x in ledger.values()) == 9
