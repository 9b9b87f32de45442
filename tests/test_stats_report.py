"""The outputs of `vlprep stats`: stats.json, a self-contained report.html, terminal tables, --compare."""
from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import main
from test_stats_prepared import out_dir  # noqa: F401  (the hand-written OUT dir fixture)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag in ("script", "link") or (tag == "img" and not a["src"].startswith("data:")):
            self.external.append((tag, a))


def _check_html(path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    assert not p.external, f"report.html must be self-contained, found {p.external}"
    for src in p.imgs:
        m = re.fullmatch(r"data:image/png;base64,([A-Za-z0-9+/=]+)", src)
        assert m, src[:60]
        img = Image.open(io.BytesIO(base64.b64decode(m.group(1))))
        img.load()  # decodes every pixel: a truncated PNG fails here
        assert img.format == "PNG" and img.width > 100 and img.height > 50
    return p


def test_cli_prepared_outputs(out_dir, tmp_path, capsys):  # noqa: F811
    out, rows, _ = out_dir
    rc = main(["stats", str(out), "--out", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "min_side" in printed and "headline" in printed
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["kind"] == "prepared" and stats["headline"]["kept"] == 40
    parsed = _check_html(tmp_path / "report.html")
    # accounting, tokens, image sizes, video, boxes, sources and two score plots
    assert len(parsed.imgs) >= 8
    assert parsed.tags.count("table") >= 5


def test_cli_json_stdout(out_dir, tmp_path, capsys):  # noqa: F811
    out, _, _ = out_dir
    assert main(["stats", str(out), "--out", str(tmp_path), "--json", "--no-html"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["accounting"]["error"] == 2
    assert not (tmp_path / "report.html").exists()


def test_unbalanced_exit_status(out_dir, tmp_path):  # noqa: F811
    out, _, _ = out_dir
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pq.read_table(out / "manifest.parquet"), bad / "manifest.parquet")
    ledger = pq.read_table(out / "ledger.parquet")
    pq.write_table(ledger.slice(1), bad / "ledger.parquet")      # one kept sample lost from the ledger
    assert main(["stats", str(bad), "--out", str(tmp_path / "r"), "--no-html"]) == 3


def test_compare(out_dir, tmp_path, capsys):  # noqa: F811
    out, rows, _ = out_dir
    # B: the same run with the min_side rule relaxed → two of its drops become kept samples
    b = tmp_path / "b"
    b.mkdir()
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    for r in ledger:
        if r["id"] in ("d0", "d1"):
            r.update(status="kept", stage="write", rule="", value=None)
    man = pq.read_table(out / "manifest.parquet")
    extra = [dict(rows[0], id="d0", source="a.jsonl"), dict(rows[1], id="d1", source="a.jsonl")]
    import pyarrow as pa

    pq.write_table(pa.concat_tables([man, pa.Table.from_pylist(extra, schema=man.schema)]), b / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(ledger), b / "ledger.parquet")
    rc = main(["stats", "--compare", str(out), str(b), "--out", str(tmp_path / "cmp")])
    assert rc == 0
    doc = json.loads((tmp_path / "cmp" / "stats.json").read_text())
    m = {r["metric"]: r for r in doc["rows"]}
    assert m["headline.kept"]["a"] == 40 and m["headline.kept"]["b"] == 42 and m["headline.kept"]["delta"] == 2
    assert m["dropped.filter.min_side"]["delta"] == -2
    assert m["tokens.total.sum"]["delta"] == rows[0]["n_tokens"] + rows[1]["n_tokens"]
    assert m["source[a.jsonl].kept"]["delta"] == 2 and m["source[b.json].kept"]["delta"] == 0
    parsed = _check_html(tmp_path / "cmp" / "report.html")
    assert len(parsed.imgs) == 1
    assert "headline.kept" in capsys.readouterr().out
    # A stats.json from before loads as a side too (no plots, same numbers)
    rc = main(["stats", "--compare", str(tmp_path / "cmp" / ".." / "cmp" / "stats.json"), str(b),
               "--out", str(tmp_path / "cmp2"), "--no-html"])
    assert rc == 0


def test_preflight_cli_html(tmp_path):
    from media_factory import make_image

    make_image(tmp_path / "x.png", 300, 200)
    (tmp_path / "d.json").write_text(json.dumps([
        {"messages": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Ho"}],
         "images": ["x.png"]}] * 3))
    assert main(["stats", str(tmp_path / "d.json"), "--out", str(tmp_path / "r")]) == 0
    stats = json.loads((tmp_path / "r" / "stats.json").read_text())
    # 300x200 → round(200/28)=7, round(300/28)=11 → 7*11 = 77 tokens per image, 3 samples
    assert stats["kind"] == "preflight" and stats["tokens"]["image"]["sum"] == 3 * 77
    _check_html(tmp_path / "r" / "report.html")


def test_bad_path_is_a_clear_error(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nothing.jsonl"), "--out", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err
