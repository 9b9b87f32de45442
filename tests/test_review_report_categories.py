"""Review of #15: the per-category report with a label column but no rows (nothing kept) draws no table."""
from __future__ import annotations

import pyarrow as pa

from pipeline.report.html import take_categories
from pipeline.report.prepared import category_stats


def test_label_column_without_rows_adds_no_table():
    scores = pa.table({"id": pa.array([], pa.string()), "category.coarse": pa.array([], pa.string())})
    manifest = pa.table({"id": pa.array([], pa.string()), "n_tokens": pa.array([], pa.int64())})
    assert category_stats(scores, manifest) == {}


def test_one_label_summary():
    scores = pa.table({"id": ["a", "b"], "category.coarse": ["chart", None]})
    manifest = pa.table({"id": ["a", "b"], "n_tokens": [30, 10]})
    stats = {"categories": category_stats(scores, manifest)}
    assert stats["categories"]["category.coarse"]["chart"]["scored"] == {"samples": 1, "tokens": 30}
    assert "75%" in take_categories(stats) and "chart" in take_categories(stats)
