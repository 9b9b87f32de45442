"""The `qwen3-vl` preset against transformers 5.x (issue #13; decisions in docs/qwen3_vl.md).

* images: pixel values equal to `Qwen2VLImageProcessorPil` configured like the released checkpoints'
  preprocessor_config.json (patch 16, merge 2, mean = std = 0.5, 65 536 … 16 777 216 pixels);
* ids, labels and `<t seconds>` text equal to `Qwen3VLProcessor` + the Qwen3-VL chat template on
  image, multi-image, video and mixed samples, in both token layouts (4.57: `qwen3-vl`, 5.x:
  `qwen3-vl-tf5`), and the video's frame indices, grid and pixels: golden files written by
  tests/reference/gen_qwen3_vl.py (`make reference`; the video processor needs torchvision);
* position ids equal to `Qwen3VLModel.get_rope_index` on a tiny config;
* relative 0–1000 grounding, converted from and to the other generations.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from media_factory import gradient_rgb, make_image
from processors.encode import EncodeOptions, encode_sample
from processors.grounding import convert_grounding_text
from processors.image import process_image
from processors.patches import normalize_patches
from processors.presets import IGNORE_INDEX, get_preset
from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart, VideoPart
from processors.tokenizer import get_tokenizer
from processors.video import process_video

GOLDEN = Path(__file__).parent / "golden"
Q3 = get_preset("qwen3-vl")
Q3_TF5 = get_preset("qwen3-vl-tf5")


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "qwen3_vl.npz"))


# ------------------------------------------------------------------ preset constants


def test_preset_constants_are_the_checkpoints():
    assert (Q3.patch_size, Q3.merge_size, Q3.temporal_patch_size, Q3.factor, Q3.patch_dim) == (16, 2, 2, 32, 1536)
    assert Q3.image_mean == Q3.image_std == (0.5, 0.5, 0.5)
    assert (Q3.min_pixels, Q3.max_pixels) == (65536, 16777216)
    assert (Q3.video_min_pixels, Q3.video_max_pixels, Q3.fps, Q3.min_frames, Q3.max_frames) == (4096, 25165824, 2.0, 4, 768)
    assert Q3.system_prompt is None and Q3.grounding == "qwen3-vl"
    assert Q3.video_timestamps == "4.57" and Q3_TF5.video_timestamps == "5.x"
    assert get_preset("qwen3-vl-qvu").video_rule == "qwen-vl-utils"


def test_qwen3_tokenizer_table():
    tok = get_tokenizer(preset=Q3)
    assert [tok.token_to_id(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
                                          "<|im_end|>", "<think>", "</think>")] == [
        151652, 151653, 151655, 151656, 151645, 151667, 151668]
    assert tok.encode("a<think>b</think>") == tok.encode("a") + [151667] + tok.encode("b") + [151668]


# ------------------------------------------------------------------ images: pixels


@pytest.fixture(scope="module")
def oracle():
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.Qwen2VLImageProcessorPil(
            patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
            size={"shortest_edge": 65536, "longest_edge": 16777216})


@pytest.mark.parametrize("w,h", [(300, 200), (90, 140), (1, 1), (31, 700), (4000, 3000), (512, 512), (33, 6000)])
def test_image_pixels_equal_the_image_processor(oracle, tmp_path, w, h):
    path = make_image(tmp_path / f"im_{w}x{h}.png", w, h)
    ours = process_image(path, Q3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = oracle(images=Image.open(path), return_tensors="np")
    assert ours.grid_thw == tuple(int(v) for v in out["image_grid_thw"][0])
    assert ours.patches.shape[1] == 1536
    mine = normalize_patches(ours.patches, Q3.image_mean, Q3.image_std, patch_size=Q3.patch_size)
    assert mine.shape == out["pixel_values"].shape
    assert np.abs(mine - out["pixel_values"]).max() <= 1e-6


# ------------------------------------------------------------------ ids, labels, timestamps, video


def _images(tmp_path):
    paths = []
    for i, (w, h, seed) in enumerate([(300, 200, 1), (90, 140, 2)]):
        p = tmp_path / f"g{i}.png"
        Image.fromarray(gradient_rgb(w, h, seed=seed)).save(p)
        paths.append(str(p))
    return paths


def _samples(tmp_path):
    img = [MediaRef("image", p) for p in _images(tmp_path)]
    vid = [MediaRef("video", str(GOLDEN / "qwen3_vl_clip.mp4"))]
    U, A, S = "user", "assistant", "system"
    return {
        "image": Sample("image", [Message(U, [ImagePart(0), TextPart("Describe this image.")]),
                                  Message(A, [TextPart("A soft gradient.")])], images=img[:1]),
        "multi_image": Sample("multi_image", [Message(U, [ImagePart(0), ImagePart(1), TextPart("What differs?")]),
                                              Message(A, [TextPart("The colours, mostly.")])], images=img),
        "video": Sample("video", [Message(U, [VideoPart(0), TextPart("What happens?")]),
                                  Message(A, [TextPart("A bar moves right.")])], videos=vid),
        "mixed": Sample("mixed", [Message(S, [TextPart("Answer briefly.")]),
                                  Message(U, [TextPart("Look: "), ImagePart(0), TextPart(" then "), VideoPart(0)]),
                                  Message(A, [TextPart("Seen both.")]), Message(U, [TextPart("Same scene?")]),
                                  Message(A, [TextPart("No.")])], images=img[:1], videos=vid),
        "video_vision_id": Sample("video_vision_id", [Message(U, [TextPart("Clip:"), VideoPart(0)]),
                                                      Message(A, [TextPart("Moving bar.")])], videos=vid),
    }


CASES = ["image", "multi_image", "video", "mixed", "video_vision_id"]


@pytest.mark.parametrize("layout", ["457", "5x"])
@pytest.mark.parametrize("case", CASES)
def test_ids_labels_equal_processor_and_template(golden, tmp_path, case, layout):
    preset = Q3 if layout == "457" else Q3_TF5
    sample = _samples(tmp_path)[case]
    # the preset's own frame resize is the video processor's uint8 path (no fast_videos needed)
    opts = EncodeOptions(add_vision_id=case == "video_vision_id")
    enc = encode_sample(sample, preset, options=opts)
    key = f"ids_{layout}" if f"{case}/ids_{layout}" in golden else "ids_5x"  # image-only: one layout
    expected = golden[f"{case}/{key}"]
    if not np.array_equal(enc.input_ids, expected):
        tok = get_tokenizer(preset=preset)
        raise AssertionError(f"ids differ:\nours: {tok.decode(enc.input_ids)!r}\nref:  {tok.decode(expected)!r}")
    labels = golden[f"{case}/{key.replace('ids', 'labels')}"]
    assert np.array_equal(enc.labels, labels)
    assert int((enc.labels != IGNORE_INDEX).sum()) == enc.meta["n_supervised_tokens"]
    if f"{case}/image_grid_thw" in golden:
        assert np.array_equal(enc.image_grid_thw, golden[f"{case}/image_grid_thw"])
    if f"{case}/video_grid_thw" in golden:
        assert np.array_equal(enc.video_grid_thw, golden[f"{case}/video_grid_thw"])
        assert enc.meta["videos"][0]["frame_indices"] == golden[f"{case}/frames_indices"].tolist()
        assert enc.meta["videos"][0]["group_times"] == pytest.approx([0.3, 1.5, 2.4])
        n_img = int(enc.image_grid_thw.prod(axis=1).sum()) if len(enc.image_grid_thw) else 0
        assert np.array_equal(enc.pixel_values[n_img:], golden[f"{case}/pixel_values_videos_u8"])


def test_timestamp_text_of_both_layouts(golden, tmp_path):
    enc = encode_sample(_samples(tmp_path)["video"], Q3, options=EncodeOptions(fast_videos=True))
    text = get_tokenizer(preset=Q3).decode(enc.input_ids)
    assert text == str(golden["video/text_457"])
    assert "<0.3 seconds><|vision_start|>" in text and "<2.4 seconds>" in text
    enc5 = encode_sample(_samples(tmp_path)["video"], Q3_TF5, options=EncodeOptions(fast_videos=True))
    text5 = get_tokenizer(preset=Q3).decode(enc5.input_ids)
    assert text5.count("<|vision_start|>") == text.count("<|vision_start|>") + 1
    assert "<|vision_start|><0.3 seconds><|vision_start|>" in text5


def test_video_sampling_equals_the_video_processor(golden):
    r = process_video(str(GOLDEN / "qwen3_vl_clip.mp4"), Q3, fast=True)
    assert r.frame_indices == golden["video/frames_indices"].tolist()
    assert r.grid_thw == tuple(golden["video/video_grid_thw"][0])
    assert np.array_equal(r.patches, golden["video/pixel_values_videos_u8"])
    # the sample plan from the header alone says the same frames, grid and group times
    from processors.encode import EncodeOptions
    from processors.plan import VideoHeader, plan_video
    from processors.video import probe_video

    plan = plan_video(VideoHeader.from_info(probe_video(str(GOLDEN / "qwen3_vl_clip.mp4"))), MediaRef("video"), Q3,
                      EncodeOptions())
    assert list(plan.frame_indices) == r.frame_indices and plan.grid_thw == r.grid_thw
    assert list(plan.group_times) == pytest.approx([0.3, 1.5, 2.4])


# ------------------------------------------------------------------ position ids


@pytest.fixture(scope="module")
def hf_model():
    torch = pytest.importorskip("torch")
    from transformers import Qwen3VLConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    cfg = Qwen3VLConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64, head_dim=8,
                         rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           num_position_embeddings=16, deepstack_visual_indexes=[]))
    assert cfg.vision_config.spatial_merge_size == 2
    with torch.no_grad():
        return Qwen3VLModel(cfg).eval()


def hf_rope(model, enc):
    import torch

    ids = torch.tensor(enc.input_ids, dtype=torch.long)[None]
    types = torch.zeros_like(ids, dtype=torch.int32)
    types[ids == 151655] = 1
    types[ids == 151656] = 2
    kw = dict(image_grid_thw=torch.tensor(enc.image_grid_thw, dtype=torch.long) if len(enc.image_grid_thw) else None,
              video_grid_thw=torch.tensor(enc.video_grid_thw, dtype=torch.long) if len(enc.video_grid_thw) else None)
    with torch.no_grad():
        pos, delta = model.get_rope_index(ids, types, **kw)
    return pos[:, 0].numpy(), int(delta.reshape(-1)[0])


@pytest.mark.parametrize("preset", [Q3, Q3_TF5], ids=["457", "5x"])
@pytest.mark.parametrize("case", CASES)
def test_position_ids_equal_get_rope_index(hf_model, tmp_path, case, preset):
    enc = encode_sample(_samples(tmp_path)[case], preset, options=EncodeOptions(fast_videos=True))
    pos, delta = hf_rope(hf_model, enc)
    assert np.array_equal(enc.position_ids, pos)
    assert enc.rope_delta == delta


def test_position_ids_random_sequences(hf_model):
    """Random text runs around images and multi-group videos of several sizes."""
    from processors.chatml import build_chatml
    from processors.rope import get_rope_index

    rng = np.random.default_rng(13)
    for _ in range(20):
        parts, imgs, vids, times, n_i, n_v = [], [], [], [], 0, 0
        for _ in range(rng.integers(1, 5)):
            parts.append(TextPart("x" * int(rng.integers(0, 6))))
            if rng.random() < 0.5:
                imgs.append([1, 2 * int(rng.integers(1, 5)), 2 * int(rng.integers(1, 5))])
                parts.append(ImagePart(n_i))
                n_i += 1
            else:
                vids.append([int(rng.integers(1, 4)), 2 * int(rng.integers(1, 5)), 2 * int(rng.integers(1, 5))])
                times.append([0.5 + k for k in range(vids[-1][0])])
                parts.append(VideoPart(n_v))
                n_v += 1
        s = Sample("r", [Message("user", parts), Message("assistant", [TextPart("ok")])],
                   images=[MediaRef("image", "i")] * n_i, videos=[MediaRef("video", "v")] * n_v)
        for preset in (Q3, Q3_TF5):
            chat = build_chatml(s, preset, image_tokens=[int(np.prod(g)) // 4 for g in imgs],
                                video_tokens=[int(np.prod(g)) // 4 for g in vids], video_times=times)
            pos, delta = get_rope_index(chat.input_ids, imgs, vids, None, preset)

            class E:  # what hf_rope reads
                input_ids = chat.input_ids
                image_grid_thw = np.asarray(imgs).reshape(-1, 3)
                video_grid_thw = np.asarray(vids).reshape(-1, 3)

            ref, ref_delta = hf_rope(hf_model, E)
            assert np.array_equal(pos, ref) and delta == ref_delta


# ------------------------------------------------------------------ grounding


def test_grounding_relative_0_1000_from_and_to_other_generations():
    size = (200, 300)  # (h, w) of the original image
    q2 = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(100,250),(500,750)<|box_end|>"
    text, rep = convert_grounding_text(q2, "qwen2-vl", Q3, original_size=size)
    assert text == '[{"bbox_2d": [100, 250, 500, 750], "label": "cat"}]' and rep.ok
    # Qwen2.5-VL absolute pixels on the resized image -> relative 0-1000 on the original
    q25 = '{"bbox_2d": [32, 56, 160, 168], "label": "cat"}'
    resized = (224, 320)
    text, rep = convert_grounding_text(q25, "qwen2.5-vl", Q3, original_size=size, resized_size=resized,
                                       src_resized_size=resized)
    assert text == '{"bbox_2d": [100, 250, 500, 750], "label": "cat"}', text
    back, _ = convert_grounding_text(text, "qwen3-vl", "qwen2.5-vl", original_size=size, resized_size=resized)
    assert back == q25
    # same format: coordinates kept as written
    same, rep = convert_grounding_text(text, "qwen3-vl", Q3, original_size=size)
    assert same == text and rep.ok
    # points and ```json fences as in the Qwen3-VL cookbooks
    fenced = '```json\n[{"point_2d": [500, 500], "label": "eye"}]\n```'
    px, rep = convert_grounding_text(fenced, "qwen3-vl", "qwen2-vl", original_size=size)
    assert px == fenced and [p.kind for p in rep.problems] == ["unsupported"]  # qwen2-vl has no points
    out, rep = convert_grounding_text(fenced, "qwen3-vl", "qwen2.5-vl", original_size=size, resized_size=resized)
    assert out == '```json\n[{"point_2d": [160, 112], "label": "eye"}]\n```', out
