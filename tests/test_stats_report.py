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
    """imgs, tags, external references, and per <section id=…> the order of what it holds."""

    def __init__(self):
        super().__init__()
        self.imgs, self.tags, self.external = [], [], []
        self.sections: dict[str, list[str]] = {}  # id → ["h2", "take", "img", "details", "table", …]
        self._section = None
        self._details = 0
        self.tables_outside_details = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag in ("script", "link") or (tag == "img" and not a["src"].startswith("data:")):
            self.external.append((tag, a))
        if tag == "a" and not a.get("href", "").startswith("#"):
            self.external.append((tag, a))
        if tag == "section":
            self._section = a["id"]
            self.sections[self._section] = []
        if tag == "details":
            self._details += 1
        if tag == "table" and not self._details:
            self.tables_outside_details += 1
        if self._section is not None and tag in ("h2", "img", "details", "table", "p"):
            kind = "take" if tag == "p" and a.get("class") == "take" else tag
            if kind != "p":
                self.sections[self._section].append(kind)

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        if tag == "details":
            self._details -= 1


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
    # one plot per section, all score columns in one grid
    assert len(parsed.imgs) == 7
    assert parsed.tags.count("table") >= 5
    _check_sections(parsed, ["accounting", "tokens", "images", "videos", "boxes", "sources", "scores"])


def _check_sections(parsed: _Collect, expected: list[str]) -> None:
    """Each section: heading, takeaway sentence, its plot, then its tables folded in <details>."""
    assert list(parsed.sections) == expected
    for sid, seq in parsed.sections.items():
        assert seq[:2] == ["h2", "take"], (sid, seq)
        assert seq.count("img") == 1, (sid, seq)
        assert "details" in seq and "table" in seq, (sid, seq)
        assert seq.index("img") < seq.index("details") < seq.index("table"), (sid, seq)
    assert parsed.tables_outside_details == 0  # every percentile table is folded
    assert "summary" in parsed.tags


def test_report_takeaways(out_dir, tmp_path):  # noqa: F811
    out, _, _ = out_dir
    assert main(["stats", str(out), "--out", str(tmp_path), "--no-html"]) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    from pipeline.report.html import render_report

    page = render_report(stats, [])  # no plots: sections, sentences and tables still there
    takes = dict(re.findall(r'<section id="(\w+)"><h2>.*?</h2><p class="take">(.*?)</p>', page))
    assert set(takes) == {"accounting", "tokens", "images", "videos", "boxes", "sources", "scores"}
    acc = stats["accounting"]
    assert f"<b>{acc['kept']:,} of {acc['inputs']:,}</b> inputs kept" in takes["accounting"]
    tot = stats["tokens"]["total"]
    assert f"p95 <b>{int(tot['p95']):,}</b>" in takes["tokens"] or f"p95 <b>{tot['p95']:,.0f}</b>" in takes["tokens"]
    if stats["tokens"].get("visual_share_of_total") is not None:
        assert f"{stats['tokens']['visual_share_of_total']:.0%}" in takes["tokens"]
    assert f"<b>{stats['images']['total']:,}</b> images" in takes["images"]
    assert f"<b>{len(stats['scores'])}</b> score column" in takes["scores"]


def test_figures_sections_and_style(out_dir):  # noqa: F811
    from pipeline.report import build_report, figures

    out, _, _ = out_dir
    report = build_report(out)
    figs = figures.all_figures(report)
    assert [f.section for f in figs] == ["accounting", "tokens", "images", "videos", "boxes", "sources", "scores"]
    for f in figs:
        title, png = f  # still unpacks as (title, png)
        img = Image.open(io.BytesIO(png))
        img.load()
        # 8.8 in at 110 dpi, less the tight bbox trim: readable without scaling, never wider than the page
        assert 300 <= img.width <= 1100, (f.section, img.size)
    scores = [f for f in figs if f.section == "scores"]
    assert len(scores) == 1  # small multiples, not one figure per column


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
    parsed = _check_html(tmp_path / "r" / "report.html")
    assert {"accounting", "tokens", "images"} <= set(parsed.sections)
    for sid in ("tokens", "images"):
        seq = parsed.sections[sid]
        assert seq.index("img") < seq.index("details") < seq.index("table"), (sid, seq)


def test_bad_path_is_a_clear_error(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nothing.jsonl"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
