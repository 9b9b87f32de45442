"""Repetition: the share of characters that sit inside n-grams occurring more than once
(Gopher's "fraction of characters in duplicate n-grams", Rae et al. 2021, Table A1).

Every occurrence of a duplicated n-gram counts, the first one included, and a character covered by
several duplicated n-grams counts once, so the ratio is in [0, 1]: "abcabc" with n=3 is 1.0,
"abcabcx" is 6/7. Degenerate model-generated answers ("the the the ...", looping OCR lines) score
high; normal prose scores low.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from processors.sample import Sample

from .base import FilterContext, Verdict


def _covered_fraction(units: list[str], n: int) -> float:
    """Share of the units' characters covered by n-grams (of units) that occur at least twice."""
    total = sum(len(u) for u in units)
    if total == 0 or len(units) < n:
        return 0.0
    grams = [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(units)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            for j in range(i, i + n):
                covered[j] = True
    return sum(len(u) for u, c in zip(units, covered) if c) / total


# Longer turns are measured on their first MAX_MEASURED_CHARS characters: the n-gram table costs
# memory proportional to len(text) * n, and a loop shows itself long before 100 000 characters.
MAX_MEASURED_CHARS = 100_000


def char_repetition_ratio(text: str, n: int) -> float:
    """Fraction of characters of `text` (its first MAX_MEASURED_CHARS) inside character n-grams
    that occur more than once."""
    text = text[:MAX_MEASURED_CHARS]
    if not text or len(text) < n:
        return 0.0
    # Same measure as _covered_fraction on single characters, with substrings instead of tuples
    # and a running coverage end, since answers can be tens of thousands of characters long.
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    counts = Counter(grams)
    covered, reach = 0, 0
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered += i + n - max(i, reach)
            reach = i + n
    return covered / len(text)


def word_repetition_ratio(text: str, n: int) -> float:
    """Fraction of word characters (whitespace excluded) inside word n-grams that occur more than once."""
    return _covered_fraction(text[:MAX_MEASURED_CHARS].split(), n)


@dataclass(frozen=True)
class RepetitionFilter:
    """Drops a sample with a `roles` turn that repeats itself above `max_ratio`.

    Each turn is measured on its own (degenerate looping happens inside one generation), and turns
    shorter than `min_chars` are skipped: in a one-line answer a repeated phrase like "a red circle
    and a red square" is ordinary language, not a loop. The reported value is the worst turn's ratio.
    """

    name: str
    unit: str  # "char" | "word"
    n: int
    max_ratio: float
    roles: tuple[str, ...] = ("assistant",)
    min_chars: int = 100
    phase: str = "raw"
    cost: int = 3

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict:
        ratio_fn = char_repetition_ratio if self.unit == "char" else word_repetition_ratio
        turns = [m.text for m in sample.messages if m.role in self.roles]
        ratios = [ratio_fn(t, self.n) for t in turns if len(t) >= self.min_chars]
        ratio = max(ratios, default=0.0)
        if ratio > self.max_ratio:
            return Verdict(False, self.name, ratio,
                           f"{ratio:.3f} of characters sit in repeated {self.unit} {self.n}-grams "
                           f"(limit {self.max_ratio:g})")
        return Verdict(True, self.name, ratio)


# Defaults calibrated in docs/filters.md (bench/repetition_calibration.py): clean answers whose
# structure repeats by nature (comparisons, lists, tables, receipts, grounding JSON) stay below them,
# generation loops, one-token runs and cycling key-mashing go above.
CHAR_MAX_RATIO = 0.8
WORD_MAX_RATIO = 0.6


def char_repetition(n: int = 10, max_ratio: float = CHAR_MAX_RATIO, roles=("assistant",), min_chars: int = 100) -> RepetitionFilter:
    return RepetitionFilter("char_repetition", "char", int(n), float(max_ratio), tuple(roles), int(min_chars))


def word_repetition(n: int = 5, max_ratio: float = WORD_MAX_RATIO, roles=("assistant",), min_chars: int = 100) -> RepetitionFilter:
    return RepetitionFilter("word_repetition", "word", int(n), float(max_ratio), tuple(roles), int(min_chars))
