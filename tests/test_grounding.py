"""Grounding formats: spec §12 vectors (T-G1..T-G4), round trips with stated error bounds, problems."""
from __future__ import annotations

import json

import numpy as np
import pytest

from processors.errors import GroundingError
from processors.grounding import (
    Box,
    Point,
    Quad,
    convert_grounding_text,
    convert_objects,
    encode_coord,
    encode_object,
    objects_from_pixels,
    parse_grounding,
    render_objects,
)
from processors.presets import QWEN2_VL, QWEN25_VL
from processors.sizing import smart_resize

S_640 = (428, 640)  # (h, w) of the §12 notebook example
R_640 = (420, 644)
S_1080 = (1080, 1920)
R_1080 = (1092, 1932)  # HUB band


def q2(ref, *boxes):
    r = f"<|object_ref_start|>{ref}<|object_ref_end|>" if ref is not None else ""
    return r + "".join(f"<|box_start|>({a},{b}),({c},{d})<|box_end|>" for a, b, c, d in boxes)


# ---------------------------------------------------------------- spec vectors


def test_t_g1_t_g2_qwen2vl():
    assert encode_object(Box(146, 137, 615, 415), "qwen2-vl", original_size=S_640) == (228, 320, 961, 970)
    assert encode_object(Box(100, 200, 1800, 1000), "qwen2-vl", original_size=S_1080) == (52, 185, 938, 926)
    text = render_objects([Box(146, 137, 615, 415, "dog")], QWEN2_VL, original_size=S_640)
    assert text == q2("dog", (228, 320, 961, 970))


def test_half_even_ties_and_clamp_qwen2vl():
    assert encode_coord(1800, "qwen2-vl", 1920) == 938  # 937.5 -> 938 (even)
    assert encode_coord(607.5, "qwen2-vl", 1080) == 562  # 562.5 -> 562 (even), not 563
    assert encode_coord(2000, "qwen2-vl", 1920) == 1000 and encode_coord(-5, "qwen2-vl", 1920) == 0


def test_default_resized_size_matches_smart_resize_band():
    assert smart_resize(428, 640) == R_640 and smart_resize(1080, 1920) == R_1080
    assert smart_resize(428, 640, 28, 3136, 1_003_520) == R_640  # CLS band: same (§12.3)


def test_t_g3_t_g4_qwen25vl():
    assert encode_object(Box(146, 137, 615, 415), "qwen2.5-vl", original_size=S_640) == (147, 134, 619, 407)
    assert encode_object(Box(146, 137, 615, 415), "qwen2.5-vl", original_size=S_640, resized_size=R_640) == (
        147, 134, 619, 407)
    assert encode_object(Box(100, 200, 1800, 1000), "qwen2.5-vl", original_size=S_1080) == (101, 202, 1811, 1011)
    text = render_objects([Box(100, 200, 1800, 1000, "car")], "qwen2.5-vl", original_size=S_1080, resized_size=R_1080)
    assert json.loads(text) == [{"bbox_2d": [101, 202, 1811, 1011], "label": "car"}]
    # clamp to W' - 1 and decode with int(x' / W' * W)
    assert encode_coord(640, "qwen2.5-vl", 640, 644) == 643
    [span] = parse_grounding('[{"bbox_2d": [147, 134, 619, 407]}]', "qwen2.5-vl", original_size=S_640)
    assert span.objects == [Box(146, 136, 615, 414)]  # int(147/644*640)=146, int(134/420*428)=136, ...


def test_qwen_vl_v1():
    assert encode_object(Box(146, 137, 640, 415), "qwen-vl", original_size=S_640) == (228, 320, 999, 969)
    text = render_objects([Box(146, 137, 615, 415, "a"), Box(0, 0, 64, 42.8, "a")], "qwen-vl", original_size=S_640)
    # v1 truncates: 42.8 / 428 * 1000 is 99.999... in floats, so 99 (qwen2-vl's round gives 100)
    assert text == "<ref>a</ref><box>(228,320),(960,969)</box><box>(0,0),(100,99)</box>"
    [span] = parse_grounding("x " + text + " y", "qwen-vl", original_size=S_640)
    assert (span.start, span.end) == (2, 2 + len(text))
    assert [o.label for o in span.objects] == ["a", "a"]
    got = [(o.x1, o.y1, o.x2, o.y2) for o in span.objects]
    assert got == [pytest.approx((228 * 0.64, 320 * 0.428, 960 * 0.64, 969 * 0.428)), pytest.approx((0, 0, 64, 42.372))]
    new, rep = convert_grounding_text("x " + text + " y", "qwen-vl", "qwen2-vl", original_size=S_640)
    assert new == "x " + q2("a", (228, 320, 960, 969), (0, 0, 100, 99)) + " y" and rep.ok


# ---------------------------------------------------------------- round trips


def _rand_boxes(rng, h, w, n):
    """Boxes at least 5% of each side, so no quantisation step can collapse one."""
    x1, y1 = rng.uniform(0, 0.9 * w, n), rng.uniform(0, 0.9 * h, n)
    x = np.stack([x1, x1 + rng.uniform(0.05, 0.1, n) * w], 1)
    y = np.stack([y1, y1 + rng.uniform(0.05, 0.1, n) * h], 1)
    return [Box(float(a), float(c), float(b), float(d)) for (a, b), (c, d) in zip(x, y)]


@pytest.mark.parametrize("size", [S_640, S_1080, (333, 500), (28, 4000), (4000, 3000)])
def test_round_trip_qwen2_qwen25_qwen2_within_bound(size):
    """v -> r = round(v W'/1000) (<= 1 off incl. the W'-1 clamp) -> x = int(r W/W') (<= 1 px off) -> round(x 1000/W):
    |v2 - v| <= 0.5 + 1000/W' + 1000/W on each axis."""
    h, w = size
    rh, rw = smart_resize(h, w)
    rng = np.random.default_rng(h * w)
    boxes = [tuple(int(v) for v in encode_object(b, "qwen2-vl", original_size=size)) for b in _rand_boxes(rng, h, w, 40)]
    boxes += [(0, 0, 1000, 1000), (500, 500, 1000, 1000)]
    text = "A " + " and ".join(q2(f"o{i}", b) for i, b in enumerate(boxes)) + " end."
    mid, rep1 = convert_grounding_text(text, "qwen2-vl", "qwen2.5-vl", original_size=size, resized_size=(rh, rw))
    back, rep2 = convert_grounding_text(mid, "qwen2.5-vl", QWEN2_VL, original_size=size, resized_size=(rh, rw))
    assert rep1.ok and rep2.ok and len(rep1.changes) == len(rep2.changes) == len(boxes)
    spans = parse_grounding(back, "qwen2-vl", original_size=size)
    out = [s.raw[0] for s in spans]
    assert [s.objects[0].label for s in spans] == [f"o{i}" for i in range(len(boxes))]
    bx, by = 0.5 + 1000 / rw + 1000 / w, 0.5 + 1000 / rh + 1000 / h
    v, v2 = np.array(boxes, float), np.array(out, float)
    assert (np.abs(v2 - v)[:, 0::2] <= bx).all() and (np.abs(v2 - v)[:, 1::2] <= by).all()
    assert [c.after for c in rep2.changes] == out
    assert back.startswith("A ") and back.endswith(" end.")
    assert (np.abs(v2 - v) > 0).any()  # quantisation is real: the bound is the claim, not equality


@pytest.mark.parametrize("size", [S_640, S_1080, (333, 500)])
def test_round_trip_qwen25_qwen2_qwen25_within_bound(size):
    """r -> int(r W/W') -> round(x 1000/W) -> round(v W'/1000): |r2 - r| <= W'/W + 0.5 W'/1000 + 0.5."""
    h, w = size
    rh, rw = smart_resize(h, w)
    rng = np.random.default_rng(7)
    rs = [encode_object(b, "qwen2.5-vl", original_size=size) for b in _rand_boxes(rng, h, w, 40)]
    text = "```json\n" + json.dumps([{"bbox_2d": list(r), "label": "x"} for r in rs]) + "\n```"
    mid, _ = convert_grounding_text(text, "qwen2.5-vl", "qwen2-vl", original_size=size)
    assert "```" not in mid  # the fence belonged to the JSON; token formats have none
    back, rep = convert_grounding_text(mid, "qwen2-vl", "qwen2.5-vl", original_size=size)
    out = [list(o["bbox_2d"]) for o in json.loads(back)]
    r, r2 = np.array(rs, float), np.array(out, float)
    d = np.abs(r2 - r)
    assert (d[:, 0::2] <= rw / w + 0.5 * rw / 1000 + 0.5).all() and (d[:, 1::2] <= rh / h + 0.5 * rh / 1000 + 0.5).all()
    assert rep.ok


# ---------------------------------------------------------------- structure


def test_multiple_boxes_per_ref_and_grouping():
    text = "Find " + q2("cats", (10, 20, 30, 40), (50, 60, 70, 80)) + q2(None, (1, 2, 3, 4)) + "."
    [span] = parse_grounding(text, "qwen2-vl", original_size=(1000, 1000))
    assert span.objects[:2] == [Box(10, 20, 30, 40, "cats"), Box(50, 60, 70, 80, "cats")]
    assert span.objects[2] == Box(1, 2, 3, 4, "cats")  # adjacent box belongs to the same ref
    new, rep = convert_grounding_text(text, "qwen2-vl", "qwen2.5-vl", original_size=(1000, 1000),
                                      resized_size=(1000, 1000))
    assert new == ('Find [{"bbox_2d": [10, 20, 30, 40], "label": "cats"}, {"bbox_2d": [50, 60, 70, 80], '
                   '"label": "cats"}, {"bbox_2d": [1, 2, 3, 4], "label": "cats"}].')
    back, _ = convert_grounding_text(new, "qwen2.5-vl", "qwen2-vl", original_size=(1000, 1000), resized_size=(1000, 1000))
    assert back == text
    assert back == "Find " + q2("cats", (10, 20, 30, 40), (50, 60, 70, 80), (1, 2, 3, 4)) + "."
    assert rep.n_boxes == 3


def test_text_outside_spans_untouched():
    pre = 'Intro {"a": [1, 2]} [not json] <|object_ref_start|>lonely ref<|object_ref_end|> ünïcode\n'
    mid = "\n between (1,2),(3,4) [5, 6, 7, 8] "
    post = "\n```python\nprint([1])\n```\nbye"
    text = pre + q2("a", (100, 100, 200, 200)) + mid + q2("b", (300, 300, 400, 400)) + post
    new, rep = convert_grounding_text(text, "qwen2-vl", "qwen2.5-vl", original_size=(500, 500), resized_size=(504, 504))
    a = '[{"bbox_2d": [50, 50, 101, 101], "label": "a"}]'
    b = '[{"bbox_2d": [151, 151, 202, 202], "label": "b"}]'
    assert new == pre + a + mid + b + post
    # and back: the pre-existing non-grounding JSON and lists stay as they were
    back, _ = convert_grounding_text(new, "qwen2.5-vl", "qwen2-vl", original_size=(500, 500), resized_size=(504, 504))
    assert back.startswith(pre) and back.endswith(post) and mid in back


def test_same_format_keeps_text_and_reports():
    text = "x " + q2("a", (0, 0, 1005, 500)) + " y"
    new, rep = convert_grounding_text(text, "qwen2-vl", "qwen2-vl", original_size=(100, 100))
    assert new == text
    assert [p.kind for p in rep.problems] == ["out_of_image"]
    assert rep.changes[0].before == rep.changes[0].after == (0, 0, 1005, 500)


# ---------------------------------------------------------------- problems


def test_problems_reported_not_fixed():
    text = " ".join([q2("out", (-10, 0, 1200, 500)), q2("flat", (100, 200, 100, 300)), q2("swap", (600, 700, 500, 800))])
    new, rep = convert_grounding_text(text, "qwen2-vl", "qwen2.5-vl", original_size=(1000, 1000), resized_size=(1008, 1008))
    kinds = [(p.kind, p.span) for p in rep.problems]
    assert kinds == [("out_of_image", 0), ("degenerate", 1), ("swapped", 2)]
    out = [o for piece in json.loads("[" + new.replace("] [", "], [") + "]") for o in piece]
    assert out[0]["bbox_2d"] == [0, 0, 1007, 504]  # clamped per the official formula
    assert out[1]["bbox_2d"] == [101, 202, 101, 302]  # still degenerate: not repaired
    assert out[2]["bbox_2d"] == [605, 706, 504, 806]  # still swapped: order kept
    with pytest.raises(GroundingError, match="out_of_image.*degenerate.*swapped"):
        convert_grounding_text(text, "qwen2-vl", "qwen2.5-vl", original_size=(1000, 1000), strict=True)


def test_collapsed_by_quantisation():
    text, rep = convert_objects([Box(1000, 10, 1001, 20, "tiny")], "qwen2-vl", original_size=(100, 4000))
    assert text == q2("tiny", (250, 100, 250, 200))
    assert [p.kind for p in rep.problems] == ["collapsed"]


def test_malformed_markup_reported():
    text = "a <|box_start|>(1,2)<|box_end|> b " + q2(None, (1, 2, 3, 4))
    new, rep = convert_grounding_text(text, "qwen2-vl", "qwen2.5-vl", original_size=(1000, 1000), resized_size=(1000, 1000))
    assert new == 'a <|box_start|>(1,2)<|box_end|> b [{"bbox_2d": [1, 2, 3, 4]}]'
    assert [p.kind for p in rep.problems] == ["malformed"]
    with pytest.raises(GroundingError, match="malformed"):
        convert_grounding_text(text, "qwen2-vl", "qwen2.5-vl", original_size=(1000, 1000), strict=True)


# ---------------------------------------------------------------- Qwen2.5-VL JSON tolerance


def test_truncated_json_cookbook_repair():
    text = ('Here:\n```json\n[\n  {"bbox_2d": [147, 134, 619, 407], "label": "cat"},\n'
            '  {"label": "dog", "bbox_2d": [10, 20, 30, 40]},\n  {"bbox_2d": [1, 2, ')
    [span] = parse_grounding(text, "qwen2.5-vl", original_size=S_640)
    assert span.truncated and [o.label for o in span.objects] == ["cat", "dog"]
    assert span.start == text.index("```") and span.end == len(text)
    new, rep = convert_grounding_text(text, "qwen2.5-vl", "qwen2-vl", original_size=S_640)
    assert new == "Here:\n" + q2("cat", (228, 318, 961, 967)) + q2("dog", (14, 47, 45, 93))
    assert [p.kind for p in rep.problems] == ["truncated"]


def test_fenced_single_quotes_and_single_dict():
    text = "```json\n[{'bbox_2d': [10, 20, 30, 40], 'label': 'a'}]\n```\nand {\"point_2d\": [50, 60]} done"
    spans = parse_grounding(text, "qwen2.5-vl", original_size=(100, 100), resized_size=(100, 100))
    assert [s.style for s in spans] == ["json", "json_object"]
    assert spans[0].objects == [Box(10, 20, 30, 40, "a")] and spans[1].objects == [Point(50, 60)]
    assert spans[0].fence == ("```json\n", "\n```")
    new, rep = convert_objects(spans[0].objects + spans[1].objects, "qwen2.5-vl", original_size=(100, 100),
                               resized_size=(200, 200))
    assert json.loads(new) == [{"bbox_2d": [20, 40, 60, 80], "label": "a"}, {"point_2d": [100, 120]}]


def test_qwen25_rebanding_keeps_fence_and_xml():
    """A Qwen2.5-VL dataset written for one resized size, re-targeted to another (§12.3 band mismatch)."""
    text = ('Boxes:\n```json\n[{"bbox_2d": [100, 50, 200, 150], "label": "a"}]\n```\n'
            '<points x1="100" y1="50" alt="p">p</points> end')
    new, rep = convert_grounding_text(text, "qwen2.5-vl", "qwen2.5-vl", original_size=(1000, 2000),
                                      resized_size=(500, 1000), src_resized_size=(250, 500))
    assert new == ('Boxes:\n```json\n[{"bbox_2d": [200, 100, 400, 300], "label": "a"}]\n```\n'
                   '<points x1="200" y1="100" alt="p">p</points> end')
    assert rep.ok and [c.pixels for c in rep.changes] == [(400, 200, 800, 600), (400, 200)]
    same, rep2 = convert_grounding_text(text, "qwen2.5-vl", QWEN25_VL, original_size=(1000, 2000),
                                        resized_size=(250, 500))
    assert same == text and rep2.changes[0].after == (100, 50, 200, 150)


def test_points_json_and_xml():
    text = ('P: <points x1="322" y1="210" x2="10" y2="20" alt="two cups">two cups</points> '
            '{"point_2d": [644, 0], "label": "edge"}')
    spans = parse_grounding(text, "qwen2.5-vl", original_size=S_640, resized_size=R_640)
    assert spans[0].style == "points_xml"
    assert spans[0].objects == [Point(320, 214, "two cups"), Point(9, 20, "two cups")]
    assert spans[1].objects == [Point(640, 0, "edge")]
    # a point has no Qwen2-VL text form: reported, span left as written
    new, rep = convert_grounding_text(text, "qwen2.5-vl", "qwen2-vl", original_size=S_640, resized_size=R_640)
    assert new == text and [p.kind for p in rep.problems] == ["unsupported"] * 3
    with pytest.raises(GroundingError, match="point has no qwen2-vl"):
        render_objects([Point(1, 2)], "qwen2-vl", original_size=S_640)
    # points from pixel records into Qwen2.5-VL keep their shape; XML stays XML on re-encoding
    objs = objects_from_pixels([{"point": [320, 214], "label": "cup"}])
    assert convert_objects(objs, QWEN25_VL, original_size=S_640)[0] == '[{"point_2d": [322, 210], "label": "cup"}]'


def test_quads_qwen2vl():
    text = "t <|object_ref_start|>sign<|object_ref_end|><|quad_start|>(10,20),(30,20),(30,40),(10,40)<|quad_end|>"
    [span] = parse_grounding(text, "qwen2-vl", original_size=(1000, 2000))
    assert span.objects == [Quad(((20, 20), (60, 20), (60, 40), (20, 40)), "sign")]
    new, rep = convert_grounding_text(text, "qwen2-vl", "qwen2.5-vl", original_size=(1000, 2000))
    assert new == text and [p.kind for p in rep.problems] == ["unsupported"]
    assert render_objects(span.objects, "qwen2-vl", original_size=(1000, 2000)) == text[2:]


# ---------------------------------------------------------------- pixel records, API errors


def test_pixel_records():
    objs = objects_from_pixels([{"bbox": [146, 137, 615, 415], "label": "dog"}, {"bbox": (1, 2, 3, 4)}])
    assert objs == [Box(146, 137, 615, 415, "dog"), Box(1, 2, 3, 4)]
    text, rep = convert_objects(objs, "qwen2.5-vl", original_size=S_640, label_style="none")
    assert text == '[{"bbox_2d": [147, 134, 619, 407]}, {"bbox_2d": [1, 2, 3, 4]}]'
    assert rep.to_dict()["objects"][0] == {"shape": "box", "label": "dog", "before": [146, 137, 615, 415],
                                           "pixels": [146, 137, 615, 415], "after": [147, 134, 619, 407]}
    with pytest.raises(GroundingError, match="record 0: 'bbox' must be 4 numbers"):
        objects_from_pixels([{"bbox": [1, 2, 3]}])
    with pytest.raises(GroundingError, match="neither 'bbox' nor 'point'"):
        objects_from_pixels([{"box": [1, 2, 3, 4]}])
    with pytest.raises(GroundingError, match="no text form"):
        parse_grounding("[1, 2, 3, 4]", "pixel", original_size=S_640)
    assert parse_grounding("box [146, 137, 615, 415] here", "qwen2.5-vl", original_size=S_640) == []


def test_unknown_format_and_label_style():
    with pytest.raises(GroundingError, match="unknown grounding format"):
        parse_grounding("", "yolo", original_size=S_640)
    with pytest.raises(GroundingError, match="label_style"):
        render_objects([Box(1, 2, 3, 4)], "qwen2-vl", original_size=S_640, label_style="bold")
