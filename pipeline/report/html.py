"""report.html: one self-contained file (inline CSS, plots as base64 PNG), readable offline."""
from __future__ import annotations

import base64
import html

from .summary import PERCENTILES

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:2px} h2{font-size:17px;margin-top:30px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px} .cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{background:#f5f7fa;border:1px solid #e1e5ea;border-radius:8px;padding:10px 14px;min-width:120px}
.card .v{font-size:20px;font-weight:600} .card .k{font-size:12px;color:#666}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #e1e5ea;padding:3px 8px;text-align:right}
th{background:#f5f7fa} td.l,th.l{text-align:left} .bad{color:#b04a4a;font-weight:600} .good{color:#2f7d32;font-weight:600}
figure{margin:12px 0} figcaption{font-size:13px;color:#555} img{max-width:100%}
.warn{background:#fff4e5;border:1px solid #f0c36d;padding:6px 10px;border-radius:6px;font-size:13px}
"""


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"
    return html.escape(str(v))


def table(headers: list[str], rows: list[list], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c if isinstance(c, RawHTML) else fmt(c)}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


class RawHTML(str):
    """Already-escaped markup placed in a table cell as is."""


def figures_html(figs: list[tuple[str, bytes]]) -> str:
    return "".join(f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                   f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, png in figs)


def _cards(headline: dict) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{fmt(v)}</div><div class="k">{html.escape(k.replace("_", " "))}</div></div>'
        for k, v in headline.items()) + "</div>"


def _dist_rows(blocks: dict) -> list[list]:
    cols = ["count", "sum", "mean", "min", *(f"p{q}" for q in PERCENTILES), "max"]
    return [[name] + [b.get(c) for c in cols] for name, b in blocks.items() if isinstance(b, dict) and b.get("count")]


DIST_HEAD = ["", "count", "sum", "mean", "min", *(f"p{q}" for q in PERCENTILES), "max"]


def render_report(stats: dict, figs: list[tuple[str, bytes]]) -> str:
    kind = stats.get("kind", "?")
    title = "Pre-flight of a raw corpus" if kind == "preflight" else "Prepared dataset report"
    parts = [f"<h1>vlprep stats — {title}</h1>",
             f'<div class="sub">{html.escape(stats.get("path", ""))} · preset {html.escape(", ".join(stats.get("presets", [])) or "?")}</div>',
             _cards(stats.get("headline", {}))]
    acc = stats.get("accounting", {})
    if acc and not acc.get("balanced", True):
        parts.append(f'<p class="warn">Accounting does not balance: inputs {acc["inputs"]} ≠ kept {acc["kept"]} + dropped '
                     f'{acc["dropped"]} + error {acc["error"]}, or manifest rows {acc.get("manifest_rows")} ≠ kept.</p>')
    if stats.get("text_tokens_note"):
        parts.append(f'<p class="warn">{html.escape(stats["text_tokens_note"])}</p>')
    if acc.get("by_rule"):
        verb = "would be " if kind == "preflight" else ""
        parts.append(f"<h2>Dropped and errors ({verb}by stage and rule)</h2>")
        parts.append(table(["status", "stage", "rule", "count", "share", "value p50", "examples"], [
            [r["status"], r["stage"], r["rule"], r["count"], r["share"], (r.get("value") or {}).get("p50"),
             ", ".join(e["id"] for e in r["examples"])] for r in acc["by_rule"]], left=3))
    if stats.get("tokens"):
        parts.append("<h2>Tokens per sample</h2>")
        parts.append(table(DIST_HEAD, _dist_rows(stats["tokens"])))
        if stats["tokens"].get("visual_share_of_total") is not None:
            parts.append(f'<p class="sub">visual tokens are {stats["tokens"]["visual_share_of_total"]:.1%} of all tokens</p>')
    ml = stats.get("max_length")
    if ml:
        parts.append("<h2>Length limits</h2>")
        parts.append(table(["max_length", "samples over"], [[int(k), v] for k, v in ml.get("over_limit", {}).items()]
                           + ([[f"{ml['max_length']} (configured)", ml.get("over")]] if ml.get("max_length") else [])))
    for key, label in (("images", "Images"), ("videos", "Videos")):
        block = stats.get(key, {})
        if not block.get("total"):
            continue
        parts.append(f"<h2>{label}: {fmt(block['total'])}</h2>")
        rows = {}
        for side in ("original", "resized"):
            for f in ("width", "height", "pixels", "aspect_ratio_w_over_h"):
                if f in block.get(side, {}):
                    rows[f"{side} {f}"] = block[side][f]
        for f in ("tokens_per_image", "per_sample", "duration_s", "fps", "sample_fps", "sampled_frames"):
            if isinstance(block.get(f), dict):
                rows[f.replace("_", " ")] = block[f]
        parts.append(table(DIST_HEAD, _dist_rows(rows)))
        tops = block.get("original", {}).get("top_sizes_wxh", [])
        if tops:
            parts.append('<p class="sub">most common original sizes (w×h): ' +
                         ", ".join(f"{html.escape(t['value'])} ({t['count']})" for t in tops) + "</p>")
    if stats.get("boxes", {}).get("per_sample"):
        b = stats["boxes"]
        parts.append("<h2>Grounding boxes</h2>")
        parts.append(table(DIST_HEAD, _dist_rows({"boxes per sample": b["per_sample"]})))
    if stats.get("sources"):
        parts.append("<h2>Per source</h2>")
        parts.append(table(["source", "inputs", "kept", "dropped", "error", "kept share", "tokens", "mean tokens"], [
            [r["source"], r["inputs"], r["kept"], r["dropped"], r["error"], r["kept_share"],
             r.get("total_tokens"), r.get("mean_tokens")] for r in stats["sources"]]))
    for name, sc in stats.get("scores", {}).items():
        parts.append(f"<h2>Score {html.escape(name)}</h2>")
        parts.append(table(DIST_HEAD, _dist_rows({name: sc})))
        parts.append(table(["keep score ≥ decile", "threshold", "kept", "kept share", "kept tokens"],
                           [[f"p{d['decile']}", d["threshold"], d["kept"], d["kept_share"], d["kept_tokens"]]
                            for d in sc["threshold_at_decile"]]))
    if figs:
        parts.append("<h2>Plots</h2>" + figures_html(figs))
    if stats.get("timing"):
        t = stats["timing"]
        parts.append(f'<p class="sub">{fmt(t["records"])} records in {t["seconds"]:.2f} s '
                     f'({fmt(t.get("records_per_s"))} records/s, {fmt(t.get("header_reads"))} header reads)</p>')
    return _page(title, "".join(parts))


def render_compare(cmp: dict, figs: list[tuple[str, bytes]]) -> str:
    a, b = cmp["names"]
    rows = []
    for r in cmp["rows"]:
        d = r["delta"]
        cls = "" if not d else ("good" if d > 0 else "bad")
        if r["metric"].startswith(("dropped.", "error.")) or r["metric"].endswith((".dropped", ".error")):
            cls = {"good": "bad", "bad": "good"}.get(cls, cls)  # more drops/errors is the bad direction
        if (r["a"] is None) != (r["b"] is None):
            cls = "bad"
        delta = RawHTML(f'<span class="{cls}">{fmt(d)}</span>') if d is not None else None
        rel = RawHTML(f'<span class="{cls}">{r["rel_change"]:+.1%}</span>') if r["rel_change"] is not None else None
        rows.append([r["metric"], r["a"], r["b"], delta, rel])
    body = (f"<h1>vlprep stats — compare</h1><div class=\"sub\">A = {html.escape(a)}<br>B = {html.escape(b)}</div>"
            f"<p>{cmp['changed']} of {len(cmp['rows'])} metrics differ.</p>"
            + table(["metric", "A", "B", "B − A", "change"], rows) + (figures_html(figs) if figs else ""))
    return _page("vlprep compare", body)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")
