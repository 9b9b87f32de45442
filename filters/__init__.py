"""vlprep filters: small callables over a Sample that return a Verdict (keep, rule, value, reason).

    from filters import build_filters, run_filters, FilterContext
    filters = build_filters({"image_min_side": 28, "max_visual_tokens": 16384})
    verdict = run_filters(filters, sample, FilterContext(preset, image_sizes=[(480, 640)]), "media")

filters/reward/ holds the model stage (scorers, batching) and is not imported here.
"""
from .base import PHASES, Filter, FilterContext, Threshold, Verdict, evaluate_filters, run_filters
from .registry import SPECS, build_filters, default_config

__all__ = [
    "PHASES", "Filter", "FilterContext", "Threshold", "Verdict", "build_filters", "default_config",
    "evaluate_filters", "run_filters", "SPECS",
]
