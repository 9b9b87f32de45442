"""A two-node local Ray cluster produces exactly the output of one node."""
from __future__ import annotations

import pytest

from corpus_factory import make_bench_corpus
from pipeline.config import JobConfig
from pipeline.runner import run_job
from ray_cluster import two_node_cluster

pytestmark = pytest.mark.slow


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "job.json" and "index" not in p.parts}


def test_two_node_cluster_matches_the_in_process_loop(tmp_path):
    import ray

    cfg_path = make_bench_corpus(tmp_path, 48, video_share=0.0, size=(120, 90), unit_size=6)
    one = run_job(JobConfig.from_yaml(cfg_path), out=tmp_path / "one", executor="local", progress=False)
    assert one.ok

    with two_node_cluster() as cluster:
        try:
            ray.init(address=cluster.address, logging_level="WARNING")
            two = run_job(JobConfig.from_yaml(cfg_path), out=tmp_path / "two", progress=False)
            assert two.ok and two.units_run == 8
        finally:
            ray.shutdown()
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
