import pytest

from filters import FilterContext, Verdict, build_filters, run_filters
from filters.repetition import char_repetition_ratio, word_repetition_ratio
from processors.sample import Message, Sample, TextPart


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("abcabc", 3, 1.0),  # "abc" at 0 and 3 covers every character
        ("abcabcx", 3, 6 / 7),
        ("abcdef", 3, 0.0),
        ("aaaa", 2, 1.0),  # "aa" overlaps itself
        ("ab", 3, 0.0),  # shorter than n
        ("", 3, 0.0),
    ],
)
def test_char_repetition_ratio_by_hand(text, n, expected):
    assert char_repetition_ratio(text, n) == pytest.approx(expected, abs=0, rel=1e-15)


def test_word_repetition_ratio_by_hand():
    # bigram ("the", "cat") occurs twice: words 0,1 and 4,5 -> 12 of 17 word characters
    assert word_repetition_ratio("the cat sat on the cat", 2) == 12 / 17
    # whitespace does not count and does not break words
    assert word_repetition_ratio("the  cat\nsat on\tthe cat", 2) == 12 / 17
    assert word_repetition_ratio("one two three four five", 2) == 0.0
    assert word_repetition_ratio("ha ha ha ha", 2) == 1.0


def sample(user, assistant):
    return Sample("r", [Message("user", [TextPart(user)]), Message("assistant", [TextPart(assistant)])])


def test_repetition_filters_read_assistant_text_only():
    fs = build_filters({"word_repetition": {"n": 2, "max_ratio": 0.5, "min_chars": 0}}, defaults=False)
    looping = sample("Describe.", "the cat sat on the cat")
    assert run_filters(fs, looping, FilterContext(), "raw") == Verdict(
        False, "word_repetition", 12 / 17, "0.706 of characters sit in repeated word 2-grams (limit 0.5)")
    # the same words in the question do not count
    assert run_filters(fs, sample("the cat sat on the cat", "A cat."), FilterContext(), "raw") is None


def test_char_repetition_filter_on_a_degenerate_answer():
    fs = build_filters({"char_repetition": {"n": 10, "max_ratio": 0.5}}, defaults=False)
    loop = "The total is 1,234. " * 6  # a model stuck in a loop
    v = run_filters(fs, sample("Read it.", loop), FilterContext(), "raw")
    assert (v.rule, v.value) == ("char_repetition", 1.0)
    prose = ("A brown dog runs across a wide green field while two children throw a red ball "
             "towards the old wooden fence near the river.")
    v = fs[0](sample("Describe.", prose), FilterContext())
    assert (v.keep, v.value) == (True, 0.0)


def test_default_repetition_limits_keep_ordinary_prose():
    prose = ("The chart compares quarterly revenue for three regions. Europe grows steadily from 12 to 18 "
             "million, Asia doubles in the second half of the year, and North America stays flat at about "
             "20 million. A footnote says the figures are unaudited and exclude currency effects.")
    assert run_filters(build_filters(), sample("Summarise the chart.", prose), FilterContext(), "raw") is None


def test_char_ratio_matches_the_definition_on_random_strings():
    import random

    def naive(text, n):
        grams = [text[i:i + n] for i in range(len(text) - n + 1)]
        covered = {j for i, g in enumerate(grams) if grams.count(g) > 1 for j in range(i, i + n)}
        return len(covered) / len(text) if text and len(text) >= n else 0.0

    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 60)))
        n = rng.randint(1, 6)
        assert char_repetition_ratio(text, n) == pytest.approx(naive(text, n), abs=1e-12), (text, n)


def test_short_answers_are_not_measured_and_turns_are_measured_separately():
    short = "There are 4 shapes: a yellow circle and a yellow triangle and a blue circle and a blue square."
    assert len(short) < 100
    fs = build_filters({"char_repetition": {"n": 10, "max_ratio": 0.5}}, defaults=False)
    assert fs[0](sample("What shapes?", short), FilterContext()) == Verdict(True, "char_repetition", 0.0)
    # measured when the threshold allows it: the phrase repeats inside this one line
    fs0 = build_filters({"char_repetition": {"n": 10, "max_ratio": 0.5, "min_chars": 0}}, defaults=False)
    assert fs0[0](sample("What shapes?", short), FilterContext()).value > 0.5
    # two different long turns that share sentences with each other are not a loop inside a turn
    a = ("The red square sits in the top left corner of the picture, next to a small green triangle "
         "that points upwards towards the edge.")
    two = Sample("r", [Message("user", [TextPart("Describe.")]), Message("assistant", [TextPart(a)]),
                       Message("user", [TextPart("Again?")]), Message("assistant", [TextPart(a)])])
    assert fs[0](two, FilterContext()).keep
