"""User audit: each mistake a new user makes with the CLI or the training loader ends in ONE line that
names what to change (exit 2, no traceback), on real files, real configs and real sockets."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from jobs.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _corpus(root: Path, n: int = 6) -> Path:
    (root / "media").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        Image.new("RGB", (96 + 16 * i, 64), (40 * i, 120, 200)).save(root / "media" / f"p{i}.png")
    recs = [{"messages": [{"role": "user", "content": f"<image>What colour is picture {i}?"},
                          {"role": "assistant", "content": f"Mostly blue, picture number {i}."}],
             "images": [f"p{i % 3}.png"]} for i in range(n)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = root / "job.yaml"
    cfg.write_text("sources:\n  - path: data.jsonl\n    media_root: media\nmax_length: 4096\nunit_size: 4\n")
    return cfg


def _prepare(cfg: Path, out: Path, *extra: str) -> int:
    return main(["prepare", str(cfg), "--out", str(out), "--executor", "local", "--no-progress", *extra])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(config, a prepared OUT with pixel scores, an OUT where every record was dropped)."""
    root = tmp_path_factory.mktemp("audit")
    cfg = _corpus(root)
    out, empty = root / "out", root / "all_dropped"
    assert _prepare(cfg, out) == 0
    assert main(["score", str(out), "--scorers", "pixels", "--executor", "local"]) == 0
    assert _prepare(cfg, empty, "--set", "max_length=5") == 0
    return cfg, out, empty


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]          # closed again when the block ends: nothing listens there


# -- OUT, paths --------------------------------------------------------------------------------------

def test_out_that_is_a_file_or_lies_under_a_file(prepared, tmp_path, capsys):
    cfg = prepared[0]
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    for out in (afile, afile / "sub"):
        assert _prepare(cfg, out) == 2
        err = _one_line(capsys)
        assert f"{afile} is a file, not a folder" in err and "--out" in err, err
    assert afile.read_text() == "not a folder\n"


def test_stats_on_paths_that_are_not_inputs(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in _one_line(capsys)
    folder = tmp_path / "not_an_out"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello\n")
    assert main(["stats", str(folder), "--executor", "threads", "--out", str(tmp_path / "s")]) == 2
    err = _one_line(capsys)
    assert "holds no records" in err and "not a `vlprep prepare` OUT" in err, err
    assert not (tmp_path / "s").exists()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "job.json").write_text("{}\n")
    assert main(["stats", str(unfinished)]) == 2
    assert "unfinished `vlprep prepare` OUT" in _one_line(capsys)


@pytest.mark.parametrize("command", [["pack", "--max-tokens", "4096"], ["score"], ["select", "--rule", "a > 1"],
                                     ["verify", "--model", "/nonexistent/ckpt"], ["inspect"]])
def test_commands_on_a_folder_that_is_not_an_out(command, tmp_path, capsys):
    folder = tmp_path / "not_an_out"
    folder.mkdir()
    assert main([command[0], str(folder), *command[1:]]) == 2
    err = _one_line(capsys)
    assert "vlprep prepare" in err and str(folder) in err, err


def test_inspect_an_unknown_id(prepared, capsys):
    assert main(["inspect", str(prepared[1]), "--id", "no-such-id"]) == 2
    err = _one_line(capsys)
    assert err.startswith("vlprep inspect: sample 'no-such-id' is not in"), err


# -- config mistakes ---------------------------------------------------------------------------------

def test_typo_in_a_config_key_suggests_the_key_meant(prepared, tmp_path, capsys):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(prepared[0].read_text().replace("max_length:", "max_lenght:").replace(
        "media_root: media", f"media_root: {prepared[0].parent / 'media'}").replace(
        "path: data.jsonl", f"path: {prepared[0].parent / 'data.jsonl'}"))
    assert _prepare(cfg, tmp_path / "o") == 2
    assert "unknown key(s) ['max_lenght'] in the config (did you mean 'max_length'?)" in _one_line(capsys)
    assert _prepare(prepared[0], tmp_path / "o", "--set", "video.fsp=1") == 2
    assert "unknown key(s) ['fsp'] in video (did you mean 'fps'?)" in _one_line(capsys)
    assert _prepare(prepared[0], tmp_path / "o", "--set", "dedup.zzz=1") == 2   # nothing close: no guess
    err = _one_line(capsys)
    assert "unknown key(s) ['zzz'] in dedup; valid keys:" in err and "did you mean" not in err
    assert not (tmp_path / "o").exists()


def test_config_path_that_is_missing_or_a_folder(prepared, tmp_path, capsys):
    assert _prepare(tmp_path / "nope.yaml", tmp_path / "o") == 2
    assert "config file" in _one_line(capsys)
    assert _prepare(prepared[0].parent, tmp_path / "o") == 2
    assert _one_line(capsys).endswith("is a folder; give the job YAML itself (here: job.yaml)")


def test_yaml_errors_are_one_line_with_their_place(prepared, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [\n")
    assert _prepare(bad, tmp_path / "o") == 2
    assert _one_line(capsys).endswith("is not valid YAML: line 2, column 1: expected the node content, "
                                      "but found '<stream end>'")
    assert _prepare(prepared[0], tmp_path / "o", "--set", "video={fps: [") == 2
    assert "value is not valid YAML: line 1, column 8: " in _one_line(capsys)


def test_wrong_type_and_unknown_names(prepared, tmp_path, capsys):
    cfg = prepared[0]
    for override, needle in (("max_length=lots", "max_length = 'lots' is not allowed"),
                             ("preset=qwen4-vl", "unknown preset 'qwen4-vl'; choose one of"),
                             ("grounding_format=qwen5-vl", "unknown grounding format 'qwen5-vl'"),
                             ("filters.image_min_sid=3", "(did you mean 'image_min_side'?)")):
        assert _prepare(cfg, tmp_path / "o", "--set", override) == 2, override
        assert needle in _one_line(capsys), override


def test_select_suggests_the_score_column_meant(prepared, capsys):
    out = prepared[1]
    assert main(["select", str(out), "--rule", "pixels.sharpnes > 1"]) == 2
    err = _one_line(capsys)
    assert "rule column(s) ['pixels.sharpnes'] not in the scores (did you mean 'pixels.sharpness'?)" in err
    assert main(["select", str(out), "--rule", "pixels.sharpness >> 1"]) == 2
    assert "expected comparisons joined by and/or" in _one_line(capsys)
    assert not (out / "selection").exists()


def test_model_that_is_missing_or_not_qwen_vl(prepared, tmp_path, capsys):
    out = prepared[1]
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for cmd in (["score", str(out), "--scorers", "vlm", "--executor", "local"], ["verify", str(out)]):
        assert main([*cmd, "--model", str(tmp_path / "missing")]) == 2
        assert "is not a local checkpoint folder with a config.json" in capsys.readouterr().err
        assert main([*cmd, "--model", str(bert)]) == 2
        assert "model_type 'bert' is not a Qwen2-VL" in _one_line(capsys)
    for cmd in (["score", str(out), "--model", str(bert)], ["verify", str(out), "--model", str(bert)]):
        p = subprocess.run([sys.executable, "-m", "jobs.cli", *cmd], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert p.returncode == 2 and p.stdout == "", (cmd, p.stdout)      # checked before "scoring N units ..."
        assert p.stderr.splitlines() == [f"vlprep {cmd[0]}: {bert}: model_type 'bert' is not a Qwen2-VL / Qwen2.5-VL "
                                         "/ Qwen3-VL checkpoint (expected one of ['qwen2_5_vl', 'qwen2_vl', "
                                         "'qwen3_vl'])"], (cmd, p.stderr)


def test_demo_with_too_few_scenes(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "d"), "--scenes", "2"]) == 2
    assert "--scenes 2: give at least 5" in _one_line(capsys)
    assert not (tmp_path / "d").exists()


# -- --address: fails fast, in one line --------------------------------------------------------------

def _silent_listener():
    """A port that accepts TCP connections and never says a word (e.g. some other service)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    return srv


def _http_listener():
    import http.server

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _grpc_server():
    """A real gRPC (HTTP/2) server that is not Ray: it serves one service of its own."""
    from concurrent import futures

    import grpc

    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    srv.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("demo.Echo", {"Say": echo})])
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    return srv, port


def test_unreachable_addresses_fail_fast(prepared, tmp_path, capsys, monkeypatch):
    cfg, out, _ = prepared
    closed = _closed_port()
    silent = _silent_listener()
    http = _http_listener()
    grpc_srv, grpc_port = _grpc_server()
    cases = [(f"ray://127.0.0.1:{closed}", "no Ray cluster answers at 127.0.0.1:"),
             (f"127.0.0.1:{closed}", "no Ray cluster answers at 127.0.0.1:"),
             (f"127.0.0.1:{silent.getsockname()[1]}", "(no answer within 5 s)"),
             (f"ray://127.0.0.1:{http.server_address[1]}", "answers, but not as a Ray cluster"),
             (f"127.0.0.1:{grpc_port}", "answers, but not as a Ray cluster (a gRPC server, but not the Ray GCS;"),
             (f"ray://127.0.0.1:{grpc_port}", "answers, but not as a Ray cluster (a gRPC server, but not Ray Client;"),
             ("nonsense", "is not a Ray address: give auto, host:port"),
             ("auto", "no Ray cluster answers at ")]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed}")   # what `auto` finds first (Ray's own rule)
    try:
        for address, needle in cases:
            for argv in (["prepare", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"],
                         ["stats", str(cfg), "--out", str(tmp_path / "s"), "--no-progress"],
                         ["score", str(out), "--scorers", "pixels", "--overwrite"],
                         ["verify", str(out), "--model", str(tmp_path / "ckpt")]):
                t0 = time.monotonic()
                assert main([*argv, "--address", address]) == 2, (argv[0], address)
                err = _one_line(capsys)
                assert f"--address {address}" in err and needle in err, (argv[0], err)
                assert time.monotonic() - t0 < 20, (argv[0], address)
    finally:
        silent.close()
        http.shutdown()
        grpc_srv.stop(None)
    assert not (tmp_path / "o" / "job.json").exists() and not (tmp_path / "s").exists()


def test_workers_zero_and_non_numbers(prepared, capsys):
    for argv in (["prepare", str(prepared[0]), "--workers", "0"], ["stats", str(prepared[0]), "--workers", "x"],
                 ["score", str(prepared[1]), "--workers", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "argument --workers: must be a whole number >= 1" in capsys.readouterr().err


# -- a real `vlprep` process: exactly one line on stderr ---------------------------------------------

def test_the_cli_process_prints_one_line_and_exits_2(prepared, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    grpc_srv, grpc_port = _grpc_server()       # the gRPC probe of --address adds nothing to stderr either
    try:
        for argv in (["prepare", str(prepared[0]), "--out", str(afile)],
                     ["prepare", str(prepared[0]), "--out", str(tmp_path / "o"), "--address", f"ray://127.0.0.1:{_closed_port()}"],
                     ["prepare", str(prepared[0]), "--out", str(tmp_path / "o"), "--address", f"127.0.0.1:{grpc_port}"]):
            p = subprocess.run([sys.executable, "-m", "jobs.cli", *argv], capture_output=True, text=True, env=env,
                               cwd=tmp_path, timeout=120)
            assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (argv, p.stderr)
            assert p.stderr.startswith("vlprep prepare: ") and "Traceback" not in p.stderr
    finally:
        grpc_srv.stop(None)


# -- the training loader -----------------------------------------------------------------------------

def test_shard_dataset_on_a_non_out_and_on_an_out_without_samples(prepared, tmp_path):
    from pipeline.dataset import ShardDataError, ShardDataset

    with pytest.raises(FileNotFoundError, match="is .* the output of `vlprep prepare`"):
        ShardDataset(tmp_path, batch_size=2)
    empty = prepared[2]
    with pytest.raises(ShardDataError, match=r"manifest.parquet lists no samples: every record was dropped or "
                                             r"failed; see why with `vlprep stats "):
        ShardDataset(empty, batch_size=2)
    assert len(list(ShardDataset(prepared[1], batch_size=2, seed=0).loader(num_workers=0))) == 3  # 6 samples


# -- --help --------------------------------------------------------------------------------------------

def test_top_level_help_shows_a_first_run(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for line in ("vlprep demo demo_out/corpus", "vlprep prepare demo_out/corpus/demo.yaml --out demo_out/prepared",
                 "vlprep COMMAND --help"):
        assert line in text, line


# -- vlprep encode -------------------------------------------------------------------------------------

def test_encode_mistakes_are_one_line(prepared, tmp_path, capsys):
    data = prepared[0].parent / "data.jsonl"
    bad = tmp_path / "bad.json"
    bad.write_text('{"a":\n')
    for argv, needle in (([str(tmp_path / "nope.jsonl")], "nope.jsonl does not exist; give a .json"),
                         ([str(tmp_path)], "is a folder; give a .json"),
                         ([str(bad)], "bad.json is not valid JSON (Expecting value: line 2 column 1"),
                         ([str(data), "--format", "llavaa"], "--format 'llavaa' is unknown (did you mean 'llava'?)"),
                         ([str(data), "--media-root", str(tmp_path / "none")], "none is not a folder"),
                         ([str(data), "--grounding-format", "qwen5"], "--grounding-format: unknown grounding format")):
        assert main(["encode", *argv]) == 2, argv
        assert needle in _one_line(capsys), argv
    assert main(["encode", str(data), "--media-root", str(prepared[0].parent / "media"), "--limit", "2"]) == 0


# -- progress in a log ----------------------------------------------------------------------------------

def test_prepare_in_a_log_prints_progress_lines(prepared, tmp_path, capsys):
    assert main(["prepare", str(prepared[0]), "--out", str(tmp_path / "o"), "--executor", "local"]) == 0
    err = capsys.readouterr().err          # stderr is not a terminal here, as in a log file
    assert "vlprep: index 6/6 records (100%)" in err and "vlprep: encode 6/6 records (100%)" in err, err
    assert main(["score", str(tmp_path / "o"), "--scorers", "pixels", "--executor", "local"]) == 0
    err += capsys.readouterr().err
    import re                              # one printer (pipeline.progress.LineBar) for both commands
    line = r"vlprep: (\w+) 6/6 (records|samples) \(100%\), [\d,.]+ \2/s, \d+s(, [\d,]+ tok/s)?"
    assert sorted(m.group(1) for m in re.finditer(line, err)) == ["encode", "index", "score"], err
    assert re.search(r"vlprep: score 6/6 samples \(100%\), [\d,.]+ samples/s, \d+s, [\d,]+ tok/s\n", err), err
    assert main(["prepare", str(prepared[0]), "--out", str(tmp_path / "o2"), "--executor", "local",
                 "--no-progress"]) == 0
    assert "vlprep: encode" not in capsys.readouterr().err
    assert main(["score", str(tmp_path / "o"), "--scorers", "pixels", "--executor", "local", "--overwrite",
                 "--no-progress"]) == 0                # --no-progress: score as prepare and stats
    assert "vlprep: score" not in capsys.readouterr().err


def test_line_progress_is_throttled():
    import io

    from pipeline.progress import LineBar

    buf = io.StringIO()
    bar = LineBar(every_s=3600, file=buf)
    task = bar.add_task("encode", total=1000)
    for _ in range(999):
        bar.advance(task, 1)
    assert buf.getvalue() == ""                      # nothing until the interval or the end
    bar.advance(task, 1)
    assert buf.getvalue().startswith("vlprep: encode 1,000/1,000 records (100%), ")


def test_the_shared_line_printer_writes_these_lines(capsys):
    import io

    from pipeline.progress import LineBar, progress_count

    clock = iter([100.0, 101.0, 104.0, 104.0])           # add_task, advance, advance, the end
    buf = io.StringIO()
    bar = LineBar(every_s=2, file=buf, unit="samples", clock=lambda: next(clock))
    task = bar.add_task("score", total=2500)
    bar.update(task, postfix="1,234 tok/s")
    bar.advance(task, 1000)                              # 1 s: inside the interval, nothing
    bar.advance(task, 1000)                              # 4 s: a line
    bar.advance(task, 500)                               # the end: a line
    assert buf.getvalue().splitlines() == ["vlprep: score 2,000/2,500 samples (80%), 500.0 samples/s, 4s, 1,234 tok/s",
                                           "vlprep: score 2,500/2,500 samples (100%), 625.0 samples/s, 4s, 1,234 tok/s"]
    with progress_count("score", 3, "lines", unit="samples") as count:   # what `vlprep score` prints in a log
        count.advance(3, "7 tok/s")
    assert capsys.readouterr().err.startswith("vlprep: score 3/3 samples (100%), ")
    with progress_count("score", 3, False, unit="samples") as count:     # disabled: nothing
        count.advance(3, "7 tok/s")
    assert capsys.readouterr().err == ""


def test_score_on_a_terminal_shows_the_bar_prepare_shows(capsys):
    """One bar style on a terminal: `vlprep score`'s count is a rich bar like prepare's (its unit and
    postfix), not a tqdm bar of its own."""
    from rich.progress import Progress

    from pipeline.progress import progress_bar, progress_count

    with progress_bar(True, unit="samples") as bar:
        assert isinstance(bar, Progress)
    with progress_count("score", 3, True, unit="samples") as count:
        assert isinstance(count.bar, Progress)
        count.advance(3, "7 tok/s")
    err = capsys.readouterr().err
    assert "score" in err and "3/3 samples" in err and "7 tok/s" in err, err


def _one_reply_listener(reply: bytes):
    """A port that answers every connection with `reply` (e.g. an HTTP/1 service such as a dashboard)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_address_check_tells_http_from_grpc_and_skips_the_handshake_under_tls(monkeypatch):
    from pipeline.cluster import ClusterUnreachable, check_ray_address

    http1 = _one_reply_listener(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
    settings = _one_reply_listener(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x00\x40\x00\x00")  # an h2 SETTINGS
    try:
        with pytest.raises(ClusterUnreachable, match=r"answers, but not as a Ray cluster \(it speaks HTTP/1;"):
            check_ray_address(f"127.0.0.1:{http1.getsockname()[1]}")
        check_ray_address(f"ray://127.0.0.1:{settings.getsockname()[1]}")     # a gRPC server: passes
        monkeypatch.setenv("RAY_USE_TLS", "1")
        check_ray_address(f"127.0.0.1:{http1.getsockname()[1]}")             # TLS: only TCP is checked
    finally:
        http1.close()
        settings.close()


def test_address_check_names_servers_that_do_not_speak_http2():
    """A port held by a service that is not HTTP/2 (an SSH banner, a Redis error, a close without a byte):
    one line at the handshake, where `ray.init` waited 30 s (ray://) to minutes (the GCS); a refused
    connection says why without a time-out it did not wait for."""
    from pipeline.cluster import ClusterUnreachable, check_ray_address

    listeners = [(_one_reply_listener(b"SSH-2.0-OpenSSH_9.6\r\n"), r"it does not speak HTTP/2: it replies b'SSH-2.0-O'"),
                 (_one_reply_listener(b"-ERR unknown command 'PRI'\r\n"), r"it does not speak HTTP/2: it replies b'-ERR unkn'"),
                 (_one_reply_listener(b"+OK\r\n"), r"it does not speak HTTP/2: it replies b'\+OK\\r\\n'"),
                 (_one_reply_listener(b""), r"it closes the connection without a reply")]
    try:
        for srv, why in listeners:
            for form in ("", "ray://"):
                with pytest.raises(ClusterUnreachable, match=r"answers, but not as a Ray cluster \(" + why + ";"):
                    check_ray_address(f"{form}127.0.0.1:{srv.getsockname()[1]}")
    finally:
        for srv, _ in listeners:
            srv.close()
    closed = _closed_port()
    with pytest.raises(ClusterUnreachable) as exc:
        check_ray_address(f"127.0.0.1:{closed}")
    assert f"no Ray cluster answers at 127.0.0.1:{closed} (Connection refused); start the cluster" in str(exc.value)
