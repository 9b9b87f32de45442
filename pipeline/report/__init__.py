"""`vlprep stats`: reports on a raw corpus (pre-flight) and on a prepare OUT directory.

    from pipeline.report import build_report
    report = build_report("out/")            # or a config YAML / json / jsonl / parquet / folder
    report.stats                              # the stats.json document

Submodules: summary (percentiles, histograms), tables (reading OUT), prepared, preflight
(+ predict, records), figures, html, terminal, compare.
"""
from __future__ import annotations

from pathlib import Path

from .summary import Report
from .tables import ReportInputError, is_prepared_dir

__all__ = ["Report", "ReportInputError", "build_report"]


def build_report(path: str | Path, **preflight_kwargs) -> Report:
    """A prepared-output report when PATH is a prepare OUT dir, else a pre-flight of the raw corpus."""
    path = Path(path)
    if is_prepared_dir(path):
        from .prepared import build_prepared_report

        return build_prepared_report(path)
    from .preflight import build_preflight_report

    return build_preflight_report(path, **preflight_kwargs)
