"""#15: report.html shows samples and tokens per category (coarse and fine), before and after
selection — the numbers `vlprep select` prints and writes to selection.json (filters.reward.mixing.
category_table, called by the report rather than recomputed)."""
from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.cli import main

COARSE = ["general_vqa"] * 20 + ["ocr_document"] * 12 + ["chart_table"] * 8
FINE = (["natural_image_qa", "knowledge_vqa"] * 10 + ["receipt_invoice", "document_page", "scene_text"] * 4
        + ["chart", "table"] * 4)


def _prepared(tmp_path, n=40):
    out = tmp_path / "out"
    (out / "scores").mkdir(parents=True)
    ids = [f"x{i:03d}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "unit": ["u0"] * n, "shard": ["shards/u0.tar"] * n,
                             "preset": ["qwen2.5-vl"] * n,
                             "n_tokens": pa.array([100 + 7 * i for i in range(n)], pa.int64())}),
                   out / "manifest.parquet")
    pq.write_table(pa.table({"id": ids, "source": ["a"] * n, "record_index": pa.array(range(n), pa.int64()),
                             "unit": ["u0"] * n, "status": ["kept"] * n, "stage": ["write"] * n,
                             "rule": pa.array([None] * n, pa.string()), "value": pa.array([None] * n, pa.float64()),
                             "message": pa.array([None] * n, pa.string())}), out / "ledger.parquet")
    # scores in another order than the manifest, and one sample without a fine label
    order = np.random.default_rng(0).permutation(n)
    fine = [None if i == 5 else FINE[i] for i in range(n)]
    pq.write_table(pa.table({"id": [ids[i] for i in order], "category.coarse": [COARSE[i] for i in order],
                             "category.fine": pa.array([fine[i] for i in order], pa.string()),
                             "vlm.visual_gain": np.linspace(-1, 1, n)[order],
                             "text.qa_relevance": np.where(order % 10 == 0, 0.0, 0.5),
                             "verify.answer": [f"answer {i}" for i in order]}), out / "scores" / "u0.parquet")
    return out, ids, fine


def _html_table(page: str, column: str) -> list[list[str]]:
    m = re.search(r"per <b>" + re.escape(column) + r"</b></p><table>(.*?)</table>", page)
    assert m, f"no table for {column}"
    return [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in re.findall(r"<tr>(.*?)</tr>", m.group(1))]


def _num(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_report_shows_the_select_category_table(tmp_path, capsys):
    out, ids, fine = _prepared(tmp_path)
    tokens = {sid: 100 + 7 * i for i, sid in enumerate(ids)}
    assert main(["select", str(out), "--rule", "text.qa_relevance > 0.1", "--keep-top", "50%",
                 "--rank", "vlm.visual_gain", "--cap", "ocr_document=3"]) == 0
    printed = capsys.readouterr().out
    assert main(["stats", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert '<section id="categories"><h2>Per category</h2>' in page
    summary = json.loads((out / "selection" / "selection.json").read_text())["mix"]["categories"]
    # the coarse table holds exactly the numbers select wrote (and printed)
    rows = _html_table(page, "category.coarse")
    assert rows[0] == ["label", "scored samples", "scored tokens", "after rules samples", "after rules tokens",
                       "selected samples", "selected tokens", "selected token share"]
    body = {r[0]: [_num(c) for c in r[1:7]] for r in rows[1:-1]}
    assert set(body) == set(summary) == {"general_vqa", "ocr_document", "chart_table"}
    for label, cells in body.items():
        s = summary[label]
        assert cells == [s["scored"]["samples"], s["scored"]["tokens"], s["after_rules"]["samples"],
                         s["after_rules"]["tokens"], s["selected"]["samples"], s["selected"]["tokens"]]
        line = next(ln for ln in printed.splitlines() if ln.strip().startswith(label))
        assert [int(v.replace(",", "")) for v in line.split()[1:]] == cells
    assert body["ocr_document"][4] == 3 and rows[-1][0] == "<b>all</b>" and _num(rows[-1][5]) == 16
    # the fine table, counted here by hand from the files
    chosen = set(pq.read_table(out / "selection" / "manifest.parquet").column("id").to_pylist())
    led = pq.read_table(out / "selection" / "ledger.parquet").to_pylist()
    by_rule = {r["id"] for r in led if r["stage"] == "select" and not r["rule"].startswith("quota")}
    assert len(by_rule) == 4
    want = {}
    for sid, label in zip(ids, fine):
        w = want.setdefault(label or "(none)", [0] * 6)
        for k, inside in enumerate((True, sid not in by_rule, sid in chosen)):
            if inside:
                w[2 * k] += 1
                w[2 * k + 1] += tokens[sid]
    got = {r[0]: [_num(c) for c in r[1:7]] for r in _html_table(page, "category.fine")[1:-1]}
    assert got == want and got["(none)"][0] == 1
    assert "verify.answer" not in page  # free text is no label column
    stats = json.loads((out / "stats.json").read_text())
    assert stats["categories"]["category.coarse"]["ocr_document"] == summary["ocr_document"]
    # the report of the selection itself shows the same table (its parent's rows are what select chose from)
    assert main(["stats", str(out / "selection")]) == 0
    sel_page = (out / "selection" / "report.html").read_text()
    assert _html_table(sel_page, "category.coarse") == rows
    terminal = capsys.readouterr().out
    assert "per category.coarse" in terminal and "selected" in terminal


def test_report_without_a_selection_counts_the_scored_rows(tmp_path):
    out, ids, fine = _prepared(tmp_path)
    assert main(["stats", str(out)]) == 0
    rows = _html_table((out / "report.html").read_text(), "category.coarse")
    assert rows[0] == ["label", "scored samples", "scored tokens", "scored token share"]
    body = {r[0]: (_num(r[1]), _num(r[2])) for r in rows[1:-1]}
    assert body == {c: (COARSE.count(c), sum(100 + 7 * i for i in range(40) if COARSE[i] == c))
                    for c in set(COARSE)}
    assert rows[1][3] == f"{body[rows[1][0]][1] / sum(t for _, t in body.values()):.1%}"


def test_report_without_category_scores_has_no_category_section(tmp_path):
    out, *_ = _prepared(tmp_path)
    t = pq.read_table(out / "scores" / "u0.parquet")
    pq.write_table(t.select(["id", "vlm.visual_gain"]), out / "scores" / "u0.parquet")
    assert main(["stats", str(out)]) == 0
    assert 'id="categories"' not in (out / "report.html").read_text()
