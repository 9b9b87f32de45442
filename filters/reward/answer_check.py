"""Answer checkers for `vlprep verify`: does a model's answer confirm the sample's reference answer?

One checker per kind of reference, chosen by `answer_kind(question, reference, fmt)`:

  box     the reference holds grounding boxes in the shard's format (processors/grounding.py:
          Qwen2-VL <|box_start|>(x1,y1),(x2,y2)<|box_end|> in 0..1000, Qwen2.5-VL {"bbox_2d": [...]} in
          resized-image pixels, Qwen-VL <box>). Boxes are compared as written (both answers use the
          same coordinate frame, and IoU does not change under a per-axis scale); match when the counts
          agree and every reference box can be paired one-to-one with a model box at IoU >=
          `iou_threshold` (default 0.5; a maximum bipartite matching, so order and a greedy pairing do
          not matter). Value: the mean IoU per reference box of the greedy-by-IoU pairing (0 for
          reference boxes left unpaired).
  choice  a multiple-choice question (options A-H in the question) answered by a letter: the letter
          the model picks ("C", "(C)", "C. blue", "The answer is C") equals the reference's
  number  a reference whose final answer is a number ("14", "$23.45", "45%", "#### 14",
          "\\boxed{14}", "... She spends $14."): the model's last number equals it (relative 1e-6;
          thousands separators and currency/percent signs ignored; zero..twenty as words)
  text    anything else: VQA-style normalisation (lower case, punctuation and articles a/an/the
          dropped, whitespace collapsed), then equal -- or, for a short reference (<= 5 words), the
          reference appears as whole words in the model's answer ("It is blue." confirms "Blue")

What the checkers cannot do: judge paraphrases of long answers (captions, explanations: use the
`text`/`vlm` scorers instead), see that "not blue" contradicts "blue", or check points and quads.
"""
from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass

KINDS = ("box", "choice", "number", "text")
SHORT_REFERENCE_WORDS = 5
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_NUM = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")
_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_WORD_NUM = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.I)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_GSM = re.compile(r"####\s*([^\n]+)")
_OPTION_LINES = re.compile(r"(?m)^\s*\(?([A-H])[\).:]\s+\S")
_OPTION_INLINE = re.compile(r"\(([A-H])\)\s*\S")
_CHOICE_WORDS = re.compile(r"\b(options?|choices?|choose|select)\b", re.I)
_LETTER_PATTERNS = [
    re.compile(r"^\s*\(?([A-H])\)?\s*(?:[.:)\]]|$)"),                       # "C", "(C)", "C. blue", "C:"
    re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-H])\)?(?![a-z])", re.I),  # "The answer is (C)"
    re.compile(r"^\s*([A-H])\s*$"),
]


@dataclass(frozen=True)
class Check:
    kind: str
    match: bool | None  # None: the reference gives nothing to check against
    value: float        # box: mean IoU; number: |difference|; else 1.0 / 0.0 (NaN when match is None)


def normalize_text(s: str) -> str:
    s = s.lower().translate(_PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def check_text(answer: str, reference: str) -> Check:
    a, r = normalize_text(answer), normalize_text(reference)
    if not r:
        return Check("text", None, math.nan)
    ok = a == r or (len(r.split()) <= SHORT_REFERENCE_WORDS and re.search(rf"(?<!\S){re.escape(r)}(?!\S)", a) is not None)
    return Check("text", ok, float(ok))


def final_number(text: str) -> float | None:
    """The number a text ends on: \\boxed{..}, then '#### ..', then the last number written (digits or
    zero..twenty as a word)."""
    for pat in (_BOXED, _GSM):
        m = pat.findall(text)
        if m:
            text = m[-1]
            break
    found = [(m.start(), float(m.group(0).replace(",", ""))) for m in _NUM.finditer(text)]
    found += [(m.start(), float(_WORDS[m.group(1).lower()])) for m in _WORD_NUM.finditer(text)]
    return max(found)[1] if found else None


def is_numeric_reference(reference: str) -> bool:
    """A reference that *is* a number (units/currency allowed) or states a final one (####, \\boxed)."""
    if _BOXED.search(reference) or _GSM.search(reference):
        return True
    core = re.sub(r"[\s$€£¥%,]|(?<=\d)(?:st|nd|rd|th)\b", "", reference.strip().rstrip("."))
    core = re.sub(r"[a-zA-Z]+$", "", core)  # a trailing unit: "12kg", "5 cm"
    return bool(re.fullmatch(r"[-+]?\d+(?:\.\d+)?", core)) or bool(
        re.fullmatch(r"(?i)\s*(" + "|".join(_WORDS) + r")\s*\.?\s*", reference))


def check_number(answer: str, reference: str) -> Check:
    r = final_number(reference)
    if r is None:
        return Check("number", None, math.nan)
    a = final_number(answer)
    if a is None:
        return Check("number", False, math.inf)
    diff = abs(a - r)
    return Check("number", diff <= 1e-6 * max(1.0, abs(r)), diff)


def options_in(question: str) -> list[str]:
    """The option letters a question offers (lines 'A. ...' / '(B) ...'), in order."""
    letters = _OPTION_LINES.findall(question) or _OPTION_INLINE.findall(question)
    return sorted(set(letters))


def choice_letter(text: str, allowed: list[str] | None = None) -> str | None:
    for pat in _LETTER_PATTERNS:
        m = pat.search(text)
        if m and (not allowed or m.group(1) in allowed):
            return m.group(1)
    return None


def check_choice(answer: str, reference: str, allowed: list[str] | None = None) -> Check:
    r = choice_letter(reference, allowed)
    if r is None:
        return Check("choice", None, math.nan)
    ok = choice_letter(answer, allowed) == r
    return Check("choice", ok, float(ok))


def boxes_in(text: str, fmt: str) -> list[tuple[float, float, float, float]]:
    """Boxes of `fmt` (qwen2-vl | qwen2.5-vl | qwen-vl) in `text`, coordinates as written."""
    from processors.grounding import Box, parse_grounding

    out = []
    # original_size only scales the decoded objects; `raw` keeps the written coordinates
    for span in parse_grounding(text, fmt, original_size=(1000, 1000), resized_size=(1000, 1000)):
        out += [tuple(raw) for obj, raw in zip(span.objects, span.raw) if isinstance(obj, Box)]
    return out


def iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = min(a[0], a[2]), min(a[1], a[3]), max(a[0], a[2]), max(a[1], a[3])
    bx1, by1, bx2, by2 = min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])
    iw, ih = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def check_boxes(answer: str, reference: str, fmt: str, iou_threshold: float = 0.5) -> Check:
    ref = boxes_in(reference, fmt)
    if not ref:
        return Check("box", None, math.nan)
    pred = boxes_in(answer, fmt)
    if not pred:
        return Check("box", False, 0.0)
    m = [[iou(p, r) for r in ref] for p in pred]
    pairs = sorted(((m[i][j], i, j) for i in range(len(pred)) for j in range(len(ref))), reverse=True)
    used_p, used_r, ious = set(), set(), []
    for v, i, j in pairs:
        if i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
            ious.append(v)
    mean = sum(ious) / len(ref)  # unmatched reference boxes count as IoU 0
    ok = len(pred) == len(ref) and matched_pairs(m, iou_threshold) == len(ref)
    return Check("box", ok, mean)


def matched_pairs(ious: list[list[float]], threshold: float) -> int:
    """The most one-to-one (model box, reference box) pairs with IoU >= `threshold`: a maximum
    bipartite matching (augmenting paths), so a valid pairing is found even where pairing greedily by
    IoU takes a box another reference needed."""
    owner: dict[int, int] = {}  # reference box -> model box

    def augment(i: int, seen: set) -> bool:
        for j, v in enumerate(ious[i]):
            if v >= threshold and j not in seen:
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, set()) for i in range(len(ious)))


def answer_kind(question: str, reference: str, fmt: str) -> str:
    if boxes_in(reference, fmt):
        return "box"
    opts = options_in(question)
    if (len(opts) >= 2 or _CHOICE_WORDS.search(question)) and choice_letter(reference, opts or None) is not None \
            and len(reference.split()) <= 8:
        return "choice"
    if is_numeric_reference(reference):
        return "number"
    return "text"


def check_answer(question: str, answer: str, reference: str, fmt: str, *, kind: str | None = None,
                 iou_threshold: float = 0.5) -> Check:
    kind = kind or answer_kind(question, reference, fmt)
    if kind == "box":
        return check_boxes(answer, reference, fmt, iou_threshold)
    if kind == "choice":
        return check_choice(answer, reference, options_in(question) or None)
    if kind == "number":
        return check_number(answer, reference)
    if kind == "text":
        return check_text(answer, reference)
    raise ValueError(f"unknown answer kind {kind!r}; choose from {list(KINDS)}")
