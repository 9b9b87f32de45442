"""Config key -> rule. `build_filters` turns a mapping such as

    {"image_min_side": 28, "max_visual_tokens": 16384, "char_repetition": {"n": 10, "max_ratio": 0.5}}

into filters, on top of the defaults below. A key's value:
  number rules   a number sets the limit; None or False switches the rule off; True uses the default
  switch rules   True / False (None = off)
  param rules    a dict of parameters (merged over the defaults); True = defaults; None / False = off
The ledger's `rule` is the config key, so a dropped sample points straight at the setting to change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from processors.errors import did_you_mean

from . import box_rules, image_rules, ocr_rules, repetition, structure_rules, text_rules, video_rules
from .base import PHASES, Filter


@dataclass(frozen=True)
class RuleSpec:
    key: str
    kind: str  # "number" | "switch" | "params"
    default: Any  # number / bool / dict of params / None (off)
    make: Callable[..., Filter]
    doc: str
    params: dict[str, Any] = field(default_factory=dict)  # for "params": parameter -> default


def _number(key: str, default, make, doc) -> RuleSpec:
    return RuleSpec(key, "number", default, make, doc)


def _switch(key: str, default: bool, make, doc) -> RuleSpec:
    return RuleSpec(key, "switch", default, make, doc)


def _params(key: str, params: dict, make, doc, enabled: bool = True) -> RuleSpec:
    return RuleSpec(key, "params", dict(params) if enabled else None, make, doc, dict(params))


SPECS: dict[str, RuleSpec] = {s.key: s for s in [
    # raw: the Sample alone
    _switch("conversation_structure", True, lambda: structure_rules.ConversationStructure(),
            "optional system first, then user/assistant alternating from user, last is assistant, "
            "assistant turns have text"),
    _switch("media_placeholders", True, lambda: structure_rules.MediaPlaceholders(),
            "image/video parts match Sample.images/videos one to one and in order; no placeholder "
            "text left in text parts; no video under a preset without video"),
    *[_number(k, 1 if k == "text_min_chars" else None, (lambda k: lambda v: text_rules.text_rule(k, v))(k), doc)
      for k, doc in [
          ("text_min_chars", "characters over user+assistant turns"),
          ("text_max_chars", "characters over user+assistant turns"),
          ("text_min_words", "whitespace words over user+assistant turns"),
          ("text_max_words", "whitespace words over user+assistant turns"),
          ("turn_max_chars", "characters of the longest user/assistant turn"),
          ("turn_max_words", "whitespace words of the longest user/assistant turn"),
      ]],
    _params("char_repetition", {"n": 10, "max_ratio": repetition.CHAR_MAX_RATIO, "roles": ["assistant"], "min_chars": 100},
            lambda **p: repetition.char_repetition(**p),
            "share of characters inside character n-grams that occur more than once"),
    _params("word_repetition", {"n": 5, "max_ratio": repetition.WORD_MAX_RATIO, "roles": ["assistant"], "min_chars": 100},
            lambda **p: repetition.word_repetition(**p),
            "share of word characters inside word n-grams that occur more than once (Gopher)"),
    _params("truncated_answer", {"min_chars": 200, "min_tail_chars": 40},
            lambda **p: ocr_rules.TruncatedAnswer(**p),
            "assistant turn ends with an open bracket / dangling comma, or a long answer stops mid-sentence"),
    _switch("unbalanced_markup", True, lambda: ocr_rules.UnbalancedMarkup(),
            "assistant turns: HTML tags, brackets, LaTeX \\begin/\\end, $$, code fences, **, special-token pairs"),
    _switch("malformed_table", True, lambda: ocr_rules.MalformedTable(),
            "markdown/HTML table rows with a different column count than the table's usual one"),
    _params("table_empty_cells", {"max_ratio": 0.5, "min_cells": 4},
            lambda **p: ocr_rules.TableEmptyCells(**p),
            "share of empty cells over the assistant's tables"),
    # media: + header sizes, video probes, boxes
    _number("image_max_ratio", 200, image_rules.max_ratio, "longer / shorter side, worst image"),
    _number("video_max_ratio", 200, video_rules.max_ratio, "longer / shorter side, worst video"),
    _number("image_min_side", None, image_rules.min_side, "shorter side in pixels, smallest image"),
    _number("image_max_side", None, image_rules.max_side, "longer side in pixels, largest image"),
    _number("image_min_pixels", None, image_rules.min_pixels, "height x width, smallest image"),
    _number("image_max_pixels", None, image_rules.max_pixels, "height x width, largest image"),
    _number("max_visual_tokens", None, image_rules.max_visual_tokens,
            "sum over images of (H/f)(W/f) after the preset's smart_resize (f = patch x merge: 28, or 32 for qwen3-vl)"),
    *[_number(k, None, (lambda k: lambda v: video_rules.video_rule(k, v))(k), f"{doc}, worst video")
      for k, doc in [
          ("video_min_duration", "duration in seconds"),
          ("video_max_duration", "duration in seconds"),
          ("video_min_fps", "average frame rate"),
          ("video_max_fps", "average frame rate"),
          ("video_min_frames", "frame count"),
          ("video_max_frames", "frame count"),
      ]],
    _number("box_in_image", 0.0, lambda v: box_rules.BoxInImage(tolerance=float(v)),
            "pixels the worst box reaches outside its image (limit = tolerance)"),
    _number("box_min_side", 1.0, lambda v: box_rules.BoxMinSide(min_side=float(v)),
            "shorter side of the smallest box in pixels (empty/inverted boxes are <= 0)"),
    # encoded: + EncodedSample
    _number("max_seq_length", None, lambda v: structure_rules.MaxSeqLength(int(v)), "len(input_ids)"),
    _number("min_supervised_tokens", 1, lambda v: structure_rules.MinSupervisedTokens(int(v)),
            "label positions != -100"),
]}


def _unknown(what: str, name: str, valid) -> ValueError:
    return ValueError(f"unknown {what} {name!r}{did_you_mean(name, valid)}; valid: {', '.join(sorted(valid))}")


def _make(spec: RuleSpec, value: Any) -> Filter | None:
    if value is None or value is False:
        return None
    if spec.kind == "switch":
        if value is not True:
            raise ValueError(f"filter {spec.key!r} is a switch: use true/false, got {value!r}")
        return spec.make()
    if spec.kind == "number":
        if value is True:
            value = spec.default
            if value is None:
                raise ValueError(f"filter {spec.key!r} has no default limit; give a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"filter {spec.key!r} takes a number (or null to switch it off), got {value!r}")
        return spec.make(value)
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"filter {spec.key!r} takes a mapping of {sorted(spec.params)}, got {value!r}")
    for name in value:
        if name not in spec.params:
            raise _unknown(f"parameter of filter {spec.key!r}:", name, spec.params)
    return spec.make(**{**spec.params, **value})


def build_filters(config: dict | None = None, *, defaults: bool = True) -> list[Filter]:
    """Filters for `config` layered over the defaults (or alone with defaults=False), ordered by
    phase and then cheapest first. Unknown keys raise ValueError listing the valid ones."""
    config = dict(config or {})
    for key in config:
        if key not in SPECS:
            raise _unknown("filter config key", key, SPECS)
    filters = []
    for key, spec in SPECS.items():
        value = config.get(key, spec.default if defaults else None)
        f = _make(spec, value)
        if f is not None:
            filters.append(f)
    return sorted(filters, key=lambda f: (PHASES.index(f.phase), f.cost))


def default_config() -> dict[str, Any]:
    """The defaults as a config mapping (what job.json records when nothing is overridden)."""
    return {k: (dict(s.default) if isinstance(s.default, dict) else s.default) for k, s in SPECS.items()}
