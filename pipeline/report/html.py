"""report.html: one self-contained file (inline CSS, plots as base64 PNG), readable offline."""
from __future__ import annotations

import base64
import html

from .summary import PERCENTILES

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:2px} h2{font-size:17px;margin:28px 0 4px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px} .cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{background:#f5f7fa;border:1px solid #e1e5ea;border-radius:8px;padding:10px 14px;min-width:120px}
.card .v{font-size:20px;font-weight:600} .card .k{font-size:12px;color:#666} .card.alert{background:#fbeaea;border-color:#e3a5a5}
nav{font-size:13px;color:#666} nav a{color:#3b6ea8;text-decoration:none;margin-right:12px}
p.take{font-size:15px;margin:6px 0 10px;line-height:1.45} p.take b{font-weight:600}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #e1e5ea;padding:3px 8px;text-align:right}
th{background:#f5f7fa} td.l,th.l{text-align:left} .bad{color:#b04a4a;font-weight:600} .good{color:#2f7d32;font-weight:600}
figure{margin:6px 0 4px} figcaption{font-size:13px;color:#555} img{max-width:100%;height:auto}
details{margin:2px 0 8px} summary{cursor:pointer;color:#3b6ea8;font-size:13px} details[open] summary{margin-bottom:4px}
.tables{display:flex;flex-wrap:wrap;gap:0 24px;align-items:flex-start}
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


def figures_html(figs: list[tuple[str, bytes]], caption: bool = True) -> str:
    return "".join(f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                   + (f"<figcaption>{html.escape(t)}</figcaption>" if caption else "") + "</figure>"
                   for t, png in figs)


def pct(v, digits: int = 0) -> str:
    return "–" if v is None else f"{v:.{digits}%}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:,.1f} h"


def _card_value(k: str, v) -> str:
    if isinstance(v, float) and k.endswith("_share"):
        return pct(v, 1)
    if k == "video_hours" and isinstance(v, (int, float)):
        return _duration(v * 3600)
    if isinstance(v, float) and k.startswith(("median", "mean")):
        return f"{v:,.0f}"
    return fmt(v)


def _cards(headline: dict) -> str:
    def label(k):
        return "video" if k == "video_hours" else k.replace("_", " ")

    return '<div class="cards">' + "".join(
        f'<div class="card{" alert" if (k == "balanced" and v is False) or (k == "error" and v) else ""}">'
        f'<div class="v">{_card_value(k, v)}</div><div class="k">{html.escape(label(k))}</div></div>'
        for k, v in headline.items()) + "</div>"


def _dist_rows(blocks: dict) -> list[list]:
    cols = ["count", "sum", "mean", "min", *(f"p{q}" for q in PERCENTILES), "max"]
    return [[name] + [b.get(c) for c in cols] for name, b in blocks.items() if isinstance(b, dict) and b.get("count")]


DIST_HEAD = ["", "count", "sum", "mean", "min", *(f"p{q}" for q in PERCENTILES), "max"]

SECTIONS = (("accounting", "Kept, dropped and errors"), ("tokens", "Tokens per sample"), ("images", "Images"),
            ("videos", "Videos"), ("boxes", "Grounding boxes"), ("sources", "Per source"), ("scores", "Scores"),
            ("categories", "Per category"))


def _q(block: dict | None, key: str):
    return (block or {}).get(key) if isinstance(block, dict) else None


def _n(v) -> str:
    """A number inside a sentence: 1,298 · 0.553 · 3.24."""
    if v is None:
        return "–"
    if isinstance(v, float) and v.is_integer() or isinstance(v, int):
        return f"{int(v):,}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


# -------------------------------------------------------------------- one sentence per section


def take_accounting(stats: dict) -> str:
    acc = stats.get("accounting", {})
    pre = stats.get("kind") == "preflight"
    n_in, kept = acc.get("inputs") or 0, acc.get("kept") or 0
    s = (f"<b>{kept:,} of {n_in:,}</b> inputs {'would be ' if pre else ''}kept (<b>{pct(acc.get('kept_share'))}</b>); "
         f"{acc.get('dropped', 0):,} {'would be ' if pre else ''}dropped, {acc.get('error', 0):,} errors")
    rules = sorted(acc.get("by_rule", []), key=lambda r: -r["count"])
    if rules:
        r = rules[0]
        s += (f". Top reason: <b>{html.escape(r['stage'])} / {html.escape(r['rule'])}</b> "
              f"({r['status']}, {r['count']:,} = {pct(r['count'] / n_in if n_in else None)} of inputs)")
        if len(rules) > 1:
            s += f"; {len(rules)} reasons in all"
    return s + "."


def take_tokens(stats: dict) -> str:
    t = stats.get("tokens", {})
    tot = t.get("total") or {}
    bits = []
    if t.get("visual_share_of_total") is not None:
        bits.append(f"visual tokens are <b>{pct(t['visual_share_of_total'])}</b> of all {_n(tot.get('sum'))} tokens")
    elif tot.get("sum") is not None:
        bits.append(f"{_n(tot.get('sum'))} tokens in all")
    if tot.get("count"):
        bits.append(f"median sequence <b>{_n(tot.get('p50'))}</b>, p95 <b>{_n(tot.get('p95'))}</b>, "
                    f"max {_n(tot.get('max'))} tokens")
    sup = t.get("supervised") or {}
    if sup.get("sum") and tot.get("sum"):
        bits.append(f"{pct(sup['sum'] / tot['sum'])} of tokens are supervised (assistant turns)")
    ml = stats.get("max_length") or {}
    if ml.get("max_length") and ml.get("over") is not None:
        bits.append(f"<b>{ml['over']:,}</b> samples ({pct(ml.get('share'), 1)}) exceed max_length {ml['max_length']:,}")
    s = "; ".join(bits)
    return (s[:1].upper() + s[1:] + ".") if s else "No token counts."


def _size(block: dict, side: str) -> str | None:
    b = block.get(side) or {}
    w, h = _q(b.get("width"), "p50"), _q(b.get("height"), "p50")
    return f"{_n(w)}×{_n(h)}" if w is not None and h is not None else None


def take_images(stats: dict) -> str:
    im = stats.get("images", {})
    n_samples = _q(im.get("per_sample"), "count")
    s = f"<b>{im.get('total', 0):,}</b> images"
    if im.get("samples_with_images") is not None and n_samples:
        s += f" in {im['samples_with_images']:,} of {n_samples:,} samples"
    tops = (im.get("original") or {}).get("top_sizes_wxh") or []
    if tops:
        s += f"; most common size {html.escape(tops[0]['value'])} ({tops[0]['count']:,})"
    px0, px1 = _q((im.get("original") or {}).get("pixels"), "p50"), _q((im.get("resized") or {}).get("pixels"), "p50")
    if px0 is not None and px1 is not None:
        s += f"; median pixels {px0 / 1e6:.2g} MP → <b>{px1 / 1e6:.2g} MP</b> after resize"
    if im.get("downscaled") is not None:
        s += f" ({im['downscaled']:,} downscaled, {im.get('upscaled', 0):,} upscaled)"
    tpi = im.get("tokens_per_image") or {}
    if tpi.get("count"):
        s += f"; <b>{_n(tpi.get('p50'))}</b> tokens per image (median; p95 {_n(tpi.get('p95'))})"
    return s + "."


def take_videos(stats: dict) -> str:
    v = stats.get("videos", {})
    s = f"<b>{v.get('total', 0):,}</b> videos"
    if v.get("resize"):
        s += f" (frames resized as {html.escape(v['resize'])})"
    if v.get("total_duration_s") is not None:
        s += f", {_duration(v['total_duration_s'])} in all"
    d, fr, sf = v.get("duration_s") or {}, v.get("sampled_frames") or {}, v.get("sample_fps") or {}
    if d.get("count"):
        s += f"; median <b>{_duration(d.get('p50'))}</b> long"
    if fr.get("count"):
        s += f", <b>{_n(fr.get('p50'))}</b> frames sampled"
        if sf.get("count"):
            s += f" at {_n(sf.get('p50'))} fps"
    a, b = _size(v, "original"), _size(v, "resized")
    if a and b:
        s += f"; median frame {a} → {b} px"
    return s + "."


def take_boxes(stats: dict) -> str:
    b = stats.get("boxes", {})
    ps = b.get("per_sample") or {}
    n = ps.get("count") or 0
    s = f"<b>{b.get('total', 0):,}</b> grounding boxes"
    if b.get("samples_with_boxes") is not None and n:
        s += f" in {b['samples_with_boxes']:,} of {n:,} samples ({pct(b['samples_with_boxes'] / n)})"
    if ps.get("max") is not None:
        s += f"; at most {_n(ps['max'])} per sample"
    return s + "."


def take_sources(stats: dict) -> str:
    rows = stats.get("sources", [])
    if not rows:
        return "No sources."
    tok = sum(r.get("total_tokens") or 0 for r in rows)
    big = max(rows, key=lambda r: r.get("inputs") or 0)
    s = (f"<b>{len(rows):,}</b> source{'s' if len(rows) != 1 else ''}; largest <b>{html.escape(big['source'])}</b> "
         f"({big.get('inputs', 0):,} inputs")
    if tok and big.get("total_tokens") is not None:
        s += f", {pct(big['total_tokens'] / tok)} of tokens"
    s += ")"
    if len(rows) > 1:
        low = min(rows, key=lambda r: (r.get("kept_share") if r.get("kept_share") is not None else 1.0))
        s += f"; lowest kept share <b>{html.escape(low['source'])}</b> ({pct(low.get('kept_share'))})"
    return s + "."


def take_scores(stats: dict) -> str:
    sc = stats.get("scores", {})
    if not sc:
        return "No scores."
    n = max((b.get("count") or 0) for b in sc.values())
    total = ((stats.get("tokens") or {}).get("total") or {}).get("sum")
    s = f"<b>{len(sc)}</b> score column{'s' if len(sc) != 1 else ''} on {n:,} samples"
    at50 = [d for b in sc.values() for d in b.get("threshold_at_decile", []) if d.get("decile") == 50
            and b.get("min") != b.get("max")]
    if at50:
        ks = [d["kept_share"] for d in at50]
        s += f"; a cut at a column's median keeps {pct(min(ks))}–{pct(max(ks))} of samples"
        if total:
            kt = [d["kept_tokens"] / total for d in at50]
            s += f" and <b>{pct(min(kt))}–{pct(max(kt))}</b> of tokens"
    const = [k for k, b in sc.items() if b.get("count") and b.get("min") == b.get("max")]
    if const:
        s += "; constant (no use as a filter): " + ", ".join(f"<b>{html.escape(k)}</b>" for k in const)
    missing = {k: b.get("missing") for k, b in sc.items() if b.get("missing")}
    if missing:
        s += "; missing values: " + ", ".join(f"{html.escape(k)} {v:,}" for k, v in missing.items())
    return s + "."


# -------------------------------------------------------------------------- tables per section


def _details(*tables: str, label: str = "table") -> str:
    body = "".join(t for t in tables if t)
    if not body:
        return ""
    return f"<details><summary>{html.escape(label)}</summary><div class=\"tables\">{body}</div></details>"


def _pct_cell(v) -> RawHTML | None:
    return None if v is None else RawHTML(pct(v, 1))


def tables_accounting(stats: dict) -> str:
    acc = stats.get("accounting", {})
    out = []
    if acc.get("by_rule"):
        out.append(table(["status", "stage", "rule", "count", "share", "value p50", "examples"], [
            [r["status"], r["stage"], r["rule"], r["count"], _pct_cell(r["share"]), (r.get("value") or {}).get("p50"),
             ", ".join(e["id"] for e in r["examples"])] for r in sorted(acc["by_rule"], key=lambda r: -r["count"])],
            left=3))
    if acc.get("by_stage"):
        out.append(table(["stage", "dropped", "error"],
                         [[k, v.get("dropped"), v.get("error")] for k, v in acc["by_stage"].items()]))
    return _details(*out, label=f"table: {len(acc.get('by_rule', []))} reasons, by stage")


def tables_tokens(stats: dict) -> str:
    out = [table(DIST_HEAD, _dist_rows(stats.get("tokens", {})))]
    ml = stats.get("max_length")
    if ml:
        out.append(table(["max_length", "samples over"], [[int(k), v] for k, v in ml.get("over_limit", {}).items()]
                         + ([[f"{ml['max_length']} (configured)", ml.get("over")]] if ml.get("max_length") else [])))
    return _details(*out, label="table: percentiles" + (", length limits" if ml else ""))


def tables_media(block: dict) -> str:
    rows = {}
    for side in ("original", "resized"):
        for f in ("width", "height", "pixels", "aspect_ratio_w_over_h"):
            if f in block.get(side, {}):
                rows[f"{side} {f}"] = block[side][f]
    for f in ("tokens_per_image", "per_sample", "duration_s", "fps", "sample_fps", "sampled_frames"):
        if isinstance(block.get(f), dict):
            rows[f.replace("_", " ")] = block[f]
    out = table(DIST_HEAD, _dist_rows(rows))
    tops = block.get("original", {}).get("top_sizes_wxh", [])
    if tops:
        out += ('<p class="sub">most common original sizes (w×h): ' +
                ", ".join(f"{html.escape(t['value'])} ({t['count']})" for t in tops) + "</p>")
    return _details(out, label="table: percentiles")


def tables_boxes(stats: dict) -> str:
    return _details(table(DIST_HEAD, _dist_rows({"boxes per sample": stats["boxes"]["per_sample"]})),
                    label="table: percentiles")


def tables_sources(stats: dict) -> str:
    rows = stats.get("sources", [])
    return _details(table(["source", "inputs", "kept", "dropped", "error", "kept share", "tokens", "mean tokens"], [
        [r["source"], r["inputs"], r["kept"], r["dropped"], r["error"], _pct_cell(r["kept_share"]),
         r.get("total_tokens"), r.get("mean_tokens")] for r in rows]), label=f"table: {len(rows)} sources")


def tables_scores(stats: dict) -> str:
    sc = stats.get("scores", {})
    out = [table(DIST_HEAD + ["missing"], [row + [sc[row[0]].get("missing")] for row in _dist_rows(sc)])]
    for name, b in sc.items():
        out.append(f'<div><p class="sub"><b>{html.escape(name)}</b>: keep score {"≤" if b.get("keep_if") == "<=" else "≥"} threshold{" (lower is better)" if b.get("keep_if") == "<=" else ""}</p>' +
                   table(["decile", "threshold", "kept", "kept share", "kept tokens"],
                         [[f"p{d['decile']}", d["threshold"], d["kept"], _pct_cell(d["kept_share"]), d["kept_tokens"]]
                          for d in b.get("threshold_at_decile", [])]) + "</div>")
    return _details(*out, label="table: percentiles, what each decile threshold keeps")


STAGE_NAMES = {"scored": "scored", "after_rules": "after rules", "selected": "selected"}


def take_categories(stats: dict) -> str:
    cats = stats["categories"]
    name = "category.coarse" if "category.coarse" in cats else next(iter(cats))
    block = cats[name]
    total = sum(r["scored"]["tokens"] for r in block.values())
    top = max(block, key=lambda c: block[c]["scored"]["tokens"])
    s = (f"<b>{len(block)}</b> labels in <b>{html.escape(name)}</b>; the largest, <b>{html.escape(top)}</b>, holds "
         f"{pct(block[top]['scored']['tokens'] / total if total else None)} of the tokens")
    if "selected" in block[top]:
        n = sum(r["scored"]["samples"] for r in block.values())
        k = sum(r["selected"]["samples"] for r in block.values())
        kt = sum(r["selected"]["tokens"] for r in block.values())
        s += (f"; the selection keeps <b>{k:,}</b> of {n:,} samples ({pct(kt / total if total else None)} of tokens)")
    return s + "."


def tables_categories(stats: dict) -> str:
    """One table per label column: samples and tokens per label, per stage (scored; after the --rule
    drops and selected when a selection exists): the numbers `vlprep select` prints."""
    out = []
    for name, block in stats["categories"].items():
        stages = list(next(iter(block.values()), {}))
        totals = {st: sum(r[st]["tokens"] for r in block.values()) for st in stages}
        head = ["label"] + [f"{STAGE_NAMES.get(st, st)} {k}" for st in stages for k in ("samples", "tokens")]
        head += [f"{STAGE_NAMES.get(st, st)} token share" for st in stages[-1:]]
        rows = [[label] + [r[st][k] for st in stages for k in ("samples", "tokens")]
                + [_pct_cell(r[st]["tokens"] / totals[st] if totals[st] else None) for st in stages[-1:]]
                for label, r in block.items()]
        rows.append([RawHTML("<b>all</b>")] + [sum(r[st][k] for r in block.values()) for st in stages
                                               for k in ("samples", "tokens")] + [None])
        out.append(f'<div><p class="sub">per <b>{html.escape(name)}</b></p>{table(head, rows)}</div>')
    return '<div class="tables">' + "".join(out) + "</div>"


def _present(stats: dict, key: str) -> bool:
    if key == "accounting":
        return bool(stats.get("accounting"))
    if key == "tokens":
        return bool(stats.get("tokens"))
    if key in ("images", "videos"):
        return bool(stats.get(key, {}).get("total"))
    if key == "boxes":
        return bool((stats.get("boxes", {}).get("per_sample") or {}).get("count")) and bool(stats["boxes"].get("total"))
    return bool(stats.get(key))


TAKE = {"accounting": take_accounting, "tokens": take_tokens, "images": take_images, "videos": take_videos,
        "boxes": take_boxes, "sources": take_sources, "scores": take_scores, "categories": take_categories}
TABLES = {"accounting": tables_accounting, "tokens": tables_tokens,
          "images": lambda st: tables_media(st["images"]), "videos": lambda st: tables_media(st["videos"]),
          "boxes": tables_boxes, "sources": tables_sources, "scores": tables_scores, "categories": tables_categories}


def render_report(stats: dict, figs: list[tuple[str, bytes]] | None) -> str:
    """Headline cards, then per section: heading, one-sentence takeaway, plot, tables folded in <details>."""
    kind = stats.get("kind", "?")
    title = "Pre-flight of a raw corpus" if kind == "preflight" else "Prepared dataset report"
    by_section: dict[str | None, list] = {}
    for f in figs or []:
        by_section.setdefault(getattr(f, "section", None), []).append(f)
    present = [(k, label) for k, label in SECTIONS if _present(stats, k) or by_section.get(k)]
    parts = [f"<h1>vlprep stats — {title}</h1>",
             f'<div class="sub">{html.escape(stats.get("path", ""))} · preset {html.escape(", ".join(stats.get("presets", [])) or "?")}</div>',
             _cards(stats.get("headline", {})),
             "<nav>" + "".join(f'<a href="#{k}">{html.escape(label)}</a>' for k, label in present) + "</nav>"]
    acc = stats.get("accounting", {})
    if acc and not acc.get("balanced", True):
        parts.append(f'<p class="warn">Accounting does not balance: inputs {acc["inputs"]} ≠ kept {acc["kept"]} + dropped '
                     f'{acc["dropped"]} + error {acc["error"]}, or manifest rows {acc.get("manifest_rows")} ≠ kept.</p>')
    for key, label in present:
        if key == "accounting" and kind == "preflight":
            label = "Would be kept, dropped and errors"
        if key in ("images", "videos"):
            label = f"{label}: {fmt(stats[key]['total'])}"
        sec = [f'<section id="{key}"><h2>{html.escape(label)}</h2>']
        if _present(stats, key):
            sec.append(f'<p class="take">{TAKE[key](stats)}</p>')
        sec.append(figures_html(by_section.pop(key, []), caption=False))
        if _present(stats, key):
            sec.append(TABLES[key](stats))
        parts.append("".join(sec) + "</section>")
    rest = [f for k, fs in by_section.items() for f in fs]
    if rest:
        parts.append('<section id="more"><h2>More plots</h2>' + figures_html(rest) + "</section>")
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
