"""The pre-flight as a Ray job: on a two-node local cluster (`--address`), in-process over work
units (`--executor local`) and on the thread pool, `vlprep stats` writes the same stats.json and
report.html (all but the `timing` block); a record that raises and a worker that dies are handled.
Tests that start Ray are marked slow."""
from __future__ import annotations

import json
import os
import re

import pytest

from corpus_factory import make_mixed_corpus
from jobs.cli import main
from pipeline.report import preflight_run
from pipeline.report.evaluate import evaluate_unit
from pipeline.report.preflight import build_preflight_report
from pipeline.runner import MAX_RETRIES
from ray_cluster import two_node_cluster

TIMING_LINE = re.compile(r'<p class="sub">[^<]* records in [^<]*</p>')


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    cfg_path, expected = make_mixed_corpus(root, unit_size=4)
    return cfg_path, expected


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each; every test connects with `address` and disconnects again."""
    with two_node_cluster() as c:
        yield c


def _stats(out) -> tuple[str, dict]:
    """stats.json without its timing block (re-serialised as `vlprep stats` writes it), and the timing."""
    doc = json.loads((out / "stats.json").read_text())
    timing = doc.pop("timing")
    return json.dumps(doc, indent=2, allow_nan=False, default=str), timing


def _stats_cli(cfg_path, out, *extra) -> int:
    return main(["stats", str(cfg_path), "--out", str(out), "--no-progress", *extra])


def _raise_on(source: str, index: int):
    """Patch Predictor.predict (in this process) to raise on one record; returns the undo."""
    from pipeline.report.predict import Predictor

    predict = Predictor.predict

    def predict_or_raise(self, sample, *a, **k):
        if sample.source == source and sample.record_index == index:
            raise ZeroDivisionError("a record the checks did not foresee")
        return predict(self, sample, *a, **k)

    Predictor.predict = predict_or_raise
    return lambda: setattr(Predictor, "predict", predict)


@pytest.mark.parametrize("mode", ["stages", "fast"])
def test_work_units_in_process_equal_the_thread_pool(mixed, tmp_path, mode):
    """No Ray: `local` (work units, each reading its own record range) == `threads`, also with a
    --limit that ends inside a unit, and a record whose prediction raises is one error row in both."""
    cfg_path, _ = mixed
    flags = ["--fast"] if mode == "fast" else []
    undo = _raise_on("corpus/conv.jsonl", 3)
    try:
        for ex in ("threads", "local"):
            assert _stats_cli(cfg_path, tmp_path / ex, *flags, "--executor", ex, "--no-html") == 0
            assert _stats_cli(cfg_path, tmp_path / f"{ex}-10", *flags, "--executor", ex, "--limit", "10",
                              "--no-html") == 0
    finally:
        undo()
    for suffix, n in (("", 38), ("-10", 10)):
        want, timing = _stats(tmp_path / f"threads{suffix}")
        assert _stats(tmp_path / f"local{suffix}")[0] == want and timing["records"] == n
    doc = json.loads(want)
    (row,) = [r for r in doc["accounting"]["by_rule"] if r["stage"] == "preflight"]
    assert (row["status"], row["rule"], row["count"]) == ("error", "ZeroDivisionError", 1)
    assert row["examples"][0]["message"] == "ZeroDivisionError: a record the checks did not foresee"
    # --limit 10 on conv.jsonl: positions 0..10 minus the blank line 7; units of 4 positions
    assert doc["accounting"]["inputs"] == 10 and _stats(tmp_path / "local-10")[1]["units"] == 3


@pytest.mark.slow
def test_the_address_check_knows_a_real_gcs(cluster):
    """The gRPC probe of --address on a real Ray GCS (token auth as Ray's default sets it): the GCS passes;
    given as ray:// (Ray Client's form) it is named, with the form to give instead."""
    from pipeline.cluster import ClusterUnreachable, check_ray_address

    check_ray_address(cluster.address)
    with pytest.raises(ClusterUnreachable) as exc:
        check_ray_address(f"ray://{cluster.address}")
    assert str(exc.value) == (f"--address ray://{cluster.address}: {cluster.address} is the Ray GCS, which takes "
                              f"no ray:// prefix: give --address {cluster.address}")


def test_address_needs_the_ray_executor(mixed, tmp_path, capsys):
    cfg_path, _ = mixed
    assert _stats_cli(cfg_path, tmp_path, "--executor", "threads", "--address", "auto") == 2
    assert "needs the ray executor" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stages", "fast"])
def test_ray_local_and_threads_write_the_same_report(mixed, cluster, tmp_path, mode):
    cfg_path, _ = mixed
    flags = ["--fast"] if mode == "fast" else []
    html = mode == "stages"
    for ex, extra in (("threads", ["--workers", "3"]), ("local", []), ("ray", ["--address", cluster.address])):
        args = [*flags, "--executor", ex, *extra] + ([] if html else ["--no-html"])
        assert _stats_cli(cfg_path, tmp_path / ex, *args) == 0, ex
    want, t_threads = _stats(tmp_path / "threads")
    for ex in ("local", "ray"):
        got, timing = _stats(tmp_path / ex)
        assert got == want, f"{ex} stats.json differs from the thread pool's"
        assert timing["executor"] == ex and timing["units"] == 11 and timing["records"] == t_threads["records"] == 38
    assert t_threads["executor"] == "threads" and t_threads["workers"] == 3
    if html:
        pages = {ex: TIMING_LINE.sub("", (tmp_path / ex / "report.html").read_text()) for ex in ("threads", "ray")}
        assert pages["threads"] == pages["ray"]


@pytest.mark.slow
def test_bad_records_are_error_rows_on_ray(mixed, cluster):
    """The mixed corpus's hostile records (broken JSON, escapes, missing / corrupt media, bad tar
    members) get the read / clean outcome the prepare job gives them; the rest of their unit is kept."""
    cfg_path, expected = mixed
    r = build_preflight_report(cfg_path, executor="ray", address=cluster.address)
    got = {(x["source"], x["record_index"]): (x["status"], x["stage"], x["rule"])
           for x in r.series["ledger"].to_pylist()}
    # the pre-flight runs read, clean, the raw/media filters and the max_length prediction; not dedup or decoding
    checked = {k: v for k, v in expected.items() if v and (v[1] in ("read", "clean") and v[2] != "exact_dup"
                                                           or v[2] in ("max_length", "box_in_image"))}
    assert {k: got[k] for k in checked} == checked
    assert sum(1 for v in checked.values() if v[0] == "error") >= 12
    assert got[("corpus/conv.jsonl", 0)] == ("kept", "write", "")       # beside the broken line, same unit
    assert "failed_units" not in r.stats


@pytest.mark.slow
def test_a_record_that_raises_in_a_task_is_an_error_row(mixed, cluster, monkeypatch):
    cfg_path, _ = mixed
    want = build_preflight_report(cfg_path, executor="threads").series["ledger"].to_pylist()

    def raising_unit(*args):
        # runs in the Ray worker: one record's prediction raises what no check foresaw
        from pipeline.report.predict import Predictor

        predict = Predictor.predict

        def predict_or_raise(self, sample, *a, **k):
            if sample.source == "corpus/conv.jsonl" and sample.record_index == 3:
                raise ZeroDivisionError("a record the checks did not foresee")
            return predict(self, sample, *a, **k)

        Predictor.predict = predict_or_raise
        try:
            return evaluate_unit(*args)
        finally:
            Predictor.predict = predict

    monkeypatch.setattr(preflight_run, "evaluate_unit", raising_unit)
    r = build_preflight_report(cfg_path, executor="ray", address=cluster.address)
    got = r.series["ledger"].to_pylist()
    assert len(got) == len(want) == 38 and "failed_units" not in r.stats
    for a, b in zip(got, want):
        if (a["source"], a["record_index"]) == ("corpus/conv.jsonl", 3):
            assert (a["status"], a["stage"], a["rule"]) == ("error", "preflight", "ZeroDivisionError")
            assert a["message"] == "ZeroDivisionError: a record the checks did not foresee"
            assert b["status"] == "kept"
        else:
            assert a == b                       # the other records of its unit are unaffected


def _dying_unit(target: str, attempts, times: int | None):
    """A unit function whose worker process dies on unit `target`, the first `times` tries (None:
    every try); each try leaves a file in `attempts`."""

    def unit(unit_d, *args):
        if unit_d["name"] == target:
            tries = len(list(attempts.iterdir()))
            (attempts / f"try-{tries}").touch()
            if times is None or tries < times:
                os._exit(1)
        return evaluate_unit(unit_d, *args)

    return unit


def _units(cfg_path):
    from pipeline.report.records import load_config

    return preflight_run.plan_units(load_config(cfg_path))


@pytest.mark.slow
def test_a_dead_worker_is_retried(mixed, cluster, tmp_path, monkeypatch):
    cfg_path, _ = mixed
    assert _stats_cli(cfg_path, tmp_path / "threads", "--executor", "threads", "--no-html") == 0
    want, _ = _stats(tmp_path / "threads")
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    monkeypatch.setattr(preflight_run, "evaluate_unit", _dying_unit(_units(cfg_path)[2].name, attempts, 1))
    assert _stats_cli(cfg_path, tmp_path / "ray", "--address", cluster.address, "--no-html") == 0
    assert sorted(p.name for p in attempts.iterdir()) == ["try-0", "try-1"]
    assert _stats(tmp_path / "ray")[0] == want


@pytest.mark.slow
def test_a_unit_that_keeps_dying_is_reported(mixed, cluster, tmp_path, monkeypatch, capsys):
    cfg_path, _ = mixed
    target = _units(cfg_path)[1]                 # conv.jsonl positions 4..7: 6 is a broken line, 7 is blank
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    monkeypatch.setattr(preflight_run, "evaluate_unit", _dying_unit(target.name, attempts, None))
    assert _stats_cli(cfg_path, tmp_path / "ray", "--address", cluster.address, "--no-html") == 4
    assert len(list(attempts.iterdir())) == 1 + MAX_RETRIES
    err = capsys.readouterr().err
    assert f"work unit {target.name} (records 4..7 of corpus/conv.jsonl) failed: WorkerCrashedError" in err
    doc = json.loads((tmp_path / "ray" / "stats.json").read_text())
    (failed,) = doc["failed_units"]
    assert (failed["unit"], failed["source"], failed["start"], failed["stop"]) == (target.name, "corpus/conv.jsonl", 4, 8)
    assert doc["accounting"]["inputs"] == 38 and doc["accounting"]["balanced"]
    rows = [r for r in doc["accounting"]["by_rule"] if r["rule"] == "unit_failed"]
    assert [(r["status"], r["stage"], r["count"]) for r in rows] == [("error", "preflight", 3)]   # records 4, 5, 6
    assert [e["message"] for e in rows[0]["examples"]][0].startswith(
        f"work unit {target.name} (records 4..7 of corpus/conv.jsonl) failed and was not evaluated: WorkerCrashedError")
