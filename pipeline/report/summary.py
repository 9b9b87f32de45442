"""Numeric summaries shared by every report: percentiles, histograms, value counts.

Percentiles use numpy's default (linear interpolation between closest ranks, the same as
`statistics.quantiles(method="inclusive")`), so a user can reproduce any figure in stats.json with
one line of numpy. Everything returned is plain Python (json-serialisable).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
HIST_BINS = 30


def _py(x):
    """numpy scalar → Python scalar; integral floats stay floats (json keeps the type honest)."""
    if isinstance(x, np.generic):
        return x.item()
    return x


def as_array(values: Iterable) -> np.ndarray:
    """Finite float64 values only: nulls/NaNs are counted separately by the callers that care."""
    a = np.asarray([np.nan if v is None else v for v in values] if not isinstance(values, np.ndarray) else values,
                   dtype=np.float64)
    return a[np.isfinite(a)]


def histogram(a: np.ndarray, bins: int = HIST_BINS, *, log: bool = False) -> dict:
    """Counts over equal-width bins (or equal in log10 when `log`, for sizes spanning decades)."""
    if a.size == 0:
        return {"edges": [], "counts": [], "log": log}
    lo, hi = float(a.min()), float(a.max())
    if log and lo > 0:
        edges = np.logspace(np.log10(lo), np.log10(hi if hi > lo else lo * 1.001), bins + 1)
    else:
        log = False
        integral = bool(np.all(a == np.round(a)))
        if integral and hi - lo + 1 <= bins:
            # Small integer ranges (boxes per sample, images per sample): one bin per value.
            edges = np.arange(lo, hi + 2) - 0.5
        else:
            edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    counts, edges = np.histogram(a, bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "log": log}


def summarize(values, *, bins: int = HIST_BINS, log_hist: bool = False) -> dict:
    """count/sum/mean/std/min/max, the PERCENTILES as p1…p99, and a histogram."""
    a = as_array(values)
    out: dict = {"count": int(a.size)}
    if a.size == 0:
        return out
    integral = bool(np.all(a == np.round(a)))
    total = a.sum()
    out["sum"] = int(total) if integral else float(total)
    out["mean"] = float(a.mean())
    out["std"] = float(a.std())
    out["min"] = _py(int(a.min()) if integral else float(a.min()))
    out["max"] = _py(int(a.max()) if integral else float(a.max()))
    for q, v in zip(PERCENTILES, np.percentile(a, PERCENTILES)):
        out[f"p{q}"] = float(v)
    out["histogram"] = histogram(a, bins, log=log_hist)
    return out


def top_values(values: Iterable, n: int = 10) -> list[dict]:
    """Most common values (e.g. "1080x1920") with counts, ties broken by value for determinism."""
    counts = Counter(values)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return [{"value": k, "count": int(c)} for k, c in ranked[:n]]


def share(part: int, whole: int) -> float | None:
    return None if not whole else part / whole


class Report:
    """What every report builder returns: `stats` (the stats.json document) and `series` (the raw
    per-sample arrays the plots are drawn from; never written to json, which stays small)."""

    def __init__(self, stats: dict, series: dict[str, np.ndarray] | None = None):
        self.stats = stats
        self.series = series or {}


def size_block(hw: np.ndarray, *, top: int = 10) -> dict:
    """Width/height/pixels/aspect (w/h) distributions of (h, w) pairs plus the most common sizes."""
    if len(hw) == 0:
        return {"count": 0}
    h, w = hw[:, 0].astype(np.float64), hw[:, 1].astype(np.float64)
    return {
        "count": int(len(hw)),
        "width": summarize(w),
        "height": summarize(h),
        "pixels": summarize(h * w, log_hist=True),
        "aspect_ratio_w_over_h": summarize(w / h, log_hist=True),
        "top_sizes_wxh": top_values((f"{int(b)}x{int(a)}" for a, b in hw), top),
    }
