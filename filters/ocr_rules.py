"""Answer-quality checks for OCR / document data, after the cleaning the Qwen2.5-VL report describes
(§2.2: drop truncated answers, broken markup and malformed tables from synthetic and parsed data).

All checks read the assistant turns: those are the targets the model is trained to produce.
Each public `*_problems` / `*_stats` function is pure and usable on its own.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from processors.sample import Sample

from .base import FilterContext, Verdict

# ---------------------------------------------------------------- truncation

OPEN_BRACKETS = "([{<（【「『《"
DANGLING = ",;，、；\\"


def truncation_problem(text: str, *, min_chars: int = 200, min_tail_chars: int = 40) -> str | None:
    """Why `text` looks cut off, or None.

    Always: it ends with an open bracket or dangling punctuation (",", ";", "\\") or a hyphen glued
    to a word ("inter-"). For long answers (>= min_chars) whose last line is prose (>= min_tail_chars):
    it ends with a letter, i.e. mid-sentence or mid-word. Short answers ("A red car") and answers
    ending in digits, closing markup, quotes or table pipes are fine.
    """
    t = text.rstrip()
    if not t:
        return None
    last = t[-1]
    if last in OPEN_BRACKETS:
        return f"ends with an open bracket {last!r}"
    if last in DANGLING:
        return f"ends with dangling {last!r}"
    if last == "-" and len(t) > 1 and t[-2].isalpha():
        return "ends with a hyphenated word cut in half"
    tail = t.rsplit("\n", 1)[-1]
    if len(t) >= min_chars and len(tail) >= min_tail_chars and unicodedata.category(last).startswith("L"):
        return f"long answer ({len(t)} chars) ends mid-sentence: ...{tail[-20:]!r}"
    return None


@dataclass(frozen=True)
class TruncatedAnswer:
    min_chars: int = 200
    min_tail_chars: int = 40
    name: str = "truncated_answer"
    phase: str = "raw"
    cost: int = 1

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict:
        for i, m in enumerate(sample.messages):
            if m.role != "assistant":
                continue
            problem = truncation_problem(m.text, min_chars=self.min_chars, min_tail_chars=self.min_tail_chars)
            if problem:
                return Verdict(False, self.name, float(len(m.text.rstrip())), f"message {i}: {problem}")
        return Verdict(True, self.name, None)


# ---------------------------------------------------------------- markup balance

_FENCE_LINE = re.compile(r"^\s*(```|~~~)", re.M)
_FENCED_BLOCK = re.compile(r"^\s*(```|~~~).*?^\s*\1[^\n]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_SPECIAL_PAIR = re.compile(r"<\|([a-z_]+?)_(start|end)\|>")
_OTHER_SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>")
_LATEX_ENV = re.compile(r"\\(begin|end)\{([^{}]+)\}")
_LATEX_DELIM = re.compile(r"\\([()\[\]{}])")
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)((?:\s+[^<>]*?)?)\s*(/?)>")
# Known element names only, so "a <b and c> d" in maths is rarely mistaken for a tag.
HTML_TAGS = frozenset(
    "a abbr article aside b big blockquote body caption center cite code col colgroup dd del div dl "
    "dt em figcaption figure font footer h1 h2 h3 h4 h5 h6 head header html i ins kbd label li mark "
    "nav ol p pre q s section small span strike strong sub sup table tbody td tfoot th thead title "
    "tr tt u ul ref box quad math mi mn mo mrow msub msup mfrac".split()
)
# Void elements never close; `img` also covers qwen-vl's <img>path</img>, which is not HTML.
VOID_TAGS = frozenset("br hr img input meta link area base col embed param source track wbr image video".split())
# HTML lets these close implicitly; tables (td/tr/th) are held to explicit closes on purpose.
OPTIONAL_CLOSE = frozenset("p li dt dd".split())
_LIST_MARKER = re.compile(r"(?:(?<=\s)|^)(?:[0-9]{1,3}|[A-Za-z]|[ivxIVX]{1,4})\)(?=[ \t])", re.M)
_SMILEY = re.compile(r"[:;]-?[()]")
BRACKET_PAIRS = {")": "(", "]": "[", "}": "{", "）": "（", "】": "【", "」": "「", "』": "『", "》": "《"}


def _strip_code(text: str) -> tuple[str, list[str]]:
    problems = []
    if len(_FENCE_LINE.findall(text)) % 2:
        problems.append("unclosed code fence")
    text = _FENCED_BLOCK.sub("", text)
    return _INLINE_CODE.sub("", text), problems


def _nesting_problems(events, unmatched, unclosed) -> list[str]:
    """Problems of (name, opens) events that must nest: a close that is not the innermost open
    name's (`unmatched(name)`, skipped), then every open never closed (`unclosed(name)`)."""
    stack: list[str] = []
    problems = []
    for name, opens in events:
        if opens:
            stack.append(name)
        elif stack and stack[-1] == name:
            stack.pop()
        else:
            problems.append(unmatched(name))
    return problems + [unclosed(n) for n in stack]


def _special_token_problems(text: str) -> list[str]:
    return _nesting_problems(((kind, edge == "start") for kind, edge in _SPECIAL_PAIR.findall(text)),
                             lambda k: f"<|{k}_end|> without <|{k}_start|>", lambda k: f"<|{k}_start|> never closed")


def _latex_problems(text: str) -> list[str]:
    problems = _nesting_problems(((env, edge == "begin") for edge, env in _LATEX_ENV.findall(text)),
                                 lambda env: f"\\end{{{env}}} without matching \\begin",
                                 lambda env: f"\\begin{{{env}}} never ended")
    if text.count("$$") % 2:
        problems.append("odd number of $$")
    delims = Counter(_LATEX_DELIM.findall(text))
    for o, c in (("(", ")"), ("[", "]")):
        if delims[o] != delims[c]:
            problems.append(f"\\{o} and \\{c} counts differ ({delims[o]} vs {delims[c]})")
    return problems


def _tag_problems(text: str) -> list[str]:
    stack: list[str] = []
    problems = []
    for m in _TAG.finditer(text):
        closing, name, _, self_closing = m.groups()
        name = name.lower()
        if name in VOID_TAGS or name not in HTML_TAGS or self_closing:
            continue
        if not closing:
            stack.append(name)
            continue
        while stack and stack[-1] != name and stack[-1] in OPTIONAL_CLOSE:
            stack.pop()
        if stack and stack[-1] == name:
            stack.pop()
        else:
            problems.append(f"</{name}> without an open <{name}>" if name not in stack else f"</{name}> closes across <{stack[-1]}>")
            if name in stack:  # recover: unwind to the matching open tag
                while stack.pop() != name:
                    pass
    problems += [f"<{n}> never closed" for n in stack if n not in OPTIONAL_CLOSE]
    return problems


def _bracket_problems(text: str) -> list[str]:
    text = _LIST_MARKER.sub("", _SMILEY.sub("", text))
    stack: list[str] = []
    problems = []
    openers = set(BRACKET_PAIRS.values())
    for ch in text:
        if ch in openers:
            stack.append(ch)
        elif ch in BRACKET_PAIRS:
            opener = BRACKET_PAIRS[ch]
            if opener not in stack:
                problems.append(f"{ch!r} without matching {opener!r}")
                continue
            # recover at the matching opener; whatever sat above it was never closed
            while (top := stack.pop()) != opener:
                problems.append(f"{top!r} never closed")
    problems += [f"{ch!r} never closed" for ch in stack]
    return problems


def markup_problems(text: str) -> list[str]:
    """Every imbalance found in `text`: code fences, special-token pairs, LaTeX environments and
    delimiters, HTML tags, markdown bold, brackets. Code is excluded from the later checks."""
    text, problems = _strip_code(text)
    problems += _special_token_problems(text)
    text = _OTHER_SPECIAL.sub(" ", text)
    problems += _latex_problems(text)
    text = _LATEX_DELIM.sub(" ", _LATEX_ENV.sub(" ", text))
    problems += _tag_problems(text)
    text = _TAG.sub(" ", text)
    if text.count("**") % 2:
        problems.append("odd number of ** (bold never closed)")
    problems += _bracket_problems(text)
    return problems


@dataclass(frozen=True)
class UnbalancedMarkup:
    name: str = "unbalanced_markup"
    phase: str = "raw"
    cost: int = 2

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict:
        total = 0
        first = ""
        for i, m in enumerate(sample.messages):
            if m.role != "assistant":
                continue
            problems = markup_problems(m.text)
            if problems and not first:
                first = f"message {i}: {problems[0]}"
            total += len(problems)
        if total:
            return Verdict(False, self.name, float(total), f"{first} ({total} problem(s))")
        return Verdict(True, self.name, 0.0)


# ---------------------------------------------------------------- tables

_MD_DELIM_CELL = re.compile(r"^\s*:?-{3,}:?\s*$")
_HTML_TABLE = re.compile(r"<table\b[^>]*>(.*?)</table>", re.I | re.S)
_HTML_ROW = re.compile(r"<tr\b[^>]*>(.*?)(?=</tr>|<tr\b|$)", re.I | re.S)
_HTML_CELL = re.compile(r"<t([dh])\b([^>]*)>(.*?)(?=</t[dh]>|<t[dh]\b|$)", re.I | re.S)
_SPAN = re.compile(r"\b(colspan|rowspan)\s*=\s*[\"']?(\d+)", re.I)
_ANY_TAG = re.compile(r"<[^<>]*>")


@dataclass
class Table:
    kind: str  # "markdown" | "html"
    widths: list[int]  # columns per row, spans counted
    cells: list[str]  # every cell's text (stripped)

    @property
    def expected_width(self) -> int:
        """The most common row width (ties: the earliest row's), i.e. what the table meant to be."""
        counts = Counter(self.widths)
        best = max(counts.values())
        return next(w for w in self.widths if counts[w] == best)

    @property
    def ragged_rows(self) -> int:
        return sum(w != self.expected_width for w in self.widths)


def _split_md_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)]


def markdown_tables(text: str) -> list[Table]:
    """Runs of >= 2 consecutive lines that start with "|" (outside code fences); the delimiter row
    (|---|:--:|) is checked for width but holds no cells."""
    text = _FENCED_BLOCK.sub("", text)
    tables, run = [], []
    for line in text.split("\n") + [""]:
        if line.strip().startswith("|"):
            run.append(line)
            continue
        if len(run) >= 2:
            widths, cells = [], []
            for row in run:
                parts = _split_md_row(row)
                widths.append(len(parts))
                if not all(_MD_DELIM_CELL.match(p) for p in parts):
                    cells += parts
            tables.append(Table("markdown", widths, cells))
        run = []
    return tables


def html_tables(text: str) -> list[Table]:
    """`<table>` blocks; a row's width is the sum of its colspans plus columns held by rowspans
    from the rows above. Missing `</td>`/`</tr>` are tolerated here (unbalanced_markup reports them)."""
    tables = []
    for tm in _HTML_TABLE.finditer(text):
        widths, cells = [], []
        carried: list[int] = []  # remaining rows for each rowspan still open
        for rm in _HTML_ROW.finditer(tm.group(1)):
            width = len(carried)
            new_carried = [r - 1 for r in carried if r > 1]
            for cm in _HTML_CELL.finditer(rm.group(1)):
                spans = {k.lower(): int(v) for k, v in _SPAN.findall(cm.group(2))}
                colspan, rowspan = max(spans.get("colspan", 1), 1), max(spans.get("rowspan", 1), 1)
                width += colspan
                if rowspan > 1:
                    new_carried += [rowspan - 1] * colspan
                cells.append(_ANY_TAG.sub("", cm.group(3)).replace("&nbsp;", " ").strip())
            widths.append(width)
            carried = new_carried
        if widths:
            tables.append(Table("html", widths, cells))
    return tables


def find_tables(text: str) -> list[Table]:
    return markdown_tables(text) + html_tables(text)


def _assistant_tables(sample: Sample) -> list[tuple[int, Table]]:
    return [(i, t) for i, m in enumerate(sample.messages) if m.role == "assistant" for t in find_tables(m.text)]


@dataclass(frozen=True)
class MalformedTable:
    """Drops a sample with a table whose rows disagree on the number of columns; value = ragged rows."""

    name: str = "malformed_table"
    phase: str = "raw"
    cost: int = 2

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict:
        tables = _assistant_tables(sample)
        if not tables:
            return Verdict(True, self.name, None, "no tables")
        ragged = sum(t.ragged_rows for _, t in tables)
        if ragged:
            i, bad = next((i, t) for i, t in tables if t.ragged_rows)
            return Verdict(False, self.name, float(ragged),
                           f"message {i}: {bad.kind} table rows have {bad.widths} columns, "
                           f"expected {bad.expected_width} ({ragged} ragged row(s) in all)")
        return Verdict(True, self.name, 0.0)


@dataclass(frozen=True)
class TableEmptyCells:
    """Drops a sample whose tables are mostly empty cells (a parse that lost the content);
    value = empty cells / all cells over the assistant's tables."""

    max_ratio: float = 0.5
    min_cells: int = 4
    name: str = "table_empty_cells"
    phase: str = "raw"
    cost: int = 2

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict:
        cells = [c for _, t in _assistant_tables(sample) for c in t.cells]
        if len(cells) < self.min_cells:
            return Verdict(True, self.name, None, f"fewer than {self.min_cells} table cells")
        ratio = sum(not c for c in cells) / len(cells)
        if ratio > self.max_ratio:
            return Verdict(False, self.name, ratio,
                           f"{ratio:.3f} of {len(cells)} table cells are empty (limit {self.max_ratio:g})")
        return Verdict(True, self.name, ratio)
