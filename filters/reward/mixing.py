"""Mixing by category: per-category top-k, caps and exact ratios over a label column (docs/curation.md).

Applied by `vlprep select` after the threshold rules, to the samples those rules kept:

  keep-top  [LABEL=]P% | [LABEL=]N    within each category (or only LABEL) keep the best P % (floor) or N
                                      samples by the rank column
  cap       LABEL=P% | LABEL=N         at most P % of the final selection / N samples from LABEL
                                      (LABEL `*` = every category)
  mix       LABEL=W,LABEL=W,...        exact proportions W / sum(W) among the listed categories (others
                                      are dropped), as many samples as the scarcest category allows or
                                      exactly `total`

Which samples a category keeps: the rank column, highest first (a `-` prefix: lowest first; NaN
last), ties and the no-rank case broken by sha1(sample id), so the result depends on neither input
order nor anything random. Counts are exact: a cap of P % means count <= P/100 * final total, for the
final total that the caps themselves produce (a fixed point, computed by integer iteration).
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np

NO_LABEL = "(none)"
QUOTA = "quota "  # the first word of every ledger rule a quota (--keep-top/--cap/--mix) drops by


def is_quota_rule(rule: str | None) -> bool:
    """Whether a select-stage ledger rule is a quota's (else a --rule's)."""
    return bool(rule) and rule.startswith(QUOTA)
_SPEC = re.compile(r"^(?:(?P<label>[^=]+)=)?(?P<num>\d+(?:\.\d+)?)(?P<pct>%?)$")


class MixError(ValueError):
    """A quota option that cannot be applied; the message says which and what to change."""


@dataclass(frozen=True)
class Amount:
    label: str | None  # None: every category
    value: float
    percent: bool
    text: str

    def count(self, available: int) -> int:
        """keep-top: how many of `available` samples this amount keeps."""
        if self.percent:
            return min(available, math.floor(self.value / 100.0 * available + 1e-9))
        return min(available, int(self.value))


def parse_amount(text: str, option: str, *, need_label: bool) -> Amount:
    m = _SPEC.match(text.strip())
    if not m:
        raise MixError(f"{option} {text!r}: expected {'LABEL=' if need_label else '[LABEL=]'}N or "
                       f"{'LABEL=' if need_label else '[LABEL=]'}P% (e.g. ocr_document=20%)")
    label = m.group("label")
    label = label.strip() if label is not None else None
    if label in ("*", ""):
        label = None
    if need_label and m.group("label") is None:
        raise MixError(f"{option} {text!r}: name the category, e.g. {option} ocr_document={text} (or *={text})")
    value, pct = float(m.group("num")), bool(m.group("pct"))
    if pct and not 0 <= value <= 100:
        raise MixError(f"{option} {text!r}: a percentage must be in 0..100")
    if not pct and value != int(value):
        raise MixError(f"{option} {text!r}: a count must be a whole number (or add % for a share)")
    return Amount(label, value, pct, text.strip())


def parse_mix(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in [p for p in text.split(",") if p.strip()]:
        label, sep, w = part.partition("=")
        try:
            weight = float(w.rstrip("%"))
        except ValueError:
            weight = -1.0
        if not sep or not label.strip() or weight < 0:
            raise MixError(f"--mix {text!r}: expected LABEL=WEIGHT,LABEL=WEIGHT,... (e.g. general_vqa=50,ocr_document=20)")
        out[label.strip()] = out.get(label.strip(), 0.0) + weight
    if not out or sum(out.values()) <= 0:
        raise MixError(f"--mix {text!r}: give at least one category a positive weight")
    return out


@dataclass
class MixPlan:
    by: str                                  # the label column, e.g. category.coarse
    keep_top: tuple[Amount, ...] = ()
    caps: tuple[Amount, ...] = ()
    mix: dict[str, float] | None = None
    total: int | None = None
    rank: str | None = None                  # score column; "-col" = lower is better

    def __post_init__(self):
        if self.mix is not None and self.caps:
            raise MixError("use either --mix (exact proportions) or --cap (upper bounds), not both")
        if self.total is not None and self.mix is None:
            raise MixError("--total needs --mix (it sets the size of the proportioned selection)")
        if self.total is not None and self.total < 0:
            raise MixError(f"--total must be >= 0, got {self.total}")

    @property
    def active(self) -> bool:
        return bool(self.keep_top or self.caps or self.mix is not None)

    @property
    def rank_column(self) -> str | None:
        return self.rank.lstrip("-") if self.rank else None


def order_within(ids: list[str], rank: np.ndarray | None, descending: bool = True) -> np.ndarray:
    """Indices from best to worst: rank (NaN last), then sha1(id) for ties and no rank."""
    h = np.array([int.from_bytes(hashlib.sha1(i.encode()).digest()[:8], "big") for i in ids], dtype=np.uint64)
    if rank is None:
        return np.lexsort((h,))
    r = np.asarray(rank, dtype=np.float64)
    key = np.where(np.isnan(r), np.inf, -r if descending else r)
    return np.lexsort((h, key))


@dataclass
class MixResult:
    keep: np.ndarray                         # bool over the input rows
    reasons: dict[int, tuple[str, float, str]]  # dropped row -> (ledger rule, value, message)
    counts: dict[str, dict[str, int]]        # label -> {"available", "after_top", "kept"}


def apply_mix(plan: MixPlan, ids: list[str], labels: np.ndarray, eligible: np.ndarray,
              rank: np.ndarray | None) -> MixResult:
    """Which of the `eligible` rows (those the rules kept) the plan keeps, and why each other is dropped."""
    labels = np.array([NO_LABEL if (v is None or v != v) else str(v) for v in labels], dtype=object)
    eligible = np.asarray(eligible, dtype=bool)
    present = sorted({labels[i] for i in np.flatnonzero(eligible)})
    named = {a.label for a in (*plan.keep_top, *plan.caps) if a.label is not None} | set(plan.mix or {})
    unknown = sorted(named - set(labels.tolist()))
    if unknown:
        raise MixError(f"categor{'y' if len(unknown) == 1 else 'ies'} {unknown} not in column {plan.by}; "
                       f"present: {sorted(set(labels.tolist()))}")
    descending = not (plan.rank or "").startswith("-")
    by_label = {c: np.flatnonzero(eligible & (labels == c)) for c in present}
    ordered = {c: idx[order_within([ids[i] for i in idx], None if rank is None else rank[idx], descending)]
               for c, idx in by_label.items()}
    reasons: dict[int, tuple[str, float, str]] = {}
    counts = {c: {"available": len(v), "after_top": len(v), "kept": len(v)} for c, v in ordered.items()}
    value_of = (lambda i: float(rank[i])) if rank is not None else (lambda i: float("nan"))
    how = f", ranked by {plan.rank}" if plan.rank else ", in sha1(id) order (no --rank)"

    def drop(rows, rule, msg):
        for i in rows:
            reasons[int(i)] = (rule, value_of(i), msg)

    # 1. keep-top per category (a label-specific amount wins over the `*` one)
    if plan.keep_top:
        generic = [a for a in plan.keep_top if a.label is None]
        for c, idx in ordered.items():
            spec = next((a for a in plan.keep_top if a.label == c), generic[-1] if generic else None)
            if spec is None:
                continue
            k = spec.count(len(idx))
            rule = f"{QUOTA}{plan.by}={c} keep-top {spec.value:g}{'%' if spec.percent else ''}"
            drop(idx[k:], rule, f"{plan.by}={c}: outside the top {k} of {len(idx)}{how}")
            ordered[c] = idx[:k]
            counts[c]["after_top"] = counts[c]["kept"] = k

    avail = {c: len(v) for c, v in ordered.items()}
    target = dict(avail)
    why: dict[str, tuple[str, str]] = {}
    # 2a. exact proportions
    if plan.mix is not None:
        w = {c: plan.mix.get(c, 0.0) for c in avail}
        for c in avail:
            if w[c] == 0:
                target[c] = 0
                why[c] = (f"{QUOTA}{plan.by}={c} not in --mix", f"{plan.by}={c} is not among the --mix categories")
        wsum = sum(w.values())
        pos = [c for c in avail if w[c] > 0]
        if wsum <= 0:
            raise MixError(f"--mix names no category present after the rules; present: {present}")
        feasible = min(math.floor(avail[c] * wsum / w[c] + 1e-9) for c in pos)
        total = feasible if plan.total is None else plan.total
        if total > feasible:
            scarce = min(pos, key=lambda c: avail[c] * wsum / w[c])
            raise MixError(f"--total {total} is not reachable: {scarce} has {avail[scarce]} samples for "
                           f"{100 * w[scarce] / wsum:.4g}% of the mix (at most {feasible} in all); lower --total")
        exact = {c: total * w[c] / wsum for c in pos}
        base = {c: math.floor(exact[c] + 1e-9) for c in pos}
        rest = total - sum(base.values())
        for c in sorted(pos, key=lambda c: (-(exact[c] - base[c]), pos.index(c)))[:rest]:
            base[c] += 1
        for c in pos:
            target[c] = base[c]
            why[c] = (f"{QUOTA}{plan.by}={c} mix {100 * w[c] / wsum:.4g}%",
                      f"{plan.by}={c}: {base[c]} of {total} in the --mix proportion {w[c]:g}/{wsum:g}")
    # 2b. caps: a fixed point of n_c = min(avail_c, N_c, floor(share_c * sum(n)))
    if plan.caps:
        caps_of = {c: [a for a in plan.caps if a.label in (c, None)] for c in avail}
        share_caps = {c: min((a.value / 100 for a in caps_of[c] if a.percent), default=None) for c in avail}
        if all(share_caps[c] is not None for c in avail) and avail and sum(share_caps.values()) < 1 - 1e-12:
            raise MixError(f"the --cap shares cover every category present ({present}) and sum to "
                           f"{100 * sum(share_caps.values()):.4g}% < 100%: nothing could be kept; raise a cap "
                           "or leave a category uncapped")
        for c in avail:
            for a in caps_of[c]:
                if not a.percent and int(a.value) < target[c]:
                    target[c] = int(a.value)
        while True:
            total = sum(target.values())
            new = {c: min(target[c], math.floor(share_caps[c] * total + 1e-9)) if share_caps[c] is not None
                   else target[c] for c in avail}
            if new == target:
                break
            target = new
        for c in avail:
            if target[c] < avail[c]:
                binding = [a for a in caps_of[c] if (not a.percent and int(a.value) == target[c])] or caps_of[c]
                a = binding[0]
                why[c] = (f"{QUOTA}{plan.by}={c} cap {a.text.split('=')[-1]}",
                          f"{plan.by}={c}: over its cap {a.text.split('=')[-1]} (kept {target[c]} of {avail[c]}"
                          f" of a selection of {sum(target.values())})")
    for c, idx in ordered.items():
        k = target[c]
        if k < len(idx):
            rule, msg = why[c]
            drop(idx[k:], rule, msg + how)
        counts[c]["kept"] = min(k, len(idx))
    keep = eligible.copy()
    keep[list(reasons)] = False
    return MixResult(keep, reasons, counts)


def category_table(labels, tokens: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, dict]:
    """{label: {stage: {"samples", "tokens"}}} for each named mask (e.g. scored, after_rules, selected)."""
    labels = np.array([NO_LABEL if (v is None or v != v) else str(v) for v in labels], dtype=object)
    out: dict[str, dict] = {}
    for c in sorted(set(labels.tolist())):
        here = labels == c
        out[c] = {stage: {"samples": int((here & m).sum()), "tokens": int(np.nansum(tokens[here & m]))}
                  for stage, m in masks.items()}
    return out


# -- `vlprep select` glue ---------------------------------------------------------------------------

def add_mix_arguments(p) -> None:
    p.add_argument("--by", default="category.coarse",
                   help="label column to mix by (default category.coarse; category.fine for fine categories)")
    p.add_argument("--keep-top", action="append", default=[], metavar="[LABEL=]P%|N",
                   help="within each category (or LABEL) keep the best P%% / N by --rank (repeatable)")
    p.add_argument("--cap", action="append", default=[], metavar="LABEL=P%|N",
                   help="at most P%% of the selection / N samples from LABEL (* = every category; repeatable)")
    p.add_argument("--mix", metavar="LABEL=W,...", help="exact proportions among the listed categories")
    p.add_argument("--total", type=int, help="with --mix: exactly this many samples (default: as many as fit)")
    p.add_argument("--rank", metavar="[-]COLUMN",
                   help="score column that orders samples within a category, highest first (-COLUMN: lowest)")


def plan_from_args(args) -> MixPlan:
    return MixPlan(
        by=args.by,
        keep_top=tuple(parse_amount(t, "--keep-top", need_label=False) for t in args.keep_top),
        caps=tuple(parse_amount(t, "--cap", need_label=True) for t in args.cap),
        mix=parse_mix(args.mix) if args.mix else None, total=args.total, rank=args.rank)


@dataclass
class SelectMix:
    keep: np.ndarray
    reasons: dict[int, tuple[str, float, str]]
    summary: dict

    def render(self) -> str:
        rows = self.summary["categories"]
        stages = ["scored", "after_rules", "selected"]
        head = f"  {'category (' + self.summary['by'] + ')':<34}" + "".join(
            f"{s + ' n':>14}{s + ' tok':>16}" for s in stages)
        lines = [head]
        for c, block in rows.items():
            lines.append(f"  {c:<34}" + "".join(f"{block[s]['samples']:>14,}{block[s]['tokens']:>16,}" for s in stages))
        return "\n".join(lines)


def mix_after_rules(plan: MixPlan, ids: list[str], keep: np.ndarray, table: dict[str, np.ndarray],
                    labels: dict[str, np.ndarray], tokens: np.ndarray) -> SelectMix | None:
    """Apply `plan` to the rows the rules kept; None when no quota was asked and no label column exists."""
    if plan.by not in labels:
        if not plan.active:
            return None
        have = sorted(labels) or "none"
        raise MixError(f"--by {plan.by}: no such label column in the scores (label columns: {have}); run "
                       "`vlprep score OUT --scorers category` first, or pass --by COLUMN")
    rank = None
    if plan.rank_column:
        if plan.rank_column not in table:
            raise MixError(f"--rank {plan.rank}: no numeric score column {plan.rank_column!r}; "
                           f"available: {sorted(k for k in table if k != 'id')}")
        rank = table[plan.rank_column]
    if plan.active:
        res = apply_mix(plan, ids, labels[plan.by], keep, rank)
        new_keep, reasons = res.keep, res.reasons
    else:
        new_keep, reasons = keep, {}
    cats = category_table(labels[plan.by], tokens, {"scored": np.ones(len(ids), dtype=bool),
                                                    "after_rules": keep, "selected": new_keep})
    summary = {"by": plan.by, "rank": plan.rank, "keep_top": [a.text for a in plan.keep_top],
               "caps": [a.text for a in plan.caps], "mix": plan.mix, "total": plan.total, "categories": cats}
    return SelectMix(new_keep, reasons, summary)
