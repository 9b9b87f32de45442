import unicodedata

from processors.sample import ImagePart, Message, Sample, TextPart
from processors.text import clean_sample, clean_text, clean_text_report, normalize_whitespace, unescape_html


def test_nfc_composes_decomposed_accents():
    decomposed = "Cafe\u0301"
    assert clean_text(decomposed) == "Caf\u00e9"
    assert unicodedata.is_normalized("NFC", clean_text(decomposed))


def test_control_characters_removed_but_newline_and_tab_kept():
    text = "a\x00b\x07c\td\ne\x1b\u200bf\ufeff"
    assert clean_text(text) == "abc\td\nef"


def test_line_endings_unified():
    assert clean_text("one\r\ntwo\rthree\u2028four") == "one\ntwo\nthree\nfour"


def test_html_entities_unescaped():
    assert clean_text("Tom &amp; Jerry&#39;s &quot;show&quot; &eacute;t&#xE9; &lt; 5") == "Tom & Jerry's \"show\" été < 5"


def test_entities_without_semicolon_left_alone():
    # "&not" and "&copy" are legacy entities html.unescape would eat inside URLs
    url = "see https://x.org/?a=1&not=2&copy=3"
    assert clean_text(url) == url


def test_unescape_never_forges_special_tokens_or_grounding_tags():
    escaped = "literal &lt;|box_start|&gt;(1,2),(3,4)&lt;|box_end|&gt; and &lt;ref&gt;cat&lt;/ref&gt; &amp; more"
    out = clean_text(escaped)
    assert "<|box_start|>" not in out and "<ref>" not in out
    assert out == "literal &lt;|box_start|&gt;(1,2),(3,4)&lt;|box_end|&gt; and &lt;ref&gt;cat&lt;/ref&gt; & more"


def test_real_special_tokens_and_grounding_markup_pass_through():
    text = "<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|> &amp; <ref>cat</ref><box>(1,2),(3,4)</box>"
    assert clean_text(text) == text.replace("&amp;", "&")


def test_escaped_html_table_is_unescaped_when_it_forges_nothing():
    assert unescape_html("&lt;table&gt;&lt;tr&gt;&lt;td&gt;1&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;") == "<table><tr><td>1</td></tr></table>"


def test_whitespace_collapsed_blank_lines_limited_outer_stripped():
    text = "  Hello   world \u00a0 again  \n\n\n\n\nNext\u3000line   \n"
    assert clean_text(text) == "Hello world again\n\nNext line"
    assert clean_text(text, max_blank_lines=0) == "Hello world again\nNext line"


def test_indentation_and_code_fences_kept():
    text = "Steps:\n  - first   item\n    - nested\n```python\ndef f(x):\n    return   x  \n```\nDone"
    assert normalize_whitespace(text) == "Steps:\n  - first item\n    - nested\n```python\ndef f(x):\n    return   x\n```\nDone"


def test_report_names_changed_steps_in_order():
    assert clean_text_report("a &amp;  b")[1] == ["html", "whitespace"]
    assert clean_text_report("plain")[1] == []
    out, steps = clean_text_report("e\u0301\x00", nfc=False)
    assert out == "e\u0301" and steps == ["control"]


def test_clean_sample_copies_and_reports():
    sample = Sample(
        id="s1",
        messages=[
            Message("user", [TextPart("  Look\x00 at "), ImagePart(0), TextPart("  and &amp; tell  me  ")]),
            Message("assistant", [TextPart("It is a cat.")]),
        ],
    )
    out = clean_sample(sample)
    assert sample.messages[0].parts[0].text == "  Look\x00 at "  # original untouched
    parts = out.messages[0].parts
    # edges of the message stripped; whitespace next to the image collapsed, not removed
    assert parts[0].text == "Look at "
    assert parts[2].text == " and & tell me"
    assert out.meta["text_clean"] == {"parts": 3, "changed": 2, "steps": {"nfc": 0, "control": 1, "html": 1, "whitespace": 2}}
