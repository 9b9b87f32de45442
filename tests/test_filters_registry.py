import re
from pathlib import Path

import pytest

from filters import SPECS, Filter, build_filters, default_config
from filters.base import build_filters as build_filters_from_base
from filters.repetition import CHAR_MAX_RATIO

DOC = Path(__file__).resolve().parent.parent / "docs" / "filters.md"

DEFAULT_RULES = [
    ("raw", "conversation_structure"), ("raw", "media_placeholders"), ("raw", "text_min_chars"),
    ("raw", "truncated_answer"), ("raw", "unbalanced_markup"), ("raw", "malformed_table"),
    ("raw", "table_empty_cells"), ("raw", "char_repetition"), ("raw", "word_repetition"),
    ("media", "image_max_ratio"), ("media", "video_max_ratio"), ("media", "box_min_side"), ("media", "box_in_image"),
    ("encoded", "min_supervised_tokens"),
]


def test_defaults_in_phase_then_cost_order():
    fs = build_filters()
    assert [(f.phase, f.name) for f in fs] == DEFAULT_RULES
    assert all(isinstance(f, Filter) for f in fs)
    assert [f.name for f in build_filters_from_base({})] == [f.name for f in fs]


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        build_filters({"image_min_sid": 28})
    msg = str(err.value)
    assert msg.startswith("unknown filter config key 'image_min_sid' (did you mean 'image_min_side'?); valid: ")
    listed = msg.split("valid: ")[1].split(", ")
    assert listed == sorted(SPECS)


def test_unknown_parameter_of_a_param_rule():
    with pytest.raises(ValueError, match=r"unknown parameter of filter 'char_repetition': 'max_ration'.*valid: max_ratio, min_chars, n, roles"):
        build_filters({"char_repetition": {"max_ration": 0.2}})


@pytest.mark.parametrize(
    "config, message",
    [
        ({"image_min_side": "28"}, "filter 'image_min_side' takes a number"),
        ({"image_min_side": True}, "filter 'image_min_side' has no default limit"),
        ({"unbalanced_markup": 1}, "filter 'unbalanced_markup' is a switch"),
        ({"char_repetition": 0.5}, "filter 'char_repetition' takes a mapping"),
    ],
)
def test_wrong_value_types(config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_filters(config)


def test_values_set_limits_and_switch_rules_off():
    fs = build_filters({"image_min_side": 28, "char_repetition": {"n": 8}, "word_repetition": None,
                        "unbalanced_markup": False, "image_max_ratio": True})
    by_name = {f.name: f for f in fs}
    assert "word_repetition" not in by_name and "unbalanced_markup" not in by_name
    assert by_name["image_min_side"].limit == 28
    assert by_name["image_max_ratio"].limit == 200
    rep = by_name["char_repetition"]
    assert (rep.n, rep.max_ratio, rep.roles) == (8, CHAR_MAX_RATIO, ("assistant",))  # other params keep defaults
    # box_in_image's default tolerance is 0: a zero limit is a value, not "off"
    assert build_filters({"box_in_image": 0}, defaults=False)[0].tolerance == 0.0


def test_defaults_false_builds_only_what_is_asked():
    assert [f.name for f in build_filters({"max_seq_length": 4096}, defaults=False)] == ["max_seq_length"]
    assert build_filters(None, defaults=False) == []


def test_default_config_round_trips():
    cfg = default_config()
    assert set(cfg) == set(SPECS)
    assert cfg["image_max_ratio"] == 200 and cfg["max_seq_length"] is None
    assert [f.name for f in build_filters(cfg, defaults=False)] == [name for _, name in DEFAULT_RULES]


def test_docs_table_lists_every_rule_with_its_default():
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`([a-z_]+)`\s*\|\s*([a-z]+)\s*\|\s*(.*?)\s*\|", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    assert set(rows) == set(SPECS)
    for key, spec in SPECS.items():
        phase, default = rows[key]
        built = spec.make(**spec.params) if spec.kind == "params" else (
            spec.make() if spec.kind == "switch" else spec.make(spec.default if spec.default is not None else 1))
        assert phase == built.phase, key
        if spec.default is None:
            assert default == "off", key
        elif spec.kind == "params":
            for name, value in spec.params.items():
                assert f"{name}={value}".replace("'", "").replace('"', "") in default.replace('"', ""), key
        else:
            assert default == ("on" if spec.default is True else f"{spec.default:g}"), key
