"""Two runs side by side (e.g. before/after a filter change, or pre-flight vs prepared).

Both sides are reduced to the same flat list of headline metrics; a metric missing on one side
shows as None rather than disappearing, since "this rule no longer drops anything" is news.
"""
from __future__ import annotations

import json
from pathlib import Path

from .summary import Report

TOKEN_FIELDS = ("count", "sum", "mean", "p50", "p90", "p99", "max")


def load_side(path: str | Path, **preflight_kwargs) -> Report:
    """A stats.json written earlier (no plots then), a prepare OUT dir, or a raw corpus."""
    p = Path(path)
    if p.is_file() and p.suffix == ".json" and p.name.startswith("stats"):
        return Report(json.loads(p.read_text()))
    if p.is_dir() and (p / "stats.json").exists() and not (p / "manifest.parquet").exists():
        return Report(json.loads((p / "stats.json").read_text()))  # a previous --out folder
    from . import build_report

    return build_report(p, **preflight_kwargs)


def key_metrics(stats: dict) -> dict[str, float | None]:
    """Ordered name → value for the figures people compare between runs."""
    m: dict[str, float | None] = {}
    for k, v in stats.get("headline", {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            m[f"headline.{k}"] = v
    for kind, block in stats.get("tokens", {}).items():
        if isinstance(block, dict):
            for f in TOKEN_FIELDS:
                if f in block:
                    m[f"tokens.{kind}.{f}"] = block[f]
    for r in stats.get("accounting", {}).get("by_rule", []):
        m[f"{r['status']}.{r['stage']}.{r['rule']}"] = r["count"]
    img = stats.get("images", {})
    for path in (("total",), ("tokens_per_image", "mean"), ("tokens_per_image", "p50"),
                 ("original", "pixels", "p50"), ("resized", "pixels", "p50"), ("downscaled",), ("upscaled",)):
        _put(m, "images", img, path)
    vid = stats.get("videos", {})
    for path in (("total",), ("total_duration_s",), ("sampled_frames", "mean"), ("sample_fps", "p50"),
                 ("resized", "pixels", "p50")):
        _put(m, "videos", vid, path)
    _put(m, "boxes", stats.get("boxes", {}), ("total",))
    _put(m, "max_length", stats.get("max_length", {}), ("over",))
    for r in stats.get("sources", []):
        for f in ("kept", "dropped", "error", "total_tokens"):
            if f in r:
                m[f"source[{r['source']}].{f}"] = r[f]
    for name, block in stats.get("scores", {}).items():
        for f in ("count", "mean", "p50"):
            if f in block:
                m[f"scores.{name}.{f}"] = block[f]
    return m


def _put(m: dict, prefix: str, block: dict, path: tuple[str, ...]) -> None:
    v = block
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return
        v = v[k]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        m[".".join((prefix, *path))] = v


def compare_stats(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> dict:
    ma, mb = key_metrics(a), key_metrics(b)
    rows = []
    for key in list(ma) + [k for k in mb if k not in ma]:
        va, vb = ma.get(key), mb.get(key)
        delta = vb - va if va is not None and vb is not None else None
        rel = delta / abs(va) if delta is not None and va else None
        rows.append({"metric": key, "a": va, "b": vb, "delta": delta, "rel_change": rel})
    return {"kind": "compare", "names": list(names), "rows": rows,
            "changed": sum(1 for r in rows if r["delta"] not in (0, None) or (r["a"] is None) != (r["b"] is None)),
            "a": a, "b": b}
