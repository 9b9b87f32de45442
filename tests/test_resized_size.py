"""Per-item resized_height / resized_width (qwen-vl-utils 0.0.14, spec §5 step 3 and §6.5).

Sizes are checked against transformers' own smart_resize; pixels against a direct computation of
the reference's steps (Pillow bicubic to the requested size, then the image processor's second
resize when that size lies outside the job's band) and against transformers' PIL image processor
fed the reference's first-pass image.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

from filters import FilterContext, build_filters, run_filters
from media_factory import gradient_rgb, make_image, video_frame
from processors import EncodeOptions, encode_sample, parse_record
from processors.errors import AspectRatioError, FormatError, ImageTooLargeError, VlprepError
from processors.grounding import Box, parse_grounding
from processors.image import image_target_size, process_image
from processors.patches import normalize_patches, patchify, unpatchify
from processors.plan import boxes_per_image, plan_image
from processors.presets import CLIP_MEAN, CLIP_STD, IMAGE_PAD_ID, QWEN25_VL, QWEN_VL, VIDEO_PAD_ID
from processors.resized_size import requested_size
from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart
from processors.video import process_video
from processors.video_resize import resize_frames
from processors.video_sampling import video_frame_size
from test_video_process import check_against_full_decode
from video_factory import make_clip

HUB = (3136, 12_845_056)                 # qwen-vl-utils' default image band, the requested size's band
NARROW = (3136, 28 * 28 * 64)            # a job band far below most requests: forces the second resize
BICUBIC = Image.Resampling.BICUBIC

# (resized_height, resized_width): multiples of 28, not multiples, tiny, above the band, extreme ratios
REQUESTS = [(280, 420), (300, 500), (70, 70), (100, 150), (20, 30), (13, 2000), (50_000, 40_000),
            (12_000, 9_000), (28, 5600), (5600, 28), (41, 8200), (999_999, 10_000), (1, 1)]


@pytest.fixture(scope="module")
def hf_smart_resize():
    return pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl").smart_resize


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    d = tmp_path_factory.mktemp("resized")
    make_image(d / "a.jpg", 640, 480, seed=1)
    return d / "a.jpg"


def reference_pixels(image: Image.Image, rh: int, rw: int, hf, band=HUB) -> np.ndarray:
    """The reference's steps, spelled out: qwen-vl-utils' image.resize((W, H)) (bicubic for RGB),
    then the image processor's smart_resize with its own band and a second bicubic resize."""
    H, W = hf(rh, rw, 28, *HUB)
    first = image.convert("RGB").resize((W, H), BICUBIC)
    H2, W2 = hf(H, W, 28, *band)
    if (H2, W2) != (H, W):
        first = first.resize((W2, H2), BICUBIC)
    return np.asarray(first)


# ------------------------------------------------------------------ sizes


@pytest.mark.parametrize("rh,rw", REQUESTS)
def test_requested_size_is_transformers_smart_resize_with_the_default_band(hf_smart_resize, rh, rw):
    expected = hf_smart_resize(rh, rw, 28, *HUB)
    try:
        hf_smart_resize(*expected, 28, *HUB)  # what the model's processor does with it next
    except ValueError:  # 41x8200 → 28x8204, ratio 293: refused up front, naming the request
        with pytest.raises(AspectRatioError, match=f"resized_height={rh}, resized_width={rw} give "
                                                   rf"{expected[1]}x{expected[0]} \(WxH\), aspect ratio"):
            requested_size(rh, rw)
        return
    assert requested_size(rh, rw) == expected
    # the source size and the item's or job's band play no part in the first size
    assert image_target_size(7, 3000, QWEN25_VL, resized_height=rh, resized_width=rw) == expected
    assert video_frame_size(1080, 1920, 768, resized_height=rh, resized_width=rw, min_pixels=200_704,
                            max_pixels=200_704, total_pixels=10**6) == expected


@pytest.mark.parametrize("rh,rw", REQUESTS)
def test_image_size_is_then_smart_resized_with_the_jobs_band(hf_smart_resize, rh, rw):
    first = hf_smart_resize(rh, rw, 28, *HUB)
    try:
        final = hf_smart_resize(*first, 28, *NARROW)
    except ValueError:
        with pytest.raises(AspectRatioError):
            image_target_size(480, 640, QWEN25_VL, max_pixels=NARROW[1], resized_height=rh, resized_width=rw)
        return
    assert image_target_size(480, 640, QWEN25_VL, min_pixels=NARROW[0], max_pixels=NARROW[1],
                             resized_height=rh, resized_width=rw) == final
    narrow_preset = QWEN25_VL.with_overrides(min_pixels=NARROW[0], max_pixels=NARROW[1])
    assert image_target_size(480, 640, narrow_preset, resized_height=rh, resized_width=rw) == final


def test_spot_values():
    assert requested_size(300, 500) == (308, 504)               # round(300/28)=11, round(500/28)=18
    assert requested_size(20, 30) == (56, 84)                   # under 3136 px: up through the min branch
    assert requested_size(12_000, 9_000) == (4116, 3080)        # spec T-I11: down to the default band
    assert requested_size(280.0, 420.0) == (280, 420)           # whole floats (a float column) are fine
    assert requested_size(np.int64(280), np.int32(420)) == (280, 420)
    assert requested_size() is None and requested_size(None, None) is None
    # 600x800 → 588x812 (477 456 px); a 64-token job band takes it down again: 168x252
    assert image_target_size(1, 1, QWEN25_VL, max_pixels=NARROW[1], resized_height=600, resized_width=800) == (168, 252)


# ------------------------------------------------------------------ image pixels


@pytest.mark.parametrize("rh,rw,band", [
    (300, 500, HUB),           # inside the job's band: one resize
    (280, 420, HUB),           # already multiples of 28
    (600, 800, NARROW),        # outside (above) the job's band: resized a second time
    (100, 100, (28 * 28 * 400, 12_845_056)),  # outside (below): up to the band's min the second time
    (2000, 60, NARROW),        # extreme aspect ratio, both passes
])
def test_pixels_equal_the_references_two_resizes(photo, hf_smart_resize, rh, rw, band):
    r = process_image(photo, QWEN25_VL, min_pixels=band[0], max_pixels=band[1], resized_height=rh, resized_width=rw)
    expected = reference_pixels(Image.open(photo), rh, rw, hf_smart_resize, band)
    H, W = expected.shape[:2]
    assert r.resized_size == (H, W) and r.original_size == (480, 640)
    assert r.grid_thw == (1, H // 14, W // 14) and r.num_tokens == H * W // 784
    patches, grid = patchify(expected[None])
    assert grid == r.grid_thw
    np.testing.assert_array_equal(r.patches, patches)


@pytest.mark.parametrize("rh,rw,band", [(300, 500, HUB), (600, 800, NARROW), (100, 100, (28 * 28 * 400, 12_845_056))])
def test_pixel_values_equal_transformers_on_the_first_pass_image(photo, hf_smart_resize, rh, rw, band):
    """qwen-vl-utils hands the processor its resized PIL image; transformers' PIL processor with the
    job's band must then give vlprep's pixel_values."""
    transformers = pytest.importorskip("transformers")
    H, W = hf_smart_resize(rh, rw, 28, *HUB)
    first = Image.open(photo).convert("RGB").resize((W, H))  # qwen-vl-utils' call: Pillow's default filter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = transformers.Qwen2VLImageProcessorPil(min_pixels=band[0], max_pixels=band[1])
        out = proc(images=first, return_tensors="np")
    r = process_image(photo, QWEN25_VL, min_pixels=band[0], max_pixels=band[1], resized_height=rh, resized_width=rw)
    assert r.grid_thw == tuple(int(v) for v in out["image_grid_thw"][0])
    assert np.abs(normalize_patches(r.patches, CLIP_MEAN, CLIP_STD) - out["pixel_values"]).max() <= 1e-6


def test_exif_rotated_image_gets_the_upright_requested_size(tmp_path, hf_smart_resize):
    im = Image.fromarray(gradient_rgb(90, 60, 3))
    exif = im.getexif()
    exif[0x0112] = 6  # stored 90x60, shown 60x90
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    r = process_image(tmp_path / "rot.jpg", QWEN25_VL, resized_height=280, resized_width=168)
    assert r.original_size == (90, 60) and r.resized_size == (280, 168)
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "rot.jpg"))
    np.testing.assert_array_equal(r.patches, patchify(reference_pixels(upright, 280, 168, hf_smart_resize)[None])[0])


def test_fast_mode_keeps_the_requested_size(photo):
    exact = process_image(photo, QWEN25_VL, resized_height=100, resized_width=150)
    fast = process_image(photo, QWEN25_VL, resized_height=100, resized_width=150, fast=True)
    assert fast.resized_size == exact.resized_size == (112, 140) and fast.grid_thw == exact.grid_thw


def test_qwen_vl_preset_resizes_the_requested_image_to_its_square(photo, hf_smart_resize):
    r = process_image(photo, QWEN_VL, resized_height=300, resized_width=500)
    first = Image.open(photo).convert("RGB").resize((504, 308), BICUBIC)
    np.testing.assert_array_equal(r.patches[0], np.asarray(first.resize((448, 448), BICUBIC)))


# ------------------------------------------------------------------ video


@pytest.fixture(scope="module")
def clip(photo):
    return make_clip(photo.parent / "clip.mp4", width=96, height=64, num_frames=30)


@pytest.mark.parametrize("rh,rw,extra", [
    (100, 150, {}),                                                   # → 112x140, under the video band's min
    (20, 30, {"min_pixels": 200_704, "total_pixels": 10**6}),         # → 56x84; the item's budget is ignored
    (300, 200, {"fps": 4, "max_pixels": 28 * 28 * 4}),
])
def test_video_frames_are_the_requested_size(clip, hf_smart_resize, rh, rw, extra):
    r = process_video(clip, QWEN25_VL, resized_height=rh, resized_width=rw, **extra)
    H, W = hf_smart_resize(rh, rw, 28, *HUB)
    n = len(r.frame_indices)
    assert r.resized_size == (H, W) and r.original_size == (64, 96)
    assert r.grid_thw == (math.ceil(n / 2), H // 14, W // 14)
    assert r.num_tokens == int(np.prod(r.grid_thw)) // 4
    check_against_full_decode(clip, r)
    plain = process_video(clip, QWEN25_VL, **extra)
    assert plain.frame_indices == r.frame_indices  # frame sampling is untouched


def test_frame_list_video_is_resized_once_to_the_requested_size(tmp_path, hf_smart_resize):
    # frames of different sizes are fine with an explicit size: each goes straight to it
    arrays = [video_frame(0, 100, 60), video_frame(1, 100, 60), video_frame(2, 80, 90)]
    Image.fromarray(arrays[1]).save(tmp_path / "f1.png")
    r = process_video([arrays[0], tmp_path / "f1.png", arrays[2]], QWEN25_VL, resized_height=200, resized_width=300)
    H, W = hf_smart_resize(200, 300, 28, *HUB)
    assert (H, W) == (196, 308) and r.resized_size == (H, W) and r.grid_thw == (2, H // 14, W // 14)
    got = unpatchify(r.patches, r.grid_thw)
    for i, a in enumerate(arrays):
        np.testing.assert_array_equal(got[i], resize_frames(a, H, W))
    np.testing.assert_array_equal(got[3], got[2])  # temporal padding repeats the last frame
    with pytest.raises(VlprepError, match="same size"):
        process_video(arrays, QWEN25_VL)  # without it the sizes must agree, as before


# ------------------------------------------------------------------ errors

BAD = [
    ({"resized_height": 280}, FormatError, "resized_height=280 is given without resized_width"),
    ({"resized_width": 420}, FormatError, "resized_width=420 is given without resized_height"),
    ({"resized_height": 280.5, "resized_width": 420}, FormatError, r"resized_height=280\.5: must be a whole number"),
    ({"resized_height": 280, "resized_width": "420"}, FormatError, r"resized_width='420': must be a positive integer"),
    ({"resized_height": True, "resized_width": 420}, FormatError, "resized_height=True"),
    ({"resized_height": 0, "resized_width": 420}, FormatError, "resized_height=0: must be between 1 and 1,000,000"),
    ({"resized_height": -28, "resized_width": 420}, FormatError, "resized_height=-28"),
    ({"resized_height": 280, "resized_width": 10**7}, FormatError, "resized_width=10000000: must be between"),
    ({"resized_height": float("nan"), "resized_width": 420}, FormatError, "resized_height=nan"),
    ({"resized_height": 10, "resized_width": 3000}, AspectRatioError, "resized_height=10, resized_width=3000: aspect ratio 300"),
]


@pytest.mark.parametrize("opts,exc,msg", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_requests_name_the_option_and_value(photo, clip, opts, exc, msg):
    with pytest.raises(exc, match=msg):
        process_image(photo, QWEN25_VL, **opts)
    with pytest.raises(exc, match=msg):
        image_target_size(480, 640, QWEN25_VL, **opts)
    with pytest.raises(exc, match=msg):
        process_video(clip, QWEN25_VL, **opts)
    with pytest.raises(exc, match=msg):
        process_video([video_frame(0, 60, 40)] * 2, QWEN25_VL, **opts)


def test_request_above_the_image_pixel_limit(photo):
    with pytest.raises(ImageTooLargeError, match=r"resized_height=1000, resized_width=1000 give 1008x1008 \(WxH\) = "
                                                 r"1,016,064 pixels, above the image pixel limit of 1,000,000"):
        process_image(photo, QWEN25_VL, resized_height=1000, resized_width=1000, max_image_pixels=1_000_000)
    assert process_image(photo, QWEN25_VL, resized_height=980, resized_width=980,
                         max_image_pixels=1_000_000).resized_size == (980, 980)


# ------------------------------------------------------------------ encode, filters, boxes


def _record(item: dict, answer: str = "A gradient.") -> dict:
    return {"messages": [{"role": "user", "content": [item, {"type": "text", "text": "What is this?"}]},
                         {"role": "assistant", "content": answer}]}


def test_encode_sample_end_to_end(photo, clip, hf_smart_resize):
    rec = {"messages": [
        {"role": "user", "content": [
            {"type": "image", "image": photo.name, "resized_height": 600, "resized_width": 800, "max_pixels": 3136},
            {"type": "video", "video": clip.name, "resized_height": 100, "resized_width": 150, "nframes": 4},
            {"type": "text", "text": "Compare."}]},
        {"role": "assistant", "content": "Same colours."}]}
    enc = encode_sample(parse_record(rec), QWEN25_VL, media_root=photo.parent,
                        options=EncodeOptions(max_pixels=NARROW[1]))
    H, W = hf_smart_resize(*hf_smart_resize(600, 800, 28, *HUB), 28, *NARROW)
    assert enc.image_grid_thw.tolist() == [[1, H // 14, W // 14]]
    assert enc.video_grid_thw.tolist() == [[2, 8, 10]]
    n_image = sum(int(np.prod(g)) // 4 for g in enc.image_grid_thw)
    n_video = sum(int(np.prod(g)) // 4 for g in enc.video_grid_thw)
    assert int((enc.input_ids == IMAGE_PAD_ID).sum()) == n_image == enc.meta["n_image_tokens"] == H * W // 784
    assert int((enc.input_ids == VIDEO_PAD_ID).sum()) == n_video == enc.meta["n_video_tokens"] == 40
    assert enc.pixel_values.shape[0] == 4 * (n_image + n_video)
    assert enc.meta["images"][0]["resized_size"] == [H, W] and enc.meta["videos"][0]["resized_size"] == [112, 140]


def test_grounding_uses_the_final_size(photo):
    # a Qwen2-VL box (0-1000 of the original 640x480) rendered for Qwen2.5-VL on the image the model
    # sees: 600x800 → 588x812 → 168x252 in the job's 64-token band
    answer = "<|object_ref_start|>it<|object_ref_end|><|box_start|>(100,200),(500,900)<|box_end|>"
    item = {"type": "image", "image": photo.name, "resized_height": 600, "resized_width": 800}
    enc = encode_sample(parse_record(_record(item, answer)), QWEN25_VL, media_root=photo.parent,
                        options=EncodeOptions(max_pixels=NARROW[1], grounding_format="qwen2-vl"))
    assert enc.meta["images"][0]["resized_size"] == [168, 252]
    # original pixels (64, 96, 320, 432), then x * 252/640, y * 168/480
    assert enc.meta["boxes"][0]["objects"][0]["after"] == [round(64 * 252 / 640), round(96 * 168 / 480),
                                                           round(320 * 252 / 640), round(432 * 168 / 480)]


def test_box_rules_read_qwen25_coordinates_on_the_final_size():
    text = '{"bbox_2d": [20, 40, 100, 160], "label": "x"}'
    s = Sample("s", [Message("user", [ImagePart(0), TextPart("?")]), Message("assistant", [TextPart(text)])],
               images=[MediaRef("image", "a.jpg", options={"resized_height": 600, "resized_width": 800})])
    narrow = EncodeOptions(max_pixels=NARROW[1])
    got = boxes_per_image(s, "qwen2.5-vl", [(480, 640)],
                          lambda i: plan_image(480, 640, s.images[i], QWEN25_VL, narrow).resized_size)
    span = parse_grounding(text, "qwen2.5-vl", original_size=(480, 640), resized_size=(168, 252))
    assert got == [[(o.x1, o.y1, o.x2, o.y2) for o in span[0].objects if isinstance(o, Box)]]
    wide = boxes_per_image(s, "qwen2.5-vl", [(480, 640)],
                           lambda i: plan_image(480, 640, s.images[i], QWEN25_VL, EncodeOptions()).resized_size)
    assert got != wide  # 588x812 there


def test_visual_token_rule_counts_the_requested_size():
    s = Sample("s", [Message("user", [ImagePart(0), TextPart("?")]), Message("assistant", [TextPart("A.")])],
               images=[MediaRef("image", "a.jpg", options={"resized_height": 280, "resized_width": 420,
                                                          "max_pixels": 3136})])
    rule = build_filters({"max_visual_tokens": 149}, defaults=False)
    v = run_filters(rule, s, FilterContext(preset=QWEN25_VL, image_sizes=[(1080, 1920)]), "media")
    assert (v.rule, v.value) == ("max_visual_tokens", 150.0)          # 280x420: 10*15 tokens
    # the job's 100-token band takes 280x420 down to 224x336: 8*12 = 96 tokens
    band = QWEN25_VL.with_overrides(max_pixels=28 * 28 * 100)
    assert run_filters(rule, s, FilterContext(preset=band, image_sizes=[(1080, 1920)]), "media") is None
    s.images[0].options = {"resized_height": 280}
    with pytest.raises(FormatError, match="resized_height=280 is given without resized_width"):
        run_filters(rule, s, FilterContext(preset=QWEN25_VL, image_sizes=[(1080, 1920)]), "media")
