"""Text length rules. Lengths count the user and assistant turns; the system prompt is left out
because it is usually the template default and says nothing about the sample.

Words are whitespace-separated tokens (so CJK text counts few words; bound it by chars)."""
from __future__ import annotations

from processors.sample import Sample

from .base import FilterContext, Threshold


def turn_texts(sample: Sample, roles: tuple[str, ...] = ("user", "assistant")) -> list[str]:
    return [m.text for m in sample.messages if m.role in roles]


def n_words(text: str) -> int:
    return len(text.split())


def _total_chars(s: Sample, c: FilterContext) -> list[float]:
    return [sum(len(t) for t in turn_texts(s))]


def _total_words(s: Sample, c: FilterContext) -> list[float]:
    return [sum(n_words(t) for t in turn_texts(s))]


def _turn_chars(s: Sample, c: FilterContext) -> list[float]:
    return [len(t) for t in turn_texts(s)]


def _turn_words(s: Sample, c: FilterContext) -> list[float]:
    return [n_words(t) for t in turn_texts(s)]


TEXT_RULES = {
    "text_min_chars": (_total_chars, "min", "text chars (all turns)", "sample"),
    "text_max_chars": (_total_chars, "max", "text chars (all turns)", "sample"),
    "text_min_words": (_total_words, "min", "text words (all turns)", "sample"),
    "text_max_words": (_total_words, "max", "text words (all turns)", "sample"),
    "turn_max_chars": (_turn_chars, "max", "turn chars", "turn"),
    "turn_max_words": (_turn_words, "max", "turn words", "turn"),
}


def text_rule(name: str, limit: float) -> Threshold:
    measure, bound, what, item = TEXT_RULES[name]
    return Threshold(name, "raw", measure, limit, bound, what, item, cost=1)
