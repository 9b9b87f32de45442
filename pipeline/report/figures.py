"""Plots for report.html: matplotlib (Agg, no display needed) → PNG bytes.

Each function takes the report's `series`/`stats` and returns a list of (title, png_bytes); a
figure with no data is skipped rather than drawn empty.
"""
from __future__ import annotations

import io

import numpy as np

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

COLORS = ("#3b6ea8", "#d9822b", "#5a9e5a", "#b04a4a", "#7d5ba6", "#888888")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _hist(ax, a, title, *, log_x=False, color=COLORS[0], bins=40, label=None):
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    if log_x and (a > 0).all() and a.max() > a.min():
        edges = np.logspace(np.log10(a.min()), np.log10(a.max()), bins + 1)
        ax.set_xscale("log")
    else:
        edges = bins
    ax.hist(a, bins=edges, color=color, alpha=0.75 if label else 0.9, label=label)
    if a.size:
        for q, ls in ((50, "-"), (95, "--")):
            ax.axvline(np.percentile(a, q), color="black", lw=0.8, ls=ls)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def _present(series: dict, key: str) -> bool:
    a = series.get(key)
    return a is not None and len(a) > 0 and np.isfinite(np.asarray(a, dtype=np.float64)).any()


def token_figures(series: dict) -> list[tuple[str, bytes]]:
    kinds = [(k, t) for k, t in (("tokens.total", "total tokens"), ("tokens.text", "text tokens"),
                                 ("tokens.image", "image tokens"), ("tokens.video", "video tokens"),
                                 ("tokens.visual", "visual tokens (image+video)"))
             if _present(series, k) and np.nansum(series[k]) > 0]
    if not kinds:
        return []
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 2.8), squeeze=False)
    for ax, (k, title), c in zip(axes[0], kinds, COLORS):
        _hist(ax, series[k], title + " / sample", color=c)
    axes[0][0].set_ylabel("samples")
    return [("Tokens per sample (solid: median, dashed: p95)", _png(fig))]


def size_figures(series: dict, prefix: str, label: str) -> list[tuple[str, bytes]]:
    orig, res = series.get(f"{prefix}.original_hw"), series.get(f"{prefix}.resized_hw")
    if orig is None or len(orig) == 0:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for hw, name, c in ((orig, "original", COLORS[0]), (res, "resized", COLORS[1])):
        if hw is not None and len(hw):
            axes[0].scatter(hw[:, 1], hw[:, 0], s=6, alpha=0.4, color=c, label=name)
            _hist(axes[1], hw[:, 1] / hw[:, 0], "aspect ratio w/h", log_x=True, color=c, label=name)
            _hist(axes[2], hw[:, 0] * hw[:, 1], "pixels", log_x=True, color=c, label=name)
    axes[0].set_xscale("log"); axes[0].set_yscale("log")
    axes[0].set_xlabel("width"); axes[0].set_ylabel("height"); axes[0].set_title(f"{label} sizes", fontsize=10)
    for ax in axes:
        ax.legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    return [(f"{label.capitalize()} resolution and aspect ratio, before and after resize", _png(fig))]


def video_figures(series: dict) -> list[tuple[str, bytes]]:
    keys = [(k, t) for k, t in (("videos.duration_s", "duration (s)"), ("videos.frames", "sampled frames"),
                                ("videos.sample_fps", "sample fps"), ("videos.fps", "source fps"))
            if _present(series, k)]
    if not keys:
        return []
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 2.8), squeeze=False)
    for ax, (k, t), c in zip(axes[0], keys, COLORS):
        _hist(ax, series[k], t, color=c, bins=30)
    return [("Videos", _png(fig))]


def box_figures(series: dict) -> list[tuple[str, bytes]]:
    if not _present(series, "boxes.per_sample") or np.nansum(series["boxes.per_sample"]) == 0:
        return []
    a = np.asarray(series["boxes.per_sample"])
    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    vals, counts = np.unique(a, return_counts=True)
    ax.bar(vals, counts, color=COLORS[2])
    ax.set_title("boxes per sample", fontsize=10); ax.set_xlabel("boxes"); ax.set_ylabel("samples")
    return [("Grounding boxes", _png(fig))]


def accounting_figures(stats: dict) -> list[tuple[str, bytes]]:
    rows = stats.get("accounting", {}).get("by_rule", [])[:20]
    if not rows:
        return []
    labels = [f"{r['status']}: {r['stage']}/{r['rule']}" for r in rows][::-1]
    counts = [r["count"] for r in rows][::-1]
    colors = [COLORS[3] if r["status"] == "error" else COLORS[1] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1))
    ax.barh(labels, counts, color=colors)
    ax.set_xlabel("samples"); ax.set_title("dropped (orange) and errors (red) by stage/rule", fontsize=10)
    return [("What was dropped and why", _png(fig))]


def source_figures(stats: dict) -> list[tuple[str, bytes]]:
    rows = stats.get("sources", [])
    if len(rows) < 2:
        return []
    names = [r["source"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(rows)), 3))
    bottom = np.zeros(len(rows))
    for key, c in (("kept", COLORS[2]), ("dropped", COLORS[1]), ("error", COLORS[3])):
        v = np.array([r.get(key, 0) for r in rows], dtype=float)
        ax.bar(names, v, bottom=bottom, color=c, label=key)
        bottom += v
    ax.legend(fontsize=8); ax.set_ylabel("records"); ax.set_title("per source", fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    return [("Sources", _png(fig))]


def score_figures(series: dict, stats: dict) -> list[tuple[str, bytes]]:
    names = [k for k in stats.get("scores", {}) if _present(series, f"scores.{k}")]
    out = []
    for name in names:
        fig, ax = plt.subplots(figsize=(5, 2.8))
        _hist(ax, series[f"scores.{name}"], name, color=COLORS[4])
        for d in stats["scores"][name]["threshold_at_decile"]:
            ax.axvline(d["threshold"], color="grey", lw=0.5, ls=":")
        out.append((f"Score {name} (dotted: deciles)", _png(fig)))
    return out


def all_figures(report) -> list[tuple[str, bytes]]:
    s, st = report.series, report.stats
    return (accounting_figures(st) + token_figures(s) + size_figures(s, "images", "image")
            + size_figures(s, "videos", "video") + video_figures(s) + box_figures(s)
            + source_figures(st) + score_figures(s, st))


def compare_figures(a, b, names: tuple[str, str]) -> list[tuple[str, bytes]]:
    """Overlaid token histograms of two runs."""
    keys = [k for k in ("tokens.total", "tokens.text", "tokens.visual")
            if _present(a.series, k) and _present(b.series, k)]
    if not keys:
        return []
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        both = np.concatenate([a.series[k], b.series[k]])
        both = both[np.isfinite(both)]
        edges = np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1, 41)
        ax.hist(a.series[k], bins=edges, alpha=0.55, color=COLORS[0], label=names[0])
        ax.hist(b.series[k], bins=edges, alpha=0.55, color=COLORS[1], label=names[1])
        ax.set_title(k.replace(".", " "), fontsize=10); ax.legend(fontsize=8); ax.grid(alpha=0.3)
    return [("Token distributions, A vs B", _png(fig))]
