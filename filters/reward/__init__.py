"""The model stage: scorers over prepared shards (text, pixels, vlm; the curation scorers category,
vlm_category, grounding, query, verify), token-budget batching, the score stage (local or Ray actors),
selection rules and mixing by category. See docs/scoring.md and docs/curation.md.

torch / transformers / sentence-transformers are imported lazily, inside the scorers.
"""
from .protocol import Scorer, ScorerError, resolve_device
from .selection import Rule, RuleError

__all__ = ["Scorer", "ScorerError", "resolve_device", "Rule", "RuleError"]
