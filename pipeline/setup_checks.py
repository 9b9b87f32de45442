"""Warnings about a broken setup, so that a job on a wrong media_root or an empty file never ends
as a silent "success": checked before the run (from the planned units) and after it (from the ledger).
"""
from __future__ import annotations


from collections import Counter

SAME_FAILURE_SHARE = 0.5    # more than this share of a source failing one way is a setup problem
_MIN_RECORDS = 4            # ... once the source has a few records


def before_run(cfg, units) -> list[str]:
    """Missing media roots and sources without records (from the planned units, before any work)."""
    from .sources import expand_sources

    warnings = []
    seen = {src.name: 0 for src in expand_sources(cfg)}
    for u in units:
        seen[u.source.name] = seen.get(u.source.name, 0) + u.n_records
    for i, spec in enumerate(cfg.sources):
        if spec.media_root is not None and not cfg.resolve_path(spec.media_root).is_dir():
            warnings.append(f"sources.{i}.media_root {spec.media_root!r} is not a folder "
                            f"({cfg.resolve_path(spec.media_root)}): every media file of that source will be "
                            f"media_missing; fix it with --set sources.{i}.media_root=DIR")
    for name, n in seen.items():
        if n == 0:
            warnings.append(f"source {name} holds no records")
    return warnings


def after_run(ledger, max_error_share: float | None = None) -> list[str]:
    """Sources where more than half the records failed the same way; the job's error share."""
    cols = ledger.select(["source", "status", "stage", "rule", "message"]).to_pylist()
    per_source: dict[str, Counter] = {}
    example: dict[tuple, str] = {}
    for r in cols:
        key = (r["status"], r["stage"], r["rule"])
        per_source.setdefault(r["source"], Counter())[key] += 1
        example.setdefault((r["source"], *key), r["message"] or "")
    warnings = []
    for source, counts in per_source.items():
        n = sum(counts.values())
        for (status, stage, rule), k in counts.most_common():
            if status == "kept" or n < _MIN_RECORDS or k <= SAME_FAILURE_SHARE * n:
                continue
            msg = example[(source, status, stage, rule)].splitlines()[0][:200] if example[(source, status, stage, rule)] else ""
            warnings.append(f"{k} of {n} records of {source} ended {status} at {stage}/{rule}: a setup problem "
                            f"(media_root, format, preset)?" + (f" e.g. {msg}" if msg else ""))
    if max_error_share is not None and cols:
        errors = sum(r["status"] == "error" for r in cols)
        if errors > max_error_share * len(cols):
            warnings.append(f"{errors} of {len(cols)} records are errors, above max_error_share={max_error_share:g}: "
                            f"the job fails (exit 1)")
    return warnings


def over_error_share(ledger, max_error_share: float | None) -> bool:
    if max_error_share is None or ledger.num_rows == 0:
        return False
    errors = sum(s == "error" for s in ledger.column("status").to_pylist())
    return errors > max_error_share * ledger.num_rows



