import pytest

from filters import FilterContext, build_filters, run_filters
from filters.ocr_rules import find_tables, markup_problems, truncation_problem
from processors.sample import Message, Sample, TextPart

CUT_REPORT = (
    "The document is the 2023 annual report of Northwind Traders. It lists revenue by region, notes "
    "that operating costs rose by four percent, and summarises the main risks for the coming year. "
    "The board approved the dividend policy and noted that growth in the Asian mark"
)
FULL_REPORT = CUT_REPORT.rsplit(" ", 1)[0] + " markets was stronger than expected."


def answer(text, question="Read the document."):
    return Sample("o", [Message("user", [TextPart(question)]), Message("assistant", [TextPart(text)])])


def raw(config, text):
    return run_filters(build_filters(config, defaults=False), answer(text), FilterContext(), "raw")


# ------------------------------------------------------------------ truncation

def test_truncated_long_answer_is_dropped_with_its_length():
    v = raw({"truncated_answer": True}, CUT_REPORT)
    assert (v.keep, v.rule, v.value) == (False, "truncated_answer", float(len(CUT_REPORT)))
    assert "ends mid-sentence" in v.reason
    assert raw({"truncated_answer": True}, FULL_REPORT) is None


@pytest.mark.parametrize(
    "text, problem",
    [
        ("The coordinates are (", "ends with an open bracket '('"),
        ('{"bbox_2d": [12, 40, ', "ends with dangling ','"),  # trailing space is stripped
        ("Ingredients: flour, sugar,", "ends with dangling ','"),
        ("The word is inter-", "ends with a hyphenated word cut in half"),
        ("A red car", None),  # short answers need no full stop
        ("Total: 1,234", None),
        ("</table>", None),
        ("Score: 5 - 3", None),
    ],
)
def test_truncation_patterns(text, problem):
    assert truncation_problem(text) == problem


def test_long_list_ending_in_a_short_item_is_not_truncated():
    listing = "The receipt lists the following items:\n" + "\n".join(f"- item number {i} at two dollars" for i in range(8)) + "\n- tea"
    assert len(listing) > 200
    assert truncation_problem(listing) is None


# ------------------------------------------------------------------ markup

def test_unbalanced_table_markup():
    broken = "<table><tr><td>Year</td><td>Sales</td></tr><tr><td>2023</td><td>1.2M</td></tr>"
    v = raw({"unbalanced_markup": True}, broken)
    assert (v.keep, v.value, v.reason) == (False, 1.0, "message 1: <table> never closed (1 problem(s))")
    assert raw({"unbalanced_markup": True}, broken + "</table>") is None


@pytest.mark.parametrize(
    "text, problems",
    [
        ("<b>bold <i>both</b></i>", ["</b> closes across <i>", "</i> without an open <i>"]),
        ("```python\nprint(1)\n", ["unclosed code fence"]),
        ("\\begin{align} x = 1 \\end{aligned}", ["\\end{aligned} without matching \\begin", "\\begin{align} never ended"]),
        ("$$ x^2 $$ and $$ y", ["odd number of $$"]),
        ("\\[ a + b", ["\\[ and \\] counts differ (1 vs 0)"]),
        ("f(x = [1, 2)", ["'[' never closed"]),
        ("a) b] c", ["']' without matching '['"]),
        ("**bold** and **more", ["odd number of ** (bold never closed)"]),
        ("<|box_start|>(1,2),(3,4)", ["<|box_start|> never closed"]),
        ("「引用」と【注】（括弧", ["'（' never closed"]),
    ],
)
def test_markup_problems(text, problems):
    assert markup_problems(text) == problems


@pytest.mark.parametrize(
    "text",
    [
        "Options: 1) red 2) blue a) small b) large :)",
        "<p>First paragraph<p>Second</p><br><img src='x.png'>",
        "Use `a) b(` inline and\n```\nif (a < b) {\n```\nafter",
        "<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>",
        '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]\n```',
        "<ref>cat</ref><box>(1,2),(3,4)</box>",
        "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix} and \\( x \\) and if x<y and y>z",
    ],
)
def test_balanced_markup_has_no_problems(text):
    assert markup_problems(text) == []


# ------------------------------------------------------------------ tables

RAGGED_MD = """Here is the table:

| Name | Qty | Price |
|------|:---:|------:|
| Apple | 3 | 1.20 |
| Pear | 5 |
| Plum | 2 | 0.90 | extra |
"""


def test_markdown_table_with_ragged_rows():
    (table,) = find_tables(RAGGED_MD)
    assert (table.kind, table.widths, table.expected_width, table.ragged_rows) == ("markdown", [3, 3, 3, 2, 4], 3, 2)
    v = raw({"malformed_table": True}, RAGGED_MD)
    assert (v.keep, v.value) == (False, 2.0)
    assert v.reason == "message 1: markdown table rows have [3, 3, 3, 2, 4] columns, expected 3 (2 ragged row(s) in all)"
    fixed = RAGGED_MD.replace("| Pear | 5 |", "| Pear | 5 | 0.80 |").replace(" extra |", "")
    v = build_filters({"malformed_table": True}, defaults=False)[0](answer(fixed), FilterContext())
    assert (v.keep, v.value) == (True, 0.0)


def test_html_table_spans_are_counted():
    good = ('<table><tr><th colspan="2">Region</th><th>Total</th></tr>'
            '<tr><td rowspan="2">EU</td><td>North</td><td>5</td></tr>'
            '<tr><td>South</td><td>7</td></tr></table>')
    (table,) = find_tables(good)
    assert table.widths == [3, 3, 3]
    assert raw({"malformed_table": True}, good) is None
    bad = good.replace("<td>South</td>", "")
    assert find_tables(bad)[0].widths == [3, 3, 2]
    assert raw({"malformed_table": True}, bad).value == 1.0


def test_table_empty_cell_share():
    sparse = "| a | b |\n|---|---|\n| 1 |   |\n|   |   |"
    # cells a, b, 1 and three empty ones: 3 / 6
    assert raw({"table_empty_cells": {"max_ratio": 0.5}}, sparse) is None
    v = raw({"table_empty_cells": {"max_ratio": 0.4}}, sparse)
    assert (v.rule, v.value) == ("table_empty_cells", 0.5)
    html = "<table><tr><td>x</td><td></td></tr><tr><td>&nbsp;</td><td> <b></b> </td></tr></table>"
    assert raw({"table_empty_cells": {"max_ratio": 0.7}}, html).value == 0.75
    # too few cells to judge
    v = build_filters({"table_empty_cells": True}, defaults=False)[0](answer("| a |  |\n|---|---|"), FilterContext())
    assert (v.keep, v.value) == (True, None)


def test_defaults_keep_a_clean_ocr_answer():
    clean = ("The invoice shows the following items.\n\n| Item | Qty | Price |\n|---|---|---|\n"
             "| Paper (A4) | 2 | 4.50 |\n| Pens [blue] | 10 | 0.99 |\n\nThe total is **18.90** USD.")
    assert run_filters(build_filters(), answer(clean), FilterContext(), "raw") is None
