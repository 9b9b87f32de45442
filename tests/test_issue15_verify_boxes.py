"""#15 verify: answers with several boxes -- every reference box must be paired one-to-one with a
model box at IoU >= t, in each grounding format answer_check reads (Qwen2-VL <|box_start|>, Qwen2.5-VL
/ Qwen3-VL JSON bbox_2d, Qwen-VL <box>)."""
from __future__ import annotations

import pytest

from filters.reward.answer_check import boxes_in, check_answer, check_boxes, matched_pairs


def q2(*objs):
    return "".join(f"<|object_ref_start|>{name}<|object_ref_end|><|box_start|>({a},{b}),({c},{d})<|box_end|>"
                   for name, (a, b, c, d) in objs)


def q25(*objs):
    import json

    return "```json\n" + json.dumps([{"bbox_2d": list(box), "label": name} for name, box in objs], indent=2) + "\n```"


def qvl(*objs):
    return "".join(f"<ref>{name}</ref><box>({a},{b}),({c},{d})</box>" for name, (a, b, c, d) in objs)


WRITERS = {"qwen2-vl": q2, "qwen2.5-vl": q25, "qwen-vl": qvl}
REF = [("car", (100, 100, 300, 300)), ("car", (500, 500, 700, 700)), ("person", (800, 100, 900, 400))]


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_reference_box_needs_its_own_model_box(fmt):
    w = WRITERS[fmt]
    ref = w(*REF)
    assert len(boxes_in(ref, fmt)) == 3
    q = "Detect every car and person in the image."
    # the same boxes, slightly off and in another order: confirmed
    shuffled = w(REF[2], ("car", (510, 490, 705, 700)), ("car", (95, 105, 300, 310)))
    c = check_answer(q, shuffled, ref, fmt)
    assert (c.kind, c.match) == ("box", True) and 0.85 < c.value < 1.0
    # one reference box missed
    c = check_answer(q, w(*REF[:2]), ref, fmt)
    assert c.match is False and c.value == pytest.approx(2 / 3)
    # three boxes, but two of them on the same car: one-to-one pairing fails
    c = check_answer(q, w(REF[0], REF[0], REF[2]), ref, fmt)
    assert c.match is False
    # an extra box the reference does not have
    c = check_answer(q, w(*REF, ("dog", (0, 0, 50, 50))), ref, fmt)
    assert c.match is False and c.value == pytest.approx(1.0)
    # one box far off
    c = check_answer(q, w(REF[0], ("car", (0, 600, 150, 900)), REF[2]), ref, fmt)
    assert c.match is False
    # the model's words around the boxes do not matter
    c = check_answer(q, "Here they are: " + w(*REF) + " That is all.", ref, fmt)
    assert c.match is True


def test_pairing_is_not_greedy():
    """Model box A overlaps reference 1 best (0.90) but is the only one that fits reference 2 (0.60);
    B fits only reference 1 (0.55). Greedy by IoU takes A for 1 and leaves 2 with B (0.33); the
    matching pairs A-2 and B-1, so the answer is confirmed."""
    r1, r2 = (0, 0, 100, 100), (30, 0, 130, 100)
    a, b = (5, 0, 105, 100), (0, 0, 100, 55)
    ref, ans = q25(("x", r1), ("y", r2)), q25(("x", a), ("y", b))
    from filters.reward.answer_check import iou

    assert iou(a, r1) > iou(a, r2) >= 0.5 and iou(b, r1) >= 0.5 > iou(b, r2)
    c = check_boxes(ans, ref, "qwen2.5-vl")
    assert c.match is True
    assert check_boxes(ans, ref, "qwen2.5-vl", iou_threshold=0.7).match is False


def test_matched_pairs():
    assert matched_pairs([], 0.5) == 0
    assert matched_pairs([[0.9, 0.6], [0.6, 0.1]], 0.5) == 2
    assert matched_pairs([[0.9, 0.9], [0.1, 0.1]], 0.5) == 1
    assert matched_pairs([[0.5]], 0.5) == 1
