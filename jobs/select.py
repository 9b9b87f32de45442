"""`vlprep select OUT --rule ...`: keep samples whose scores pass the rules.

Writes OUT/selection/manifest.parquet (kept manifest rows) and OUT/selection/ledger.parquet (the
prepare ledger, with samples dropped here marked status=dropped, stage=select, rule, value).
Nothing is deleted from the shards.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HELP = "keep samples whose scores pass threshold/quantile rules; writes OUT/selection/{manifest,ledger}.parquet"
DESCRIPTION = """Select samples by their scores (run `vlprep score` first).

A rule compares score columns with numbers, combined with and/or and parentheses; q(column) is the
column's quantile. Several --rule options must all pass. A NaN score (signal not applicable) passes.

Mixing by category (after the rules; needs a label column, e.g. `vlprep score --scorers category`;
docs/curation.md): --keep-top keeps the best share of each category by --rank, --cap bounds a
category's share or count, --mix sets exact proportions. Deterministic; the ledger names the quota.

examples:
  vlprep select out/ --rule "text.qa_relevance > 0.2 and pixels.blank < 0.5"
  vlprep select out/ --rule "q(pixels.sharpness) > 0.1" --rule "vlm.visual_gain > 0 or text.informativeness > 0.6"
  vlprep select out/ --keep-top 60% --rank vlm.visual_gain --cap ocr_document=20% --cap video=5000
  vlprep select out/ --mix general_vqa=40,ocr_document=20,chart_table=20,math_stem=20 --total 100000
"""


def add_arguments(p) -> None:
    p.add_argument("out_dir", help="output directory of `vlprep prepare` + `vlprep score`")
    p.add_argument("--rule", action="append", default=[], help="selection rule (repeatable; all must pass)")
    from filters.reward.mixing import add_mix_arguments

    add_mix_arguments(p)


def read_scores(out: Path):
    """Every scores/{unit}.parquet concatenated (units may carry different column sets)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((out / "scores").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no scores under {out / 'scores'}; run `vlprep score {out}` first")
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def run(args) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from filters.reward.mixing import MixError, mix_after_rules, plan_from_args
    from filters.reward.selection import Rule, RuleError
    from filters.reward.stage import _write_atomic

    out = Path(args.out_dir)
    try:
        plan = plan_from_args(args)
        if not args.rule and not plan.active:
            raise RuleError("nothing to select by: pass --rule \"column > value\" and/or --keep-top/--cap/--mix")
        rule = Rule(args.rule) if args.rule else None
        manifest = pq.read_table(out / "manifest.parquet") if (out / "manifest.parquet").exists() else None
        ledger = pq.read_table(out / "ledger.parquet") if (out / "ledger.parquet").exists() else None
        if manifest is None or ledger is None:
            raise FileNotFoundError(f"{out} lacks manifest.parquet or ledger.parquet: run `vlprep prepare` first")
        scores = read_scores(out)
        ids = manifest.column("id").to_pylist()
        pos = {sid: i for i, sid in enumerate(scores.column("id").to_pylist())}
        missing = [sid for sid in ids if sid not in pos]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(ids)} manifest samples have no scores (first: "
                                    f"{missing[0]!r}); run `vlprep score {out}` to finish scoring")
        take = pa.array([pos[sid] for sid in ids], pa.int64())
        table, labels = {}, {}
        for name in scores.column_names:
            if name == "id":
                continue
            col = scores.column(name).take(take)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                labels[name] = np.asarray(col.to_pylist(), dtype=object)  # category labels
            else:
                table[name] = col.to_numpy(zero_copy_only=False).astype(np.float64)
        if rule is not None and set(rule.columns) & set(labels):
            raise RuleError(f"{sorted(set(rule.columns) & set(labels))} hold labels, not numbers; select by "
                            "category with --keep-top/--cap/--mix --by COLUMN")
        table["id"] = np.asarray(ids, dtype=object)
        verdict = rule.evaluate(table) if rule is not None else None
        keep = verdict.keep if verdict is not None else np.ones(len(ids), dtype=bool)
        dropped = {ids[i]: verdict.reason(i) for i in np.flatnonzero(~keep)}
        tokens = (manifest.column("n_tokens").to_numpy(zero_copy_only=False).astype(np.float64)
                  if "n_tokens" in manifest.column_names else np.zeros(len(ids)))
        mixed = mix_after_rules(plan, ids, keep, table, labels, tokens)
    except (RuleError, MixError, FileNotFoundError) as exc:
        print(f"vlprep select: {exc}", file=sys.stderr)
        return 2
    if mixed is not None:
        keep = mixed.keep
        dropped.update({ids[i]: r for i, r in mixed.reasons.items()})
    new_ledger = mark_dropped(ledger, dropped)
    sel = out / "selection"
    _write_atomic(manifest.filter(pa.array(keep)), sel / "manifest.parquet")
    _write_atomic(new_ledger, sel / "ledger.parquet")
    by_rule = verdict.dropped_by_rule() if verdict is not None else {}
    if mixed is not None:
        for text, _, _ in mixed.reasons.values():
            by_rule[text] = by_rule.get(text, 0) + 1
    summary = {"rules": args.rule, "scored": len(ids), "kept": int(keep.sum()), "dropped": len(dropped),
               "dropped_by_rule": by_rule}
    if mixed is not None:
        summary["mix"] = mixed.summary
    (sel / "selection.json").write_text(json.dumps(summary, indent=2) + "\n")

    status = new_ledger.column("status").to_pylist()
    n_in, n_kept = len(status), status.count("kept")
    n_drop, n_err = status.count("dropped"), status.count("error")
    print(f"selected {int(keep.sum())} of {len(ids)} scored samples ({len(dropped)} dropped by selection)")
    for text, n in sorted(by_rule.items(), key=lambda kv: -kv[1]):
        print(f"  {n:>8}  {text}")
    if mixed is not None:
        print(mixed.render())
    ok = n_in == n_kept + n_drop + n_err
    print(f"inputs {n_in} == kept {n_kept} + dropped {n_drop} + errors {n_err}: {'ok' if ok else 'MISMATCH'}")
    print(f"wrote {sel / 'manifest.parquet'} and {sel / 'ledger.parquet'}")
    return 0 if ok else 1


def mark_dropped(ledger, dropped: dict[str, tuple[str, float]]):
    """The ledger with the kept rows of `dropped` ids turned into stage=select drops."""
    import pyarrow as pa

    cols = {name: ledger.column(name).to_pylist() for name in ledger.column_names}
    for i, (sid, status) in enumerate(zip(cols["id"], cols["status"])):
        if status == "kept" and sid in dropped:
            text, value, *msg = dropped[sid]  # (rule, value) or a quota's (rule, value, message)
            cols["status"][i], cols["stage"][i], cols["rule"][i] = "dropped", "select", text
            cols["value"][i] = None if value != value else value
            cols["message"][i] = msg[0] if msg else f"score {value:.6g} fails selection rule {text}"
    return pa.table({name: pa.array(v, ledger.schema.field(name).type) for name, v in cols.items()})
