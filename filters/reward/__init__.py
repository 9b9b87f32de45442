"""The model stage: scorers over prepared shards (text, pixels, vlm), token-budget batching, the
score stage (local or Ray actors) and selection rules. See docs/scoring.md.

torch / transformers / sentence-transformers are imported lazily, inside the scorers.
"""
from .protocol import Scorer, ScorerError, resolve_device
from .selection import Rule, RuleError

__all__ = ["Scorer", "ScorerError", "resolve_device", "Rule", "RuleError"]
