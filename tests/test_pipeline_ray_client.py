"""`vlprep prepare --address ray://HOST:PORT` against a Ray cluster started on its own (`ray start
--head`, as an operator would), reached through Ray Client: the outputs equal an in-process run.

The cluster runs in its own process group with its own temp dir and ports, and is torn down by
killing that group, never with `ray stop` (which would stop every Ray on the machine).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="Ray Client needs the ray[client] extra")

from corpus_factory import make_mixed_corpus  # noqa: E402
from pipeline.config import JobConfig  # noqa: E402
from pipeline.runner import run_job  # noqa: E402

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.5)
    return False


@pytest.fixture()
def ray_head():
    """A head node with a Ray Client server; yields the ray:// address, the environment and the GCS address."""
    temp = tempfile.mkdtemp(prefix="vlr")  # short: Ray's socket paths must stay under ~107 chars
    gcs, client = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", f"--ray-client-server-port={client}",
         "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        if not _wait_for_port(client, 90):
            proc.kill()
            pytest.fail(f"ray head did not open its client port: {proc.stderr.read().decode()[-2000:]}")
        yield f"ray://127.0.0.1:{client}", env, f"127.0.0.1:{gcs}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def test_prepare_through_ray_client_equals_a_local_run(tmp_path, ray_head):
    address, env, gcs = ray_head
    from pipeline.cluster import ClusterUnreachable, check_ray_address

    check_ray_address(address)     # the gRPC probe of --address passes Ray Client and the GCS ...
    check_ray_address(gcs)
    client = address[len("ray://"):]
    with pytest.raises(ClusterUnreachable) as exc:        # ... and names Ray Client given in the GCS's form
        check_ray_address(client)
    assert str(exc.value) == (f"--address {client}: {client} is a Ray Client server, which takes the ray:// form: "
                              f"give --address {address}")
    cfg_path, _ = make_mixed_corpus(tmp_path, with_video=False)
    out_client, out_local = tmp_path / "out_client", tmp_path / "out_local"
    # (pipeline.runner._connect retries Ray Client's racy connection start-up)
    r = subprocess.run([str(BIN / "vlprep"), "prepare", str(cfg_path), "--out", str(out_client),
                        "--address", address], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "OK" in r.stdout
    local = run_job(JobConfig.from_yaml(cfg_path), out=out_local, executor="local", progress=False)
    assert local.ok
    files = sorted(p.relative_to(out_local) for p in out_local.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out_client) for p in out_client.rglob("*") if p.is_file())
    differ = [str(f) for f in files if (out_local / f).read_bytes() != (out_client / f).read_bytes()]
    # job.json records where the job ran (the address); everything else is byte-identical
    assert differ in ([], ["job.json"]), differ
