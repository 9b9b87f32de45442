"""Plots for report.html: matplotlib (Agg, no display needed) → PNG bytes.

Each function takes the report's `series`/`stats` and returns a list of `Fig`s: a `(title, png)`
pair (it unpacks like one) that also knows the report section it belongs to (`fig.section`:
accounting, tokens, images, videos, boxes, sources, scores), so report.html can put every plot
right under its section's heading. A figure with no data is skipped rather than drawn empty.

Style: one width (FIG_W inches at DPI), titles that say what is drawn, axis labels with units,
one palette (PALETTE: kept/dropped/error and before/after keep their colours in every plot).
"""
from __future__ import annotations

import io
import math

import numpy as np

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

FIG_W, ROW_H, DPI = 8.8, 3.2, 110

PALETTE = {
    "main": "#3b6ea8",      # the one series of a plot; "before" (original size)
    "after": "#d9822b",     # after resize
    "kept": "#5a9e5a",
    "dropped": "#e0a040",
    "error": "#c0504d",
    "text": "#7d8fa8",
    "image": "#3b6ea8",
    "video": "#7d5ba6",
    "score": "#7d5ba6",
    "mark": "#222222",      # median / p95 / limit lines
    "grid": "#dddddd",
}
COLORS = (PALETTE["main"], PALETTE["after"], PALETTE["kept"], PALETTE["error"], PALETTE["video"], "#888888")

STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold", "axes.labelsize": 9,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8, "legend.frameon": False,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.color": PALETTE["grid"],
    "grid.linewidth": 0.6, "axes.axisbelow": True, "figure.dpi": DPI,
}


class Fig(tuple):
    """`(title, png)` plus `.section`, the report.html section the plot goes under."""

    def __new__(cls, title: str, png: bytes, section: str | None = None):
        self = super().__new__(cls, (title, png))
        self.section = section
        return self

    @property
    def title(self) -> str:
        return self[0]

    @property
    def png(self) -> bytes:
        return self[1]


def _in_style(fn):
    """Run a figure function inside the report's rc style (fonts, spines, grid apply to all its artists)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        with plt.rc_context(STYLE):
            return fn(*a, **kw)
    return wrapper


def _figure(nrows=1, ncols=1, *, height=None, width=FIG_W, **kw):
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height or ROW_H * nrows), squeeze=False, **kw)
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    with plt.rc_context(STYLE):
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _styled(ax):
    """rc_context only applies to artists made inside it; set the look of an axes explicitly."""
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(True, color=PALETTE["grid"], linewidth=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=8)
    return ax


def _num(v: float) -> str:
    """Short label for a number: 1,298 · 0.553 · 12.5k · 3.1M."""
    if v != v:
        return "nan"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 100 or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:.3g}"


_THOUSANDS = FuncFormatter(lambda v, _: _num(v))


def _finite(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def _present(series: dict, key: str) -> bool:
    a = series.get(key)
    return a is not None and len(a) > 0 and np.isfinite(np.asarray(a, dtype=np.float64)).any()


def _bins(n: int, most: int = 40) -> int:
    """Few samples → few, wide bins; a big corpus → up to `most`."""
    return int(np.clip(round(2 * np.sqrt(max(n, 1))), 5, most))


def _edges(a: np.ndarray, bins: int, log: bool):
    lo, hi = float(a.min()), float(a.max())
    if log and lo > 0 and hi / lo > 20:
        return np.logspace(np.log10(lo), np.log10(hi), bins + 1), True
    if float(lo).is_integer() and float(hi).is_integer() and hi - lo <= bins and np.all(a == np.round(a)):
        return np.arange(lo - 0.5, hi + 1.5), False  # small integer range: one bar per value
    if hi == lo:
        return np.array([lo - 0.5, hi + 0.5]), False
    return np.linspace(lo, hi, bins + 1), False


def _mark(ax, x: float, label: str, *, ls="-", y=0.97, color=None):
    """A vertical line with its label written at the top of the plot."""
    ax.axvline(x, color=color or PALETTE["mark"], lw=1.1, ls=ls)
    ax.annotate(label, xy=(x, y), xycoords=("data", "axes fraction"), xytext=(3, 0), textcoords="offset points",
                ha="left", va="top", fontsize=8, color=color or PALETTE["mark"],
                bbox={"boxstyle": "square,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})


def _hist(ax, a, *, color=PALETTE["main"], bins=None, log=False, label=None, marks=True, unit="", alpha=None):
    a = _finite(a)
    if not a.size:
        return
    edges, is_log = _edges(a, bins or _bins(a.size), log)
    if is_log:
        ax.set_xscale("log")
    ax.hist(a, bins=edges, color=color, alpha=alpha or (0.65 if label else 0.9), label=label,
            edgecolor="white", linewidth=0.4)
    if marks:
        p50, p95 = np.percentile(a, [50, 95])
        _mark(ax, p50, f"median {_num(p50)}{unit}")
        if p95 != p50:
            _mark(ax, p95, f"p95 {_num(p95)}{unit}", ls="--", y=0.84)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    if not is_log:
        ax.xaxis.set_major_formatter(_THOUSANDS)


def _bar_labels(ax, bars, values, *, horizontal: bool):
    for b, v in zip(bars, values):
        if not v:
            continue
        if horizontal:
            ax.annotate(f"{v:,}", xy=(b.get_x() + b.get_width(), b.get_y() + b.get_height() / 2),
                        xytext=(3, 0), textcoords="offset points", va="center", ha="left", fontsize=8)
        else:
            ax.annotate(f"{v:,}", xy=(b.get_x() + b.get_width() / 2, b.get_y() + b.get_height()),
                        xytext=(0, 2), textcoords="offset points", va="bottom", ha="center", fontsize=8)


# ---------------------------------------------------------------------------------------- sections


@_in_style
def accounting_figures(stats: dict) -> list[Fig]:
    acc = stats.get("accounting", {})
    rows = sorted(acc.get("by_rule", []), key=lambda r: (-r["count"], r["status"], r["stage"], r["rule"]))[:20]
    if not rows:
        return []
    rows = rows[::-1]  # barh draws bottom-up: the largest reason ends on top
    labels = [f"{r['stage']} / {r['rule']}" for r in rows]
    counts = [int(r["count"]) for r in rows]
    colors = [PALETTE["error"] if r["status"] == "error" else PALETTE["dropped"] for r in rows]
    fig, axes = _figure(height=0.3 * len(rows) + 1.1)
    ax = _styled(axes[0][0])
    bars = ax.barh(labels, counts, color=colors, height=0.7)
    _bar_labels(ax, bars, counts, horizontal=True)
    ax.set_xlim(0, max(counts) * 1.12 + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("samples")
    n_in = acc.get("inputs")
    verb = "would be dropped" if stats.get("kind") == "preflight" else "dropped"
    ax.set_title(f"Why samples were lost: {acc.get('dropped', 0):,} {verb}, {acc.get('error', 0):,} errors"
                 + (f" of {n_in:,} inputs" if n_in else ""), loc="left")
    from matplotlib.patches import Patch

    have = {r["status"] for r in rows}
    ax.legend(handles=[Patch(color=PALETTE[s], label=s) for s in ("dropped", "error") if s in have],
              loc="lower right")
    return [Fig("Dropped samples and errors by stage / rule", _png(fig), "accounting")]


@_in_style
def token_figures(series: dict, stats: dict | None = None) -> list[Fig]:
    if not _present(series, "tokens.total"):
        return []
    total = _finite(series["tokens.total"])
    parts = [(k, PALETTE[k]) for k in ("text", "image", "video")
             if _present(series, f"tokens.{k}") and np.nansum(series[f"tokens.{k}"]) > 0]
    fig, axes = _figure(1, 2, gridspec_kw={"width_ratios": [3, 1.15]})
    ax = _styled(axes[0][0])
    _hist(ax, total, color=PALETTE["main"])
    ml = (stats or {}).get("max_length") or {}
    if ml.get("max_length"):
        _mark(ax, ml["max_length"], f"max_length {ml['max_length']:,}", ls=":", y=0.71, color=PALETTE["error"])
    ax.set_xlabel("tokens per sample (text + image + video)")
    ax.set_ylabel("samples")
    ax.set_title(f"Sequence length of {total.size:,} samples", loc="left")
    ax2 = _styled(axes[0][1])
    if parts:
        sums = [float(np.nansum(series[f"tokens.{k}"])) for k, _ in parts]
        whole = sum(sums) or 1.0
        bars = ax2.barh([k for k, _ in parts][::-1], sums[::-1], color=[c for _, c in parts][::-1], height=0.6)
        for b, s in zip(bars, sums[::-1]):
            ax2.annotate(f"{s / whole:.0%}", xy=(b.get_width(), b.get_y() + b.get_height() / 2), xytext=(3, 0),
                         textcoords="offset points", va="center", fontsize=8)
        ax2.set_xlim(0, max(sums) * 1.3)
        ax2.xaxis.set_major_formatter(_THOUSANDS)
        ax2.xaxis.set_major_locator(MaxNLocator(nbins=3))
        ax2.grid(axis="y", visible=False)
        ax2.set_xlabel("tokens, all samples")
        ax2.set_title("Where tokens go", loc="left")
    else:
        ax2.set_visible(False)
    fig.tight_layout(w_pad=2)
    return [Fig("Tokens per sample (median and p95 marked) and token totals by kind", _png(fig), "tokens")]


def _size_panels(axes, orig, res, what: str) -> None:
    """Scatter width × height (axes[0]) and, where given, pixel-count histogram (axes[1]), before and
    after resize; grey lines join each original size to its resized one."""
    sc = _styled(axes[0])
    px = _styled(axes[1]) if len(axes) > 1 else None
    both = []
    orig = None if orig is None or not len(orig) else np.asarray(orig, dtype=np.float64)
    res = None if res is None or not len(res) else np.asarray(res, dtype=np.float64)
    if orig is not None and res is not None and len(orig) == len(res) and len(orig) <= 5000:
        from matplotlib.collections import LineCollection

        segs = np.stack([orig[:, ::-1], res[:, ::-1]], axis=1)  # (n, 2 points, (w, h))
        sc.add_collection(LineCollection(segs, colors="#bbbbbb", linewidths=0.6, zorder=1))
    for hw, name, c in ((orig, "original", PALETTE["main"]), (res, "resized", PALETTE["after"])):
        if hw is None:
            continue
        sc.scatter(hw[:, 1], hw[:, 0], s=16, alpha=0.6, color=c, label=name, edgecolors="none", zorder=2)
        both.append((hw[:, 0] * hw[:, 1], name, c))
    allhw = np.concatenate([b for b in (orig, res) if b is not None])
    if allhw.min() > 0 and allhw.max() / allhw.min() > 20:
        sc.set_xscale("log"); sc.set_yscale("log")
        for axis in (sc.xaxis, sc.yaxis):
            axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    for axis in (sc.xaxis, sc.yaxis):
        axis.set_major_formatter(_THOUSANDS)
    sc.set_xlabel("width (px)"); sc.set_ylabel("height (px)")
    sc.set_title(f"{what} size, original → resized", loc="left")
    sc.legend(loc="upper left", markerscale=1.5)
    if both and px is not None:
        allpx = np.concatenate([b[0] for b in both])
        edges, is_log = _edges(allpx, _bins(len(allpx) // 2, 30), log=True)
        if is_log:
            px.set_xscale("log")
        px.hist([a for a, _, _ in both], bins=edges, color=[c for _, _, c in both],  # bars side by side
                label=[f"{name} (median {_num(np.median(a))})" for a, name, _ in both], edgecolor="white", linewidth=0.3)
        px.xaxis.set_major_formatter(_THOUSANDS)
        px.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        if not is_log:
            px.xaxis.set_major_locator(MaxNLocator(nbins=5))
        px.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        px.set_xlabel("pixels (w × h)"); px.set_ylabel(what.split()[0].lower() + "s")
        px.set_title("Pixels per " + what.lower(), loc="left")
        px.legend(loc="best")


@_in_style
def size_figures(series: dict, prefix: str = "images", label: str = "image") -> list[Fig]:
    """Images: sizes before/after resize, pixel counts, tokens per image."""
    orig, res = series.get(f"{prefix}.original_hw"), series.get(f"{prefix}.resized_hw")
    if orig is None or len(orig) == 0:
        return []
    tok = series.get(f"{prefix}.tokens_each")
    has_tok = tok is not None and _present(series, f"{prefix}.tokens_each")
    fig, axes = _figure(1, 3 if has_tok else 2)
    _size_panels(axes[0][:2], orig, res, label.capitalize())
    if has_tok:
        ax = _styled(axes[0][2])
        _hist(ax, tok, color=PALETTE["image"])
        ax.set_xlabel(f"tokens per {label}"); ax.set_ylabel(f"{label}s")
        ax.set_title(f"Tokens per {label}", loc="left")
    fig.tight_layout(w_pad=1.5)
    return [Fig(f"{label.capitalize()} resolution before and after resize, pixel counts, tokens per {label}",
                _png(fig), prefix)]


@_in_style
def video_figures(series: dict) -> list[Fig]:
    """Videos in one row: duration, sampled frames, sampling rate, frame size before/after resize."""
    keys = [(k, t, x) for k, t, x in (("videos.duration_s", "Duration", "seconds per video"),
                                      ("videos.frames", "Sampled frames", "frames per video"),
                                      ("videos.sample_fps", "Sampling rate", "sampled frames / s"))
            if _present(series, k)]
    orig = series.get("videos.original_hw")
    has_sizes = orig is not None and len(orig) > 0
    if not keys and not has_sizes:
        return []
    fig, axes = _figure(1, len(keys) + has_sizes, height=2.9)
    for ax, (k, title, xl) in zip(axes[0], keys):
        _styled(ax)
        _hist(ax, series[k], color=PALETTE["video"])
        ax.set_title(title, loc="left"); ax.set_xlabel(xl); ax.set_ylabel("videos")
    if has_sizes:
        _size_panels([axes[0][-1]], orig, series.get("videos.resized_hw"), "Frame")
    fig.tight_layout(w_pad=1.2)
    return [Fig("Video duration, sampled frames, sampling rate and frame size before/after resize", _png(fig), "videos")]


@_in_style
def box_figures(series: dict) -> list[Fig]:
    if not _present(series, "boxes.per_sample") or np.nansum(series["boxes.per_sample"]) == 0:
        return []
    a = _finite(series["boxes.per_sample"]).astype(int)
    vals, counts = np.unique(a, return_counts=True)
    fig, axes = _figure(height=2.6, width=min(FIG_W, 3.2 + 0.45 * len(vals)))
    ax = _styled(axes[0][0])
    bars = ax.bar(vals, counts, color=PALETTE["kept"], width=0.6)
    _bar_labels(ax, bars, [int(c) for c in counts], horizontal=False)
    ax.set_ylim(0, counts.max() * 1.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("grounding boxes per sample"); ax.set_ylabel("samples")
    ax.grid(axis="x", visible=False)
    ax.set_title("Boxes per sample", loc="left")
    return [Fig("Grounding boxes per sample", _png(fig), "boxes")]


@_in_style
def source_figures(stats: dict) -> list[Fig]:
    rows = sorted(stats.get("sources", []), key=lambda r: -(r.get("inputs") or 0))[:25]
    if len(rows) < 2:
        return []
    rows = rows[::-1]
    names = [r["source"] if len(r["source"]) <= 40 else "…" + r["source"][-39:] for r in rows]
    fig, axes = _figure(height=0.32 * len(rows) + 1.2)
    ax = _styled(axes[0][0])
    left = np.zeros(len(rows))
    for key in ("kept", "dropped", "error"):
        v = np.array([r.get(key) or 0 for r in rows], dtype=float)
        bars = ax.barh(names, v, left=left, color=PALETTE[key], label=key, height=0.7)
        for b, n in zip(bars, v):
            if n and b.get_width() >= 0.06 * max(1.0, float(max(r.get("inputs") or 0 for r in rows))):
                ax.annotate(f"{int(n):,}", xy=(b.get_x() + b.get_width() / 2, b.get_y() + b.get_height() / 2),
                            ha="center", va="center", fontsize=7.5, color="white", fontweight="bold")
        left += v
    for y, (r, x) in enumerate(zip(rows, left)):
        ax.annotate(f"{(r.get('kept_share') or 0):.0%} kept", xy=(x, y), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_xlim(0, left.max() * 1.18)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(_THOUSANDS)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("input records")
    ax.set_title("Records per source: kept, dropped, errors", loc="left")
    ax.legend(loc="lower right", ncol=3)
    return [Fig("Records per source", _png(fig), "sources")]


@_in_style
def score_figures(series: dict, stats: dict) -> list[Fig]:
    """All score columns in one grid (small multiples): histogram, median, decile thresholds."""
    names = [k for k in stats.get("scores", {}) if _present(series, f"scores.{k}")]
    if not names:
        return []
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = _figure(nrows, ncols, height=2.3 * nrows + 0.3)
    for i, name in enumerate(names):
        ax = _styled(axes[i // ncols][i % ncols])
        a = _finite(series[f"scores.{name}"])
        for d in stats["scores"][name].get("threshold_at_decile", []):
            ax.axvline(d["threshold"], color="#999999", lw=0.7, ls=":")
        _hist(ax, a, color=PALETTE["score"], bins=_bins(a.size, 30), marks=False)
        med = float(np.median(a)) if a.size else float("nan")
        if a.size:
            ax.axvline(med, color=PALETTE["mark"], lw=1.1)
        const = a.size and a.min() == a.max()
        ax.set_title(name if len(name) <= 28 else "…" + name[-27:], fontsize=9, loc="left")
        ax.text(0.98, 0.95, "constant" if const else f"median {_num(med)}", transform=ax.transAxes,
                ha="right", va="top", fontsize=7.5,
                bbox={"boxstyle": "square,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        ax.tick_params(labelsize=7)
        if i % ncols == 0:
            ax.set_ylabel("samples")
    for j in range(len(names), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.suptitle("Score distributions (solid: median, dotted: decile thresholds p10…p90)", x=0.01, ha="left",
                 fontsize=10, fontweight="bold")
    fig.tight_layout(h_pad=1.2, w_pad=1.0)
    return [Fig(f"Score distributions of {len(names)} columns with decile thresholds", _png(fig), "scores")]


def all_figures(report) -> list[Fig]:
    s, st = report.series, report.stats
    return (accounting_figures(st) + token_figures(s, st) + size_figures(s, "images", "image")
            + video_figures(s) + box_figures(s) + source_figures(st) + score_figures(s, st))


@_in_style
def compare_figures(a, b, names: tuple[str, str]) -> list[Fig]:
    """Overlaid token histograms of two runs."""
    keys = [k for k in ("tokens.total", "tokens.text", "tokens.visual")
            if _present(a.series, k) and _present(b.series, k)]
    if not keys:
        return []
    fig, axes = _figure(1, len(keys))
    for ax, k in zip(axes[0], keys):
        _styled(ax)
        both = np.concatenate([_finite(a.series[k]), _finite(b.series[k])])
        edges = np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1, 41)
        ax.hist(_finite(a.series[k]), bins=edges, alpha=0.55, color=PALETTE["main"], label=f"A: {names[0]}")
        ax.hist(_finite(b.series[k]), bins=edges, alpha=0.55, color=PALETTE["after"], label=f"B: {names[1]}")
        ax.set_title(k.replace("tokens.", "") + " tokens per sample", loc="left")
        ax.set_xlabel("tokens"); ax.xaxis.set_major_formatter(_THOUSANDS)
        ax.legend()
    axes[0][0].set_ylabel("samples")
    fig.tight_layout()
    return [Fig("Token distributions, A vs B", _png(fig), "compare")]
