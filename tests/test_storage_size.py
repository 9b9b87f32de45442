"""Issue 11: bytes in / bytes out. The pre-flight's predicted shard bytes are within ±15 % of what
`vlprep prepare` then writes (demo corpus, generated photo corpus); prepare records both per sample and
prints them; the report shows them."""
from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import JobConfig
from pipeline.runner import run_job
from pipeline.sizes import shard_files_bytes

ROOT = Path(__file__).resolve().parent.parent


def _photo_like():
    spec = importlib.util.spec_from_file_location("bench_images", ROOT / "bench" / "images.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.photo_like


def _prepare_and_predict(cfg_path: Path, out: Path):
    from pipeline.report import build_report

    result = run_job(JobConfig.from_yaml(cfg_path), out=out, executor="local", progress=False)
    assert result.ok
    pre = build_report(cfg_path, executor="threads")
    return result, pre


def _check(result, pre, out: Path, tolerance: float = 0.15) -> float:
    actual = {r["id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    predicted = {r["id"]: r for r in pre.series["manifest"].to_pylist()}
    common = sorted(set(actual) & set(predicted))
    assert len(common) >= 0.8 * len(actual)
    p = sum(predicted[i]["sample_bytes"] for i in common)
    a = sum(actual[i]["sample_bytes"] for i in common)
    # bytes in are read, not predicted: the same file sizes on both sides
    assert [predicted[i]["media_bytes"] for i in common] == [actual[i]["media_bytes"] for i in common]
    # what the writer reports per sample adds up to the shard files (less the tar end blocks)
    on_disk = shard_files_bytes(out)
    assert 0 <= on_disk - sum(r["sample_bytes"] for r in actual.values()) <= 10240 * len(list((out / "shards").glob("*.tar")))
    err = p / a - 1
    print(f"size prediction: {p} predicted vs {a} written over {len(common)} samples ({err:+.2%})")
    assert abs(err) <= tolerance, f"predicted {p} vs written {a} bytes ({err:+.1%})"
    return err


def test_demo_corpus_prediction_and_summary(tmp_path, capsys):
    from jobs.demo import DEMO_YAML
    from pipeline.demo_corpus import build_demo_corpus
    from pipeline.progress import render_summary
    from pipeline.report import build_report

    build_demo_corpus(tmp_path / "demo")
    (tmp_path / "demo" / "demo.yaml").write_text(DEMO_YAML)
    result, pre = _prepare_and_predict(tmp_path / "demo" / "demo.yaml", tmp_path / "out")
    err = _check(result, pre, tmp_path / "out")
    print(f"demo corpus size prediction error {err:+.2%}")
    st = pre.stats["storage"]
    assert st["predicted"] and st["codec"] == "zstd-delta" and st["calibration"]["image .jpg"]["items"] >= 1
    assert pre.stats["headline"]["shard_bytes_out"] == st["sample_bytes_out"]
    rep = build_report(tmp_path / "out").stats
    assert rep["storage"]["shard_files_bytes"] == shard_files_bytes(tmp_path / "out")
    assert rep["headline"]["shard_bytes_out"] == shard_files_bytes(tmp_path / "out")
    assert rep["storage"]["media_bytes_in"] == sum(pq.read_table(tmp_path / "out" / "manifest.parquet")
                                                   .column("media_bytes").to_pylist())
    capsys.readouterr()
    render_summary(result)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("bytes:")]
    assert line and "media in" in line[0] and "shards out" in line[0]
    with capsys.disabled():
        print(f"\ndemo corpus size prediction error {err:+.2%}; {line[0]}")


def test_generated_photo_corpus_prediction(tmp_path):
    photo_like = _photo_like()
    media = tmp_path / "media"
    media.mkdir()
    rows = []
    sizes = [(1024, 768), (800, 600), (640, 960), (1280, 720), (500, 500)]
    for i in range(20):
        w, h = sizes[i % len(sizes)]
        Image.fromarray(photo_like(w, h, 500 + i)).save(media / f"p{i:02d}.jpg", quality=int(80 + i % 3 * 7))
        rows.append({"id": f"p{i:02d}", "image": f"p{i:02d}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the photo."},
            {"from": "gpt", "value": f"Photo {i}: soft colour fields with a fine grain."}]})
    (tmp_path / "photos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "job.yaml").write_text("sources:\n  - path: photos.jsonl\n    media_root: media\nunit_size: 8\n")
    result, pre = _prepare_and_predict(tmp_path / "job.yaml", tmp_path / "out")
    _check(result, pre, tmp_path / "out")
    # format 2 stores one frame per image: well under half of format 1's two copies of raw pixels
    m = pq.read_table(tmp_path / "out" / "manifest.parquet")
    raw_v1 = sum(int(r) * 1176 for r in m.column("pixel_rows").to_pylist())
    assert sum(m.column("sample_bytes").to_pylist()) < 0.3 * raw_v1
