"""The terminal summary: a few rich tables, headline first, nothing that needs scrolling back for."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .html import fmt as _fmt

DIST_COLS = ("count", "mean", "p50", "p90", "p99", "max")


def fmt(v) -> str:
    """A value as rich markup-safe text (metric names, paths and ids may hold `[...]`)."""
    import html

    return escape(html.unescape(_fmt(v)))


def _dist_table(title: str, blocks: dict) -> Table | None:
    rows = [(k, b) for k, b in blocks.items() if isinstance(b, dict) and b.get("count")]
    if not rows:
        return None
    t = Table(title=title, title_justify="left")
    t.add_column("")
    for c in DIST_COLS:
        t.add_column(c, justify="right")
    for k, b in rows:
        t.add_row(escape(k), *(fmt(b.get(c)) for c in DIST_COLS))
    return t


def print_report(stats: dict, console: Console | None = None) -> None:
    c = console or Console()
    kind = stats.get("kind")
    c.rule(escape(f"vlprep stats · {'pre-flight' if kind == 'preflight' else 'prepared'} · {stats.get('path', '')}"))
    h = Table(show_header=False, title="headline", title_justify="left")
    for k, v in stats.get("headline", {}).items():
        h.add_row(escape(k.replace("_", " ")), fmt(v))
    c.print(h)
    acc = stats.get("accounting", {})
    if acc and not acc.get("balanced", True):
        c.print(f"[bold red]accounting does not balance[/]: inputs {acc['inputs']} vs kept {acc['kept']} + dropped "
                f"{acc['dropped']} + error {acc['error']}; manifest rows {acc.get('manifest_rows')}")
    if acc.get("by_rule"):
        t = Table(title="dropped / errors by stage and rule", title_justify="left")
        for col in ("status", "stage", "rule", "count", "share", "examples"):
            t.add_column(col, justify="right" if col in ("count", "share") else "left")
        for r in acc["by_rule"][:15]:
            style = "red" if r["status"] == "error" else "yellow"
            t.add_row(f"[{style}]{escape(r['status'])}[/]", escape(r["stage"] or ""), escape(r["rule"] or ""),
                      fmt(r["count"]), f"{r['share']:.1%}", escape(", ".join(e["id"] for e in r["examples"][:3])))
        c.print(t)
    for title, blocks in (("tokens per sample", stats.get("tokens", {})),):
        t = _dist_table(title, blocks)
        if t:
            c.print(t)
    media = {}
    for key in ("images", "videos"):
        b = stats.get(key, {})
        for side in ("original", "resized"):
            if isinstance(b.get(side), dict) and "pixels" in b[side]:
                media[f"{key[:-1]} {side} pixels"] = b[side]["pixels"]
        for f in ("tokens_per_image", "duration_s", "sampled_frames", "sample_fps"):
            if isinstance(b.get(f), dict):
                media[f"{key[:-1]} {f.replace('_', ' ')}"] = b[f]
    if stats.get("boxes", {}).get("per_sample"):
        media["boxes per sample"] = stats["boxes"]["per_sample"]
    t = _dist_table("media", media)
    if t:
        c.print(t)
    if stats.get("videos", {}).get("total") and stats["videos"].get("resize"):
        c.print(f"video frames resized as {stats['videos']['resize']} (bit-exact to that reference, docs/video.md)")
    if len(stats.get("sources", [])) > 1:
        t = Table(title="per source", title_justify="left")
        for col in ("source", "inputs", "kept", "dropped", "error", "tokens"):
            t.add_column(col, justify="left" if col == "source" else "right")
        for r in stats["sources"]:
            t.add_row(escape(r["source"]), *(fmt(r.get(k)) for k in ("inputs", "kept", "dropped", "error", "total_tokens")))
        c.print(t)
    for name, sc in stats.get("scores", {}).items():
        lower = sc.get("keep_if") == "<="
        c.print(escape(f"score {name}: keep if {'≤' if lower else '≥'} decile" + (" (lower is better)" if lower else "")),
                style="italic", soft_wrap=True)
        t = Table()
        for col in ("decile", "threshold", "kept", "share", "tokens"):
            t.add_column(col, justify="right")
        for d in sc["threshold_at_decile"]:
            t.add_row(f"p{d['decile']}", fmt(d["threshold"]), fmt(d["kept"]), f"{d['kept_share']:.0%}",
                      fmt(d["kept_tokens"]))
        c.print(t)
    for name, block in stats.get("categories", {}).items():
        t = Table(title=f"per {name}", title_justify="left")
        stages = list(next(iter(block.values()), {}))
        t.add_column("label", justify="left")
        for st in stages:
            t.add_column(f"{st} n", justify="right")
            t.add_column(f"{st} tok", justify="right")
        for label, r in block.items():
            t.add_row(escape(label), *[fmt(r[st][k]) for st in stages for k in ("samples", "tokens")])
        c.print(t)
    if stats.get("timing"):
        tm = stats["timing"]
        where = f"; {tm['executor']}, {fmt(tm.get('workers'))} workers" if tm.get("executor") else ""
        if tm.get("startup_seconds") is not None:
            where += f", {tm['startup_seconds']:.1f} s of it starting up"
        c.print(f"{fmt(tm['records'])} records in {tm['seconds']:.2f} s ({fmt(tm.get('records_per_s'))} records/s"
                f"{escape(where)})")


def print_compare(cmp: dict, console: Console | None = None, *, only_changed: bool = True) -> None:
    c = console or Console()
    a, b = cmp["names"]
    t = Table(title=escape(f"A = {a}\nB = {b}"), title_justify="left")
    for col in ("metric", "A", "B", "B − A", "change"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for r in cmp["rows"]:
        if only_changed and r["delta"] in (0, None) and (r["a"] is None) == (r["b"] is None):
            continue
        d = r["delta"]
        worse = r["metric"].startswith(("dropped.", "error.")) or r["metric"].endswith((".dropped", ".error"))
        style = "" if not d else ("green" if (d > 0) != worse else "red")
        rel = f"{r['rel_change']:+.1%}" if r["rel_change"] is not None else ""
        t.add_row(escape(r["metric"]), fmt(r["a"]), fmt(r["b"]), f"[{style}]{fmt(d)}[/]" if style else fmt(d),
                  f"[{style}]{rel}[/]" if style else rel)
    c.print(t)
    c.print(f"{cmp['changed']} of {len(cmp['rows'])} metrics differ")
