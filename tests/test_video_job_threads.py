"""In a prepare job a video's decode stays within its task's CPU share (`ray.num_cpus`): FFmpeg's own
thread count of the opened decoder, observed in the real Ray task (tests/decoder_spy.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from corpus_factory import has_video
from media_factory import make_video
from pipeline.config import JobConfig
from pipeline.runner import REPO_ROOT, run_job
from processors.video_decode import usable_cores

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not has_video(), reason="needs PyAV with libx264")]
TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="module")
def spied_ray(tmp_path_factory):
    import ray

    log = tmp_path_factory.mktemp("spy") / "decoders.jsonl"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, TESTS, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"worker_process_setup_hook": "decoder_spy.record_thread_counts",
                          "env_vars": {"VLPREP_DECODER_SPY": str(log)}})
    yield log
    ray.shutdown()


def _job(root: Path, num_cpus: int) -> JobConfig:
    """One 1280×720 clip (≥ 400 000 px: not the small-frame one-thread rule) with one keyframe, so the
    decode is the sequential path (one run) whatever the worker count."""
    make_video(root / "clip.mp4", width=1280, height=720, num_frames=12, fps=6.0)
    rec = {"messages": [{"role": "user", "content": "<video>What moves?"},
                        {"role": "assistant", "content": "A square."}], "videos": ["clip.mp4"]}
    (root / "data.jsonl").write_text(json.dumps(rec) + "\n")
    (root / "job.yaml").write_text(yaml.safe_dump({
        "sources": [{"path": "data.jsonl", "format": "llamafactory"}], "out": "out",
        "ray": {"num_cpus": num_cpus}}))
    return JobConfig.from_yaml(root / "job.yaml")


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_a_task_decodes_on_its_cpu_share(spied_ray, tmp_path, num_cpus):
    spied_ray.write_text("")
    result = run_job(_job(tmp_path, num_cpus), progress=False)
    assert result.ok and result.accounting.kept == 1
    seen = [json.loads(line) for line in spied_ray.read_text().splitlines()]
    assert seen and all(s["opened"] for s in seen), seen
    counts = {s["thread_count"] for s in seen if s["path"].endswith("clip.mp4")}
    if num_cpus == 1:
        assert counts == {1}   # FFmpeg's own count would be min(cores + 1, 16) threads in every task
    else:
        assert counts == ({2} if usable_cores() > 2 else {_ffmpeg_auto_threads()})  # the task may use every core


def _ffmpeg_auto_threads() -> int:
    """FFmpeg's thread count for thread_count 0 (libavcodec/pthread_slice.c, pthread_frame.c)."""
    n = usable_cores()
    return min(n + 1, 16) if n > 1 else 1
