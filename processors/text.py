"""Text cleaning: pure functions that normalise the text of a Sample without changing its meaning.

Steps, in order (each can be switched off):
  1. NFC (the tokenizer applies NFC too; doing it here makes dedup keys and lengths agree with it)
  2. line endings (CRLF / CR / U+2028 / U+2029 -> "\\n") and control characters removed
     (keep "\\n" and "\\t"; drop BOM, zero-width space, word joiner — invisible noise from scrapes)
  3. HTML entities unescaped, but only well-formed ones ending in ";" (a URL's "&not=1" stays),
     and never in a way that would *create* a special token or grounding tag: `&lt;|box_start|&gt;`
     written as text must not turn into the real `<|box_start|>` token
  4. whitespace: other space characters -> " ", runs of spaces collapsed, trailing spaces cut,
     at most `max_blank_lines` empty lines in a row, outer whitespace stripped. Leading
     indentation and everything inside ``` fences is kept, because code and nested lists need it.

`clean_sample` returns a copy of the Sample with every TextPart cleaned and a report in
`sample.meta["text_clean"]` saying which steps changed how many parts.
"""
from __future__ import annotations

import copy
import html
import re
import unicodedata
from dataclasses import dataclass, field

from .sample import Sample, TextPart

STEPS = ("nfc", "control", "html", "whitespace")

# Special tokens (`<|im_start|>`, `<|box_start|>`, ...) and the tags the grounding formats and the
# qwen-vl template use; unescaping must never make new ones out of escaped text.
PROTECTED_MARKUP = re.compile(r"<\|[A-Za-z0-9_]+\|>|</?(?:ref|box|quad|img|imgpad|image|video)>")
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_ANGLE_ENTITY = re.compile(r"&(?:lt|gt|LT|GT|#0*6[02]|#[xX]0*3[cCeE]);")
_LINE_BREAKS = re.compile(r"\r\n|\r|\u2028|\u2029|\x85")
# Invisible format characters that only add noise; ZWJ/ZWNJ stay (emoji sequences, Persian script).
_INVISIBLE = {"\ufeff", "\u200b", "\u2060", "\u180e"}
_FENCE = re.compile(r"^\s*(```|~~~)")
_SPACE_RUN = re.compile(r" {2,}")


@dataclass
class CleanReport:
    """What `clean_sample` changed: parts seen, parts changed, and per step how many parts it changed."""

    parts: int = 0
    changed: int = 0
    steps: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STEPS})

    def to_dict(self) -> dict:
        return {"parts": self.parts, "changed": self.changed, "steps": dict(self.steps)}


def remove_control_chars(text: str) -> str:
    text = _LINE_BREAKS.sub("\n", text)
    return "".join(
        ch
        for ch in text
        if ch in "\n\t" or (unicodedata.category(ch) != "Cc" and ch not in _INVISIBLE)
    )


def _unescape_entity(match: re.Match, keep_angles: bool) -> str:
    entity = match.group(0)
    if keep_angles and _ANGLE_ENTITY.fullmatch(entity):
        return entity
    return html.unescape(entity)


def unescape_html(text: str) -> str:
    """Unescape `&amp;`, `&#39;`, `&eacute;` ... without creating special tokens or grounding tags."""
    if "&" not in text:
        return text
    out = []
    pos = 0
    # Existing markup is copied verbatim; only the text between it is unescaped.
    for m in PROTECTED_MARKUP.finditer(text):
        out.append(_unescape_segment(text[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_unescape_segment(text[pos:]))
    return "".join(out)


def _unescape_segment(segment: str) -> str:
    unescaped = _ENTITY.sub(lambda m: _unescape_entity(m, keep_angles=False), segment)
    if PROTECTED_MARKUP.search(unescaped) and not PROTECTED_MARKUP.search(segment):
        # Decoding `&lt;`/`&gt;` would forge markup here, so those two stay escaped.
        unescaped = _ENTITY.sub(lambda m: _unescape_entity(m, keep_angles=True), segment)
    return unescaped


def normalize_whitespace(text: str, *, max_blank_lines: int = 1, strip: bool = True) -> str:
    """Collapse space runs inside lines, cut trailing spaces, limit blank lines; keep indentation and fences."""
    text = "".join(" " if unicodedata.category(ch) == "Zs" else ch for ch in text)
    lines_out: list[str] = []
    blank_run = 0
    in_fence = False
    for line in text.split("\n"):
        is_fence = bool(_FENCE.match(line))
        if in_fence and not is_fence:
            lines_out.append(line.rstrip(" \t"))  # code: only trailing whitespace goes
            continue
        if is_fence:
            in_fence = not in_fence
        stripped = line.rstrip(" \t")
        if not stripped:
            blank_run += 1
            if blank_run > max_blank_lines:
                continue
            lines_out.append("")
            continue
        blank_run = 0
        body = stripped.lstrip(" \t")
        indent = stripped[: len(stripped) - len(body)]
        lines_out.append(indent + _SPACE_RUN.sub(" ", body))
    out = "\n".join(lines_out)
    if strip:
        return out.strip()
    # A part that sits between media keeps one separating space at each end (collapsed, not cut).
    if text[:1] in (" ", "\t") and out[:1] not in ("", "\n"):
        out = " " + out.lstrip(" \t")
    if text.rstrip(" \t") != text and out and not out.endswith("\n"):
        out += " "
    return out


def clean_text_report(
    text: str,
    *,
    nfc: bool = True,
    control: bool = True,
    html_entities: bool = True,
    whitespace: bool = True,
    max_blank_lines: int = 1,
    strip: bool = True,
) -> tuple[str, list[str]]:
    """Clean `text`; also return the names of the steps that changed it (in STEPS order)."""
    changed: list[str] = []

    def apply(name: str, enabled: bool, fn) -> None:
        nonlocal text
        if enabled:
            new = fn(text)
            if new != text:
                changed.append(name)
                text = new

    apply("nfc", nfc, lambda t: unicodedata.normalize("NFC", t))
    apply("control", control, remove_control_chars)
    apply("html", html_entities, unescape_html)
    # Unescaping can produce NFD sequences ("e&#769;"), so compose again without reporting twice.
    if nfc and "html" in changed:
        text = unicodedata.normalize("NFC", text)
    apply("whitespace", whitespace, lambda t: normalize_whitespace(t, max_blank_lines=max_blank_lines, strip=strip))
    return text, changed


def clean_text(text: str, **options) -> str:
    """Cleaned `text`; options as `clean_text_report` (nfc, control, html_entities, whitespace,
    max_blank_lines, strip)."""
    return clean_text_report(text, **options)[0]


def clean_sample(sample: Sample, **options) -> Sample:
    """A deep copy of `sample` with every TextPart cleaned; the report lands in meta["text_clean"].

    Outer whitespace is stripped only at the edges of a message: a text part between two images
    keeps a separating space or newline at its ends (collapsed to one), because that is part of
    what the model sees between the vision blocks.
    """
    options.pop("strip", None)
    out = copy.deepcopy(sample)
    report = CleanReport()
    for message in out.messages:
        last = len(message.parts) - 1
        for i, part in enumerate(message.parts):
            if not isinstance(part, TextPart):
                continue
            report.parts += 1
            cleaned, steps = clean_text_report(part.text, strip=False, **options)
            new = cleaned
            if options.get("whitespace", True):
                if i == 0:
                    new = new.lstrip()
                if i == last:
                    new = new.rstrip()
            if new != cleaned and "whitespace" not in steps:
                steps.append("whitespace")
            if new != part.text:
                report.changed += 1
                for s in steps:
                    report.steps[s] += 1
            part.text = new
    out.meta["text_clean"] = report.to_dict()
    return out
