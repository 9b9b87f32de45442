"""Calibration of the repetition rules' defaults (docs/filters.md, issue #10).

Prints, per kind of answer, the share that the default `char_repetition` / `word_repetition` rules
drop, beside the previous defaults (char 0.5, word 0.3), on tests/repetition_corpus.py: clean
instruction answers whose structure repeats by nature, and degenerate generations.

    python bench/repetition_calibration.py
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from filters.base import FilterContext, build_filters  # noqa: E402
from processors.sample import Message, Sample, TextPart  # noqa: E402
from repetition_corpus import clean, degenerate  # noqa: E402

OLD = {"char_repetition": {"max_ratio": 0.5}, "word_repetition": {"max_ratio": 0.3}}


def dropped(rules, text: str) -> bool:
    s = Sample(id="x", messages=[Message("user", [TextPart("Describe the image.")]),
                                     Message("assistant", [TextPart(text)])])
    return any(not r(s, FilterContext()).keep for r in rules)


def shares(data, rules) -> dict:
    by = defaultdict(lambda: [0, 0])
    for kind, text in data:
        by[kind][0] += dropped(rules, text)
        by[kind][1] += 1
    return by


def main() -> None:
    def repetition_rules(cfg):
        return [r for r in build_filters(cfg) if getattr(r, "name", "") in ("char_repetition", "word_repetition")]

    new, old = repetition_rules({}), repetition_rules(OLD)
    print(f"defaults now: " + ", ".join(f"{r.name} n={r.n} max_ratio={r.max_ratio:g}" for r in new))
    print(f"{'set':<11}{'kind':<19}{'n':>5}{'dropped now':>14}{'dropped before':>16}")
    for name, data in (("clean", clean()), ("degenerate", degenerate())):
        a, b = shares(data, new), shares(data, old)
        tot = [0, 0, 0]
        for kind in a:
            tot[0] += a[kind][0]; tot[1] += b[kind][0]; tot[2] += a[kind][1]
            print(f"{name:<11}{kind:<19}{a[kind][1]:>5}{a[kind][0] / a[kind][1]:>14.1%}{b[kind][0] / b[kind][1]:>16.1%}")
        print(f"{name:<11}{'ALL':<19}{tot[2]:>5}{tot[0] / tot[2]:>14.1%}{tot[1] / tot[2]:>16.1%}")


if __name__ == "__main__":
    main()
