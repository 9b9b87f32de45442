from types import SimpleNamespace

import numpy as np
import pytest

from filters import FilterContext, Verdict, build_filters, run_filters
from filters.base import evaluate_filters
from processors.presets import QWEN2_VL, QWEN25_VL, QWEN_VL
from processors.sample import EncodedSample, ImagePart, MediaRef, Message, Sample, TextPart, VideoPart


def conv(*turns, images=0, videos=0, system=None, image_options=None):
    """user/assistant turns alternating from user; media parts go at the front of the first turn."""
    msgs = [Message("system", [TextPart(system)])] if system else []
    for k, t in enumerate(turns):
        parts = [TextPart(t)] if t is not None else []
        if k == 0:
            parts = [ImagePart(i) for i in range(images)] + [VideoPart(i) for i in range(videos)] + parts
        msgs.append(Message("user" if k % 2 == 0 else "assistant", parts))
    opts = image_options or [{}] * images
    return Sample(
        id="t",
        messages=msgs,
        images=[MediaRef("image", f"{i}.jpg", options=dict(opts[i])) for i in range(images)],
        videos=[MediaRef("video", f"{i}.mp4") for i in range(videos)],
    )


def only(config):
    return build_filters(config, defaults=False)


def media(config, sample, **ctx):
    return run_filters(only(config), sample, FilterContext(**ctx), "media")


# ------------------------------------------------------------------ images

def test_image_min_side_reports_smallest_side():
    s = conv("q", "a", images=2)
    v = media({"image_min_side": 28}, s, image_sizes=[(480, 640), (20, 900)])
    assert v == Verdict(False, "image_min_side", 20.0, "image shorter side (px) 20 below 28 (image 1)")
    assert media({"image_min_side": 20}, s, image_sizes=[(480, 640), (20, 900)]) is None


def test_image_max_side_and_pixels():
    s = conv("q", "a", images=2)
    sizes = [(480, 640), (3000, 4000)]
    assert media({"image_max_side": 3999}, s, image_sizes=sizes).value == 4000.0
    assert media({"image_max_side": 4000}, s, image_sizes=sizes) is None
    assert media({"image_max_pixels": 11_999_999}, s, image_sizes=sizes).value == 12_000_000.0
    v = media({"image_min_pixels": 307_201}, s, image_sizes=sizes)
    assert (v.rule, v.value) == ("image_min_pixels", 307_200.0)


def test_aspect_ratio_runs_before_visual_tokens():
    # smart_resize raises on ratio > 200; the ratio rule (cheaper) must drop the sample first
    s = conv("q", "a", images=1)
    v = media({"image_max_ratio": 200, "max_visual_tokens": 16384}, s, image_sizes=[(10, 3000)])
    assert (v.keep, v.rule, v.value) == (False, "image_max_ratio", 300.0)
    assert media({"image_max_ratio": 200}, s, image_sizes=[(10, 2000)]) is None  # exactly 200 is allowed


def test_visual_tokens_follow_smart_resize_per_preset():
    # 1000x1000 -> 1008x1008 -> 36*36 = 1296; 480x640 -> 476x644 -> 17*23 = 391; sum 1687
    s = conv("q", "a", images=2)
    sizes = [(1000, 1000), (480, 640)]
    ctx = dict(image_sizes=sizes, preset=QWEN25_VL)
    assert media({"max_visual_tokens": 1686}, s, **ctx).value == 1687.0
    assert media({"max_visual_tokens": 1687}, s, **ctx) is None
    assert media({"max_visual_tokens": 1686}, s, image_sizes=sizes, preset=QWEN2_VL).value == 1687.0
    # qwen-vl: a fixed 256 tokens per image, whatever the size
    assert media({"max_visual_tokens": 511}, s, image_sizes=sizes, preset=QWEN_VL).value == 512.0


def test_visual_tokens_honour_per_image_max_pixels():
    # 2000x1000 under max_pixels 78400: beta = sqrt(2e6/78400) -> 392x196 -> 14*7 = 98 tokens
    s = conv("q", "a", images=1, image_options=[{"max_pixels": 78400}])
    v = media({"max_visual_tokens": 97}, s, image_sizes=[(2000, 1000)])
    assert v.value == 98.0


def test_media_rules_need_sizes():
    with pytest.raises(ValueError, match="image_sizes"):
        media({"image_min_side": 28}, conv("q", "a", images=1), image_sizes=None)
    # no images: nothing to measure, kept
    assert media({"image_min_side": 28}, conv("q", "a"), image_sizes=None) is None


# ------------------------------------------------------------------ video

def test_video_rules_accept_dicts_and_objects():
    s = conv("q", "a", videos=2)
    infos = [
        {"duration": 12.5, "avg_fps": 30.0, "num_frames": 375, "width": 640, "height": 360},
        SimpleNamespace(duration=0.4, avg_fps=25.0, num_frames=10, width=640, height=360),
    ]
    v = media({"video_min_duration": 1.0}, s, video_infos=infos)
    assert (v.rule, v.value, v.reason) == ("video_min_duration", 0.4, "video duration (s) 0.4 below 1 (video 1)")
    assert media({"video_max_duration": 12.0}, s, video_infos=infos).value == 12.5
    assert media({"video_min_fps": 26}, s, video_infos=infos).value == 25.0
    assert media({"video_max_fps": 29.97}, s, video_infos=infos).value == 30.0
    assert media({"video_min_frames": 11}, s, video_infos=infos).value == 10.0
    assert media({"video_max_frames": 374}, s, video_infos=infos).value == 375.0
    assert media({"video_min_frames": 10, "video_max_frames": 375, "video_min_duration": 0.4}, s, video_infos=infos) is None


# ------------------------------------------------------------------ text length

def test_text_length_rules_total_and_per_turn():
    s = conv("What is in the image?", "A small red car parked by a wall.", system="A very long system prompt " * 20)
    # user 21 chars / 5 words, assistant 33 chars / 8 words; the system prompt does not count
    raw = lambda cfg: run_filters(only(cfg), s, FilterContext(), "raw")
    assert raw({"text_min_chars": 55}).value == 54.0
    assert raw({"text_min_chars": 54}) is None
    assert raw({"text_max_chars": 53}).value == 54.0
    assert raw({"text_min_words": 14}).value == 13.0
    assert raw({"text_max_words": 12}).value == 13.0
    v = raw({"turn_max_chars": 30})
    assert (v.value, v.reason) == (33.0, "turn chars 33 above 30 (turn 1)")
    assert raw({"turn_max_words": 7}).value == 8.0


def test_default_text_min_chars_drops_empty_text():
    s = conv("", "")  # also structurally bad; text_min_chars alone:
    assert run_filters(only({"text_min_chars": 1}), s, FilterContext(), "raw").value == 0.0


# ------------------------------------------------------------------ boxes

def test_boxes_inside_image_and_not_degenerate():
    s = conv("q", "a", images=2)
    sizes = [(100, 200), (50, 50)]  # (h, w)
    inside = [[(10, 10, 200, 100)], [(0, 0, 50, 50)]]  # ends are exclusive: x2 == w is inside
    assert media({"box_in_image": 0, "box_min_side": 1}, s, image_sizes=sizes, boxes=inside) is None

    out = [[(150, 50, 210, 90)], [(0, 0, 49, 53)]]
    v = media({"box_in_image": 0}, s, image_sizes=sizes, boxes=out)
    assert (v.rule, v.value) == ("box_in_image", 10.0)
    assert media({"box_in_image": 10}, s, image_sizes=sizes, boxes=out) is None  # within tolerance

    flat = [[(5, 5, 5, 20), (1, 1, 30, 30)], []]
    v = media({"box_min_side": 1}, s, image_sizes=sizes, boxes=flat)
    assert (v.rule, v.value) == ("box_min_side", 0.0)
    inverted = [[(40, 40, 10, 60)], []]
    assert media({"box_min_side": 1}, s, image_sizes=sizes, boxes=inverted).value == -30.0


def test_boxes_from_a_callable_hook_are_fetched_lazily():
    calls = []

    def hook(sample):
        calls.append(sample.id)
        return [[(0, 0, 300, 10)]]

    s = conv("q", "a", images=1)
    v = media({"box_in_image": 0}, s, image_sizes=[(100, 200)], boxes=hook)
    assert (v.value, calls) == (100.0, ["t"])


# ------------------------------------------------------------------ structure and placeholders

def structure(sample):
    return run_filters(only({"conversation_structure": True}), sample, FilterContext(), "raw")


def test_structure_accepts_system_then_alternating_turns():
    s = conv("q1", "a1", "q2", "a2", system="sys")
    assert structure(s) is None
    v = build_filters({"conversation_structure": True}, defaults=False)[0](s, FilterContext())
    assert v == Verdict(True, "conversation_structure", 4.0, "")


@pytest.mark.parametrize(
    "roles, texts, index, reason",
    [
        (["assistant", "user"], ["a", "q"], 0, "expected a user turn, got assistant"),
        (["user", "user", "assistant"], ["q", "q", "a"], 1, "expected an assistant turn, got user"),
        (["user", "assistant", "user"], ["q", "a", "q"], 2, "last turn is not an assistant turn"),
        (["user", "assistant"], ["q", "   "], 1, "empty assistant turn"),
        (["user", "system", "assistant"], ["q", "s", "a"], 1, "system message after the first position"),
        (["user", "bot"], ["q", "a"], 1, "unknown role 'bot'"),
        (["system"], ["s"], 0, "only a system message"),
    ],
)
def test_structure_faults(roles, texts, index, reason):
    s = Sample("t", [Message(r, [TextPart(t)]) for r, t in zip(roles, texts)])
    v = structure(s)
    assert (v.keep, v.value, v.reason) == (False, float(index), f"message {index}: {reason}")


def placeholders(sample, preset=QWEN25_VL):
    return run_filters(only({"media_placeholders": True}), sample, FilterContext(preset=preset), "raw")


def test_placeholders_match_media():
    assert placeholders(conv("q", "a", images=2, videos=1)) is None
    s = conv("q", "a", images=2)
    s.images.append(MediaRef("image", "extra.jpg"))
    v = placeholders(s)
    assert (v.value, v.reason) == (-1.0, "2 image placeholders for 3 images")
    s = conv("q", "a", images=2)
    s.messages[0].parts[:2] = [ImagePart(1), ImagePart(0)]
    assert placeholders(s).reason == "image placeholders refer to [1, 0], expected 0..1 in order"
    s = conv("look <image> here", "a", images=0)
    assert placeholders(s).reason == "message 0 has placeholder text '<image>' outside a media part"
    v = placeholders(conv("q", "a", videos=1), preset=QWEN_VL)
    assert (v.value, v.reason) == (1.0, "preset qwen-vl does not take video")


# ------------------------------------------------------------------ encoded

def encoded(n, supervised):
    labels = np.full(n, -100, dtype=np.int32)
    labels[n - supervised:] = 7
    empty = np.zeros((0, 3), np.int32)
    return EncodedSample("t", np.arange(n, dtype=np.int32), labels, np.zeros((3, n), np.int32),
                         np.zeros((0, 1176), np.uint8), empty, empty, np.zeros(0, np.float32))


def test_encoded_rules():
    s = conv("q", "a")
    fs = only({"max_seq_length": 100, "min_supervised_tokens": 1})
    assert run_filters(fs, s, FilterContext(encoded=encoded(100, 3)), "encoded") is None
    v = run_filters(fs, s, FilterContext(encoded=encoded(101, 3)), "encoded")
    assert (v.rule, v.value) == ("max_seq_length", 101.0)
    v = run_filters(fs, s, FilterContext(encoded=encoded(50, 0)), "encoded")
    assert (v.rule, v.value) == ("min_supervised_tokens", 0.0)
    # raw/media filters do not run in the encoded phase and vice versa
    assert run_filters(fs, s, FilterContext(), "raw") is None


def test_evaluate_filters_reports_every_measured_value():
    s = conv("q", "a", images=1)
    verdicts = evaluate_filters(only({"image_min_side": 10, "image_max_ratio": 200}), s,
                                FilterContext(image_sizes=[(300, 600)]), "media")
    assert [(v.rule, v.value, v.keep) for v in verdicts] == [("image_max_ratio", 2.0, True), ("image_min_side", 300.0, True)]


def test_unknown_phase_is_an_error():
    with pytest.raises(ValueError, match="unknown filter phase 'decoded'"):
        run_filters([], conv("q", "a"), FilterContext(), "decoded")


def test_video_max_ratio_drops_before_decoding():
    s = Sample("v", [Message("user", [VideoPart(0), TextPart("What?")]), Message("assistant", [TextPart("A strip.")])],
               videos=[MediaRef("video", path="wide.mp4")])
    fs = build_filters({"video_max_ratio": 200}, defaults=False)
    info = {"duration": 1.0, "avg_fps": 25.0, "num_frames": 25, "width": 16000, "height": 16}
    v = run_filters(fs, s, FilterContext(video_infos=[info]), "media")
    assert (v.keep, v.rule, v.value) == (False, "video_max_ratio", 1000.0)
    ok = dict(info, width=3200)
    assert run_filters(fs, s, FilterContext(video_infos=[ok]), "media") is None  # exactly 200 is allowed


def test_repetition_measures_a_bounded_prefix_of_huge_turns():
    from filters.repetition import MAX_MEASURED_CHARS, char_repetition_ratio
    prose = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(MAX_MEASURED_CHARS))
    assert char_repetition_ratio(prose + "ab" * 1_000_000, 10) == char_repetition_ratio(prose, 10)
