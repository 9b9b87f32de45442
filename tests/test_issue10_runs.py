"""Issue #10: a failed or interrupted run never poisons OUT; a broken setup never passes silently;
what the commands print is right (markup, pads, ids, sizes, deciles)."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import main

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def _conv(i: int, image: str | None = None, rec_id: str | None = None) -> dict:
    rec = {"messages": [{"role": "user", "content": ("<image>" if image else "") + f"What is shown in picture {i}?"},
                        {"role": "assistant", "content": f"A small red square, number {i}."}]}
    if image:
        rec["images"] = [image]
    if rec_id:
        rec["id"] = rec_id
    return rec


def _corpus(tmp_path: Path, n: int = 12, media_root: str = "media") -> Path:
    (tmp_path / "media").mkdir(exist_ok=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "media" / "red.png")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(_conv(i, "red.png")) + "\n" for i in range(n)))
    (tmp_path / "job.yaml").write_text(f"sources:\n  - path: data.jsonl\n    media_root: {media_root}\nunit_size: 4\n")
    return tmp_path / "job.yaml"


def _prepare(cfg: Path, out: Path, *extra: str) -> int:
    return main(["prepare", str(cfg), "--out", str(out), "--executor", "local", "--no-progress", *extra])


# -- job.json only once the job runs; refused configs name the keys --------------------------------

def test_a_run_failing_on_its_sources_writes_no_job_json_and_the_fixed_rerun_just_works(tmp_path, capsys):
    cfg = _corpus(tmp_path)
    out = tmp_path / "out"
    assert _prepare(cfg, out, "--set", "sources.0.path=nope.jsonl") == 2
    assert "matches no file" in capsys.readouterr().err
    assert not (out / "job.json").exists()
    assert _prepare(cfg, out) == 0
    assert (out / "job.json").exists()


def test_a_changed_config_is_refused_naming_the_keys_that_differ(tmp_path, capsys):
    cfg = _corpus(tmp_path)
    out = tmp_path / "out"
    assert _prepare(cfg, out) == 0
    capsys.readouterr()
    assert _prepare(cfg, out, "--set", "video.fps=1", "--set", "max_length=4096") == 2
    err = capsys.readouterr().err
    assert "video.fps: None -> 1" in err and "max_length: None -> 4096" in err and err.count("\n") == 1, err
    assert _prepare(cfg, out, "--set", "ray.workers=1") == 0   # where it runs may change


def test_ctrl_c_prints_one_line_exits_130_and_the_same_command_resumes(tmp_path):
    # 2 000 records in 500 units: after the first unit's part appears, seconds of work remain
    cfg = _corpus(tmp_path, n=2000)
    out = tmp_path / "out"
    cmd = [PY, "-m", "jobs.cli", "prepare", str(cfg), "--out", str(out), "--executor", "local", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # the child gets the default SIGINT even when the suite runs with SIGINT ignored (a shell's `cmd &`
    # starts background jobs that way, and an ignored SIGINT is inherited across exec)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while not list((out / "parts").rglob("*.parquet")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "the job ended before it could be interrupted"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert "interrupted" in err and "run the same command again to resume" in err
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "already done" in r.stdout and "inputs 2000 == kept 2000" in r.stdout, r.stdout


# -- broken setups are said, up front and in the summary ------------------------------------------

def test_a_missing_media_root_warns_before_and_after_and_max_error_share_fails_the_job(tmp_path, capsys):
    cfg = _corpus(tmp_path, media_root="no_such_folder")
    out = tmp_path / "out"
    assert _prepare(cfg, out) == 0
    cap = capsys.readouterr()
    assert "sources.0.media_root 'no_such_folder' is not a folder" in cap.err      # up front
    assert "12 of 12 records of data.jsonl ended error at clean/media_missing" in cap.out.replace("\n", " ")
    assert _prepare(cfg, out, "--set", "max_error_share=0.5") == 1
    assert "above max_error_share=0.5" in capsys.readouterr().out.replace("\n", " ")


def test_an_empty_source_is_said(tmp_path, capsys):
    cfg = _corpus(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    cfg.write_text(cfg.read_text() + "  - path: empty.jsonl\n".replace("  - ", "") if False else
                   "sources:\n  - path: data.jsonl\n    media_root: media\n  - path: empty.jsonl\nunit_size: 4\n")
    assert _prepare(cfg, tmp_path / "out") == 0
    assert "source empty.jsonl holds no records" in capsys.readouterr().err


# -- what the commands print ----------------------------------------------------------------------

def test_terminal_tables_print_user_strings_with_brackets_verbatim():
    from rich.console import Console

    from pipeline.report.terminal import print_compare, print_report

    src = "data/[/path/x.json]"
    stats = {"kind": "prepared", "path": "/runs/[/a/b]", "headline": {"kept": 3},
             "accounting": {"balanced": True, "by_rule": [
                 {"status": "dropped", "stage": "filter", "rule": "[/bold]x", "count": 1, "share": 0.5,
                  "examples": [{"id": "[/red]id"}]}]},
             "sources": [{"source": src, "inputs": 1}, {"source": "[b]two[/b]", "inputs": 2}],
             "scores": {"[/s].x": {"keep_if": ">=", "threshold_at_decile": [
                 {"decile": 0, "threshold": 0.1, "kept": 1, "kept_share": 1.0, "kept_tokens": 5}]}}}
    buf = io.StringIO()
    print_report(stats, Console(file=buf, width=300))
    text = buf.getvalue()
    for s in (src, "[b]two[/b]", "[/bold]x", "[/red]id", "[/s].x", "/runs/[/a/b]"):
        assert s in text, s
    cmp = {"names": ["[/a]", "b"], "changed": 1, "rows": [
        {"metric": f"source[{src}].kept", "a": 1, "b": 2, "delta": 1, "rel_change": 1.0}]}
    buf = io.StringIO()
    print_compare(cmp, Console(file=buf, width=300))
    assert f"source[{src}].kept" in buf.getvalue() and "A = [/a]" in buf.getvalue()


def test_encode_show_text_shortens_every_pad_run_like_inspect(tmp_path, capsys):
    Image.new("RGB", (224, 224), (10, 200, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (280, 196), (200, 10, 30)).save(tmp_path / "b.png")
    rec = {"id": "two", "images": ["a.png", "b.png"], "messages": [
        {"role": "user", "content": "<image><image>Compare [the] images."},
        {"role": "assistant", "content": "First: green. Second: red."}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    assert main(["encode", str(tmp_path / "d.jsonl"), "--show-text"]) == 0
    out = capsys.readouterr().out
    assert "<|image_pad|><|image_pad|>" not in out
    assert "<|image_pad|>×64" in out and "<|image_pad|>×70" in out   # 224²/28² and 280x196/28²
    assert "Compare [the] images." in out                             # ChatML printed without markup


def test_inspect_of_a_dropped_id_shows_its_ledger_row(tmp_path, capsys):
    cfg = _corpus(tmp_path)
    with open(tmp_path / "data.jsonl", "a") as f:
        f.write(json.dumps(_conv(99, "missing.png", rec_id="gone-1")) + "\n")
    out = tmp_path / "out"
    assert _prepare(cfg, out) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--id", "gone-1"]) == 0
    text = capsys.readouterr().out
    assert "sample gone-1 is not in the shards: error at clean/media_missing" in text and "missing.png" in text


def test_read_errors_keep_the_records_own_id(tmp_path, capsys):
    cfg = _corpus(tmp_path)
    bad = {"id": "bad-placeholder-count", "images": ["red.png"], "messages": [
        {"role": "user", "content": "<image><image>Two?"}, {"role": "assistant", "content": "One."}]}
    with open(tmp_path / "data.jsonl", "a") as f:
        f.write(json.dumps(bad) + "\n")
    out = tmp_path / "out"
    assert _prepare(cfg, out) == 0
    rows = pq.read_table(out / "ledger.parquet").to_pylist()
    row = [r for r in rows if r["status"] == "error"]
    assert [(r["id"], r["stage"], r["rule"]) for r in row] == [("bad-placeholder-count", "read", "placeholder_mismatch")]


def test_an_image_cut_inside_its_header_is_called_truncated(tmp_path):
    from processors.errors import ImageDecodeError
    from processors.image import load_image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[:20])
    with pytest.raises(ImageDecodeError, match=r"truncated or corrupt JPEG file") as e:
        load_image(str(tmp_path / "t.jpg"))
    assert "not a recognised image format" not in str(e.value)
    (tmp_path / "x.jpg").write_bytes(b"hello, not an image at all")
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        load_image(str(tmp_path / "x.jpg"))


def test_sizes_in_messages_are_width_x_height_and_say_so():
    from filters.base import FilterContext, build_filters
    from processors.formats import parse_record
    from processors import smart_resize

    rule = [r for r in build_filters({"box_in_image": 0}) if getattr(r, "name", "") == "box_in_image"][0]
    s = parse_record({"images": ["a.jpg"], "messages": [{"role": "user", "content": "<image>Where?"},
                                                        {"role": "assistant", "content": "There."}]}, source="x", index=0)
    v = rule(s, FilterContext(image_sizes=[(480, 640)], boxes=[[(600.0, 10.0, 700.0, 50.0)]]))
    assert not v.keep and "640x480 (WxH)" in v.reason, v.reason
    with pytest.raises(ValueError, match=r"of a 6000x20 \(WxH\) image"):
        smart_resize(20, 6000)


def test_stats_of_a_selection_counts_only_selected_samples_and_lower_is_better_keeps_below(tmp_path, capsys,
                                                                                          monkeypatch):
    import pyarrow as pa

    from pipeline.report.prepared import build_prepared_report

    from test_stats_prepared import MANIFEST_SCHEMA, _manifest_rows

    rows = _manifest_rows()                       # 40 kept samples s000..s039
    out = tmp_path / "out"
    (out / "scores").mkdir(parents=True)
    ledger = [{"id": r["id"], "source": r["source"], "record_index": r["record_index"], "unit": "u0",
               "status": "kept", "stage": "write", "rule": "", "value": None, "message": ""} for r in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), out / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(ledger), out / "ledger.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": r["id"], "pixels.blank": k / 39, "text.qa_relevance": k / 39}
                                         for k, r in enumerate(rows)]), out / "scores" / "u0.parquet")
    sel = out / "selection"                       # as `vlprep select` writes it: 15 kept
    sel.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:15], schema=MANIFEST_SCHEMA), sel / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist([dict(r, status="dropped", stage="select") if i >= 15 else r
                                         for i, r in enumerate(ledger)]), sel / "ledger.parquet")
    stats = build_prepared_report(sel).stats
    assert stats["headline"]["kept"] == 15
    blank, rel = stats["scores"]["pixels.blank"], stats["scores"]["text.qa_relevance"]
    assert blank["count"] == 15 and blank["not_in_manifest"] == 25
    assert blank["keep_if"] == "<=" and rel["keep_if"] == ">="
    rel_by = {d["decile"]: d["kept"] for d in rel["threshold_at_decile"]}
    blank_by = {d["decile"]: d["kept"] for d in blank["threshold_at_decile"]}
    # the 15 selected scores are 0/39 .. 14/39: p10 = 1.4/39, p90 = 12.6/39
    assert (rel_by[10], rel_by[90]) == (13, 2)                                 # >= p10 keeps 2..14
    assert (blank_by[10], blank_by[90]) == (2, 13)                             # <= p10 keeps 0, 1
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["stats", str(sel), "--no-html"]) == 0
    text = capsys.readouterr().out
    assert "score pixels.blank: keep if ≤ decile (lower is better)" in text
    assert "score text.qa_relevance: keep if ≥ decile" in text


def test_score_progress_in_a_log_is_plain_lines_not_a_bar(tmp_path, capsys):
    cfg = _corpus(tmp_path, n=3)
    out = tmp_path / "out"
    assert _prepare(cfg, out) == 0
    capsys.readouterr()
    had = os.environ.get("TQDM_DISABLE")
    try:
        assert main(["score", str(out), "--scorers", "text,pixels", "--device", "cpu"]) == 0   # stderr: not a terminal
    finally:   # what the command set for its own process
        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar()
        if had is None:
            os.environ.pop("TQDM_DISABLE", None)
    err = capsys.readouterr().err
    assert "\r" not in err and "vlprep: score 3/3 samples (100%), " in err, err
    assert "Loading weights" not in err and "it/s]" not in err, err     # nor the model loader's bar


@pytest.mark.slow
def test_prepare_on_the_embedded_ray_prints_no_token_notice(tmp_path):
    cfg = _corpus(tmp_path, n=4)
    r = subprocess.run([PY, "-m", "jobs.cli", "prepare", str(cfg), "--out", str(tmp_path / "out"), "--workers", "1",
                        "--no-progress"], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Token authentication" not in r.stderr, r.stderr
    assert "inputs 4 == kept 4" in r.stdout


def test_folders_left_by_a_run_stopped_before_job_json_do_not_block_the_rerun(tmp_path):
    cfg = _corpus(tmp_path)
    out = tmp_path / "out"
    for d in ("shards", "parts/ledger", "parts/index"):
        (out / d).mkdir(parents=True)
    assert _prepare(cfg, out) == 0
    (out / "job.json").unlink()
    with pytest.raises(Exception, match="has shards/parts but no job.json"):   # real output stays protected
        from pipeline.config import JobConfig
        from pipeline.runner import run_job

        run_job(JobConfig.from_yaml(cfg), out=out, executor="local", progress=False)
