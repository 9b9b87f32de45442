"""Issue #10: the repetition rules' defaults keep clean instruction data and still drop loops
(the calibration of docs/filters.md, on tests/repetition_corpus.py)."""
from __future__ import annotations

from collections import Counter

from filters.base import FilterContext, build_filters
from processors.formats import parse_record
from repetition_corpus import clean, degenerate


def _dropped(rules, text: str) -> bool:
    s = parse_record({"messages": [{"role": "user", "content": "Describe the images."},
                                   {"role": "assistant", "content": text}]}, source="x", index=0)
    return any(not r(s, FilterContext()).keep for r in rules)


RULES = [r for r in build_filters({}) if getattr(r, "name", "") in ("char_repetition", "word_repetition")]


def test_both_repetition_rules_are_on_by_default():
    assert sorted(r.name for r in RULES) == ["char_repetition", "word_repetition"]


def test_clean_instruction_answers_lose_under_one_percent_and_no_kind_is_singled_out():
    data = clean()
    lost = Counter(kind for kind, text in data if _dropped(RULES, text))
    assert sum(lost.values()) < 0.01 * len(data), lost
    assert all(n <= 1 for n in lost.values()), lost


def test_degenerate_generations_are_still_dropped():
    data = degenerate()
    kept = Counter(kind for kind, text in data if not _dropped(RULES, text))
    assert sum(kept.values()) <= 0.05 * len(data), kept
    per_kind = Counter(kind for kind, _ in data)
    assert all(kept[k] <= 0.1 * per_kind[k] for k in per_kind), kept


def test_the_two_image_comparison_of_the_issue_is_kept():
    text = ("First: The image shows a man riding a red bicycle along a quiet street lined with trees. "
            "Second: The image shows a man riding a blue bicycle along a busy street lined with shops.")
    assert not _dropped(RULES, text)
    assert _dropped(RULES, "The image shows a man riding a bicycle. " * 12)
