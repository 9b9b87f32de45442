"""#15: answer checkers on real-looking answer strings (VQA, GSM8K/MathVista, MMBench, RefCOCO in the
Qwen2-VL / Qwen2.5-VL / Qwen-VL grounding formats)."""
from __future__ import annotations

import math

import pytest

from filters.reward.answer_check import (answer_kind, boxes_in, check_answer, choice_letter, final_number, iou,
                                         normalize_text, options_in)

MCQ = ("Which of the following best describes the weather in the image?\n"
       "A. Sunny\nB. Rainy\nC. Snowy\nD. Foggy\nAnswer with the option's letter from the given choices directly.")


@pytest.mark.parametrize("question, answer, reference, fmt, kind, match", [
    # text
    ("What colour is the bus?", "Yellow.", "yellow", "qwen2.5-vl", "text", True),
    ("What colour is the bus?", "The bus is bright yellow.", "Yellow", "qwen2.5-vl", "text", True),
    ("What colour is the bus?", "It is a red double-decker.", "yellow", "qwen2.5-vl", "text", False),
    ("What is written on the sign?", "STOP", "Stop.", "qwen2.5-vl", "text", True),
    ("What is the man doing?", "riding the horse", "Riding a horse", "qwen2.5-vl", "text", True),
    ("Describe the image.", "A dog runs on a beach.", "A brown dog is running along the sandy beach at sunset.",
     "qwen2.5-vl", "text", False),
    # number
    ("How many sheep are there?", "There are 7 sheep in the field.", "7", "qwen2.5-vl", "number", True),
    ("How many sheep are there?", "Seven.", "7", "qwen2.5-vl", "number", True),
    ("How many sheep are there?", "I count 8 sheep.", "7", "qwen2.5-vl", "number", False),
    ("What is the total on the receipt?", "The total amount due is $1,234.50.", "$1234.5", "qwen2.5-vl",
     "number", True),
    ("Natalia sold clips to 48 friends in April, and half as many in May. How many altogether?",
     "In May she sold 48 / 2 = 24 clips. Altogether 48 + 24 = 72 clips.\n#### 72",
     "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72",
     "qwen2.5-vl", "number", True),
    ("Find x.", "So x = \\boxed{12.5}", "\\boxed{12.5}", "qwen2.5-vl", "number", True),
    ("What percentage is the blue slice?", "About 45%.", "45%", "qwen2.5-vl", "number", True),
    ("What percentage is the blue slice?", "0.45", "45%", "qwen2.5-vl", "number", False),
    # choice
    (MCQ, "B", "B", "qwen2.5-vl", "choice", True),
    (MCQ, "(B) Rainy", "B", "qwen2.5-vl", "choice", True),
    (MCQ, "The answer is B.", "B. Rainy", "qwen2.5-vl", "choice", True),
    (MCQ, "C", "B", "qwen2.5-vl", "choice", False),
    ("Is the door open? (A) yes (B) no", "A", "(B)", "qwen2.5-vl", "choice", False),
    # boxes
    ("Locate the dog.", '```json\n[{"bbox_2d": [102, 48, 310, 290], "label": "dog"}]\n```',
     '```json\n[\n\t{"bbox_2d": [100, 50, 300, 300], "label": "dog"}\n]\n```', "qwen2.5-vl", "box", True),
    ("Locate the dog.", '{"bbox_2d": [400, 400, 600, 600], "label": "dog"}',
     '[{"bbox_2d": [100, 50, 300, 300], "label": "dog"}]', "qwen2.5-vl", "box", False),
    ("Find the cat.", "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(210,330),(512,780)<|box_end|>",
     "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(200,320),(500,800)<|box_end|>", "qwen2-vl",
     "box", True),
    ("Find the cat.", "The cat is on the left.",
     "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(200,320),(500,800)<|box_end|>", "qwen2-vl",
     "box", False),
    ("Where is the man?", "<ref>the man</ref><box>(120,80),(410,900)</box>",
     "<ref>the man</ref><box>(100,100),(400,900)</box>", "qwen-vl", "box", True),
    ("Detect all cars.", '[{"bbox_2d": [0, 0, 100, 100], "label": "car"}]',
     '[{"bbox_2d": [0, 0, 100, 100], "label": "car"}, {"bbox_2d": [200, 200, 300, 300], "label": "car"}]',
     "qwen2.5-vl", "box", False),
])
def test_checkers_on_real_looking_answers(question, answer, reference, fmt, kind, match):
    assert answer_kind(question, reference, fmt) == kind
    c = check_answer(question, answer, reference, fmt)
    assert c.kind == kind and c.match is match, c


def test_box_iou_value_and_threshold():
    ref = '[{"bbox_2d": [0, 0, 100, 100]}]'
    half = '[{"bbox_2d": [0, 0, 100, 50]}]'
    c = check_answer("Locate it.", half, ref, "qwen2.5-vl")
    assert c.value == pytest.approx(0.5) and c.match is True
    assert check_answer("Locate it.", half, ref, "qwen2.5-vl", iou_threshold=0.75).match is False
    assert iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert iou((10, 10, 0, 0), (0, 0, 10, 10)) == 1.0  # swapped corners are the same box
    assert boxes_in("no boxes here", "qwen2-vl") == []


def test_helpers():
    assert normalize_text("  The Cat, sat!  ") == "cat sat"
    assert final_number("It costs $3,400.75 or 2 coupons") == 2.0
    assert final_number("twelve eggs") == 12.0
    assert final_number("no digits") is None
    assert options_in(MCQ) == ["A", "B", "C", "D"]
    assert choice_letter("I think the correct option is (D).", ["A", "B", "C", "D"]) == "D"
    assert choice_letter("A dog.", ["B", "C"]) is None
    c = check_answer("What is this?", "anything", "", "qwen2.5-vl")
    assert c.match is None and math.isnan(c.value)
    with pytest.raises(ValueError, match="unknown answer kind"):
        check_answer("q", "a", "r", "qwen2.5-vl", kind="essay")
