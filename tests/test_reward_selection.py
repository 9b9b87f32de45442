"""Selection rules: parsing, thresholds, quantiles, and/or, NaN, blame."""
from __future__ import annotations

import numpy as np
import pytest

from filters.reward.selection import Rule, RuleError

T = {
    "id": np.array(["a", "b", "c", "d", "e"], dtype=object),
    "text.qa_relevance": np.array([0.9, 0.1, 0.5, 0.3, np.nan]),
    "pixels.blank": np.array([0.0, 0.0, 0.9, 0.2, 0.1]),
    "pixels.sharpness": np.array([10.0, 20.0, 30.0, 40.0, 50.0]),
}


def test_threshold_and():
    v = Rule("text.qa_relevance > 0.2 and pixels.blank < 0.5").evaluate(T)
    assert v.keep.tolist() == [True, False, False, True, True]  # e: NaN relevance does not apply
    assert v.reason(1) == ("text.qa_relevance > 0.2", 0.1)
    assert v.reason(2) == ("pixels.blank < 0.5", 0.9)


def test_or_blames_the_first_alternative_and_rules_are_anded():
    v = Rule(["text.qa_relevance >= 0.5 or pixels.sharpness > 35", "pixels.blank <= 0.5"]).evaluate(T)
    assert v.keep.tolist() == [True, False, False, True, True]
    assert v.reason(1)[0] == "text.qa_relevance >= 0.5"
    assert v.reason(2)[0] == "pixels.blank <= 0.5"
    assert v.dropped_by_rule() == {"text.qa_relevance >= 0.5": 1, "pixels.blank <= 0.5": 1}


def test_quantile_and_chained_and_reversed_comparisons():
    v = Rule("q(pixels.sharpness) > 0.25").evaluate(T)  # 25th percentile of 10..50 is 20
    assert v.keep.tolist() == [False, False, True, True, True]
    assert v.reason(0) == ("q(pixels.sharpness) > 0.25 (pixels.sharpness > 20)", 10.0)
    assert Rule("15 < pixels.sharpness <= 40").evaluate(T).keep.tolist() == [False, True, True, True, False]
    assert Rule("0.3 <= text.qa_relevance").evaluate(T).keep.tolist() == [True, False, True, True, True]
    assert Rule("(pixels.blank == 0 or pixels.sharpness > 45) and -1 < text.qa_relevance").evaluate(
        T).keep.tolist() == [True, True, False, False, True]


@pytest.mark.parametrize("bad, msg", [
    ("text.qa_relevance >", "not valid"),
    ("__import__('os').system('x') > 1", "only function is q"),
    ("not pixels.blank > 0.5", "'not' is not supported"),
    ("pixels.blank > pixels.sharpness", "one column and one number"),
    ("q(pixels.blank) > 2", "quantile level in \\[0, 1\\]"),
    ("pixels.blank + 1 > 0", "score column"),
    ("pixels.blank in [1]", "not a comparison"),
])
def test_bad_rules_are_specific_errors(bad, msg):
    with pytest.raises(RuleError, match=msg):
        Rule(bad).evaluate(T)


def test_unknown_column_lists_the_available_ones():
    with pytest.raises(RuleError, match=r"\['vlm.visual_gain'\].*available: \['pixels.blank'"):
        Rule("vlm.visual_gain > 0").evaluate(T)
