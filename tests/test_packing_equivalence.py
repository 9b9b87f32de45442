"""Packed training equals one-by-one training: tiny random Qwen2-VL / Qwen2.5-VL, fp32 CPU.

The loss of one packed row (several samples back to back, pipeline.packing.PackedCollator) must
equal the token-weighted mean of the same samples' losses run one at a time (≤ 1e-5), with images,
a video with second_per_grid_ts, and text-only samples in one pack. transformers builds the
block-diagonal causal mask itself from position_ids row 0 (eager and sdpa); the test also checks
that a packed row *without* those boundaries gives a different loss, so the equality is not luck.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.loader import to_model_inputs
from pipeline.packing import PackedCollator, pack_collate
from test_reward_fixtures import encode_frames, photo, tiny_config


def _samples(preset):
    rng = np.random.default_rng(3)
    vid = np.stack([photo(56, 84, seed=s) for s in range(4)])
    encoded = [
        encode_frames("a", "What is in the picture?", "A red circle on a blue field.", images=[photo(56, 56, 1)], preset=preset),
        encode_frames("b", "Describe the clip and the photo.", "A camera pans left, then a still.",
                      images=[photo(84, 56, 2)], videos=[vid], secs=[1.5], preset=preset),
        encode_frames("c", "Say hello.", "Hello there, how can I help?", preset=preset),
        encode_frames("d", "Two frames?", "Yes, two.", videos=[vid[:2]], secs=[0.5], preset=preset),
    ]
    del rng
    return [dict(e.arrays(), id=e.id, meta=e.meta) for e in encoded]


def _model(family, attn):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    cls = Qwen2VLForConditionalGeneration if family == "qwen2-vl" else Qwen2_5_VLForConditionalGeneration
    cfg = tiny_config(family)
    cfg._attn_implementation = attn
    return cls(cfg).eval().to(torch.float32)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_packed_loss_equals_token_weighted_one_by_one(family, attn):
    samples = _samples(family)
    model = _model(family, attn)
    losses, weights = [], []
    with torch.no_grad():
        for s in samples:
            out = model(**to_model_inputs(s, family), use_cache=False)
            losses.append(float(out.loss))
            weights.append(int((s["labels"][1:] != -100).sum()))
        batch = PackedCollator(family)(samples)
        assert batch.ids == ["a", "b", "c", "d"]
        assert batch["position_ids"].shape == (4, 1, sum(len(s["input_ids"]) for s in samples))
        assert batch["second_per_grid_ts"].tolist() == [1.5, 0.5]
        packed = float(model(**batch).loss)
    expected = float(np.dot(losses, weights) / sum(weights))
    assert abs(packed - expected) <= 1e-5, (packed, expected, losses)

    # the same row without the text-position row: one long sequence, attention crosses samples
    with torch.no_grad():
        leaky = dict(batch)
        leaky["position_ids"] = batch["position_ids"][1:]
        assert abs(float(model(**leaky).loss) - expected) > 1e-4


def test_packed_loss_with_flash_kwargs_and_padding_tail():
    """cu_seq_lens_q/k + max_length_q/k (flash-attention kwargs) pass through an sdpa model unharmed,
    and a padded tail (pad_to) changes nothing."""
    samples = _samples("qwen2.5-vl")
    model = _model("qwen2.5-vl", "sdpa")
    T = sum(len(s["input_ids"]) for s in samples)
    with torch.no_grad():
        plain = float(model(**PackedCollator("qwen2.5-vl")(samples)).loss)
        flash = PackedCollator("qwen2.5-vl", flash_kwargs=True, pad_to=T + 37)(samples)
        assert flash["cu_seq_lens_q"].tolist()[-1] == T + 37 and flash["input_ids"].shape == (1, T + 37)
        assert abs(float(model(**flash).loss) - plain) <= 1e-5


def test_pack_collate_layout():
    samples = _samples("qwen2.5-vl")
    p = pack_collate(samples)
    lens = [len(s["input_ids"]) for s in samples]
    assert p["cu_seq_lens"].tolist() == np.cumsum([0] + lens).tolist()
    start = 0
    for s, n in zip(samples, lens):
        np.testing.assert_array_equal(p["position_ids"][0, 0, start:start + n], np.arange(n))
        np.testing.assert_array_equal(p["position_ids"][1:, 0, start:start + n], s["position_ids"])
        np.testing.assert_array_equal(p["input_ids"][0, start:start + n], s["input_ids"])
        assert p["labels"][0, start] == -100
        np.testing.assert_array_equal(p["labels"][0, start + 1:start + n], s["labels"][1:])
        start += n
    assert p["image_grid_thw"].tolist() == [[1, 4, 4], [1, 6, 4]]
    assert p["video_grid_thw"].tolist() == [[2, 4, 6], [1, 4, 6]]
    n_img = 16 + 24
    assert p["pixel_values"].shape[0] == n_img and p["pixel_values_videos"].shape[0] == 48 + 24
    np.testing.assert_array_equal(p["pixel_values"][16:], samples[1]["pixel_values"][:24])
    np.testing.assert_array_equal(p["pixel_values_videos"][:48], samples[1]["pixel_values"][24:])


def test_normalize_pixels_matches_the_numpy_reference_normalisation():
    from pipeline.loader import normalize_pixels
    from processors.patches import normalize_patches
    from processors.presets import QWEN25_VL

    rows = np.random.default_rng(0).integers(0, 256, (300, 1176)).astype(np.uint8)
    got = normalize_pixels(torch.from_numpy(rows), QWEN25_VL).numpy()
    ref = normalize_patches(rows, QWEN25_VL.image_mean, QWEN25_VL.image_std)
    assert got.dtype == np.float32 and np.abs(got - ref).max() <= 1e-6
    x = torch.from_numpy(rows).to(torch.float32) * (1.0 / 255.0)      # the out-of-place float32 arithmetic
    mean, std = torch.tensor(QWEN25_VL.image_mean), torch.tensor(QWEN25_VL.image_std)
    want = ((x.view(300, 3, 392) - mean[None, :, None]) / std[None, :, None]).view(300, -1)
    assert torch.equal(torch.from_numpy(got), want)


@pytest.mark.parametrize("name", ["qwen3-vl"])
def test_packed_loss_equals_one_by_one_qwen3_vl(tiny_qwen3_vl, tmp_path, name):
    """Qwen3-VL reads the same 4-row packed position ids (transformers 5.x Qwen3VLTextModel)."""
    from processors.presets import get_preset
    from test_qwen3_vl_scorer import _samples as qwen3_samples
    from tiny_models import load_model

    preset = get_preset(name)
    samples = qwen3_samples(tmp_path, preset)
    model = load_model(tiny_qwen3_vl)
    losses, weights = [], []
    with torch.no_grad():
        for s in samples:
            losses.append(float(model(**to_model_inputs(s, preset), use_cache=False).loss))
            weights.append(int((s["labels"][1:] != -100).sum()))
        packed = float(model(**PackedCollator(preset)(samples)).loss)
    expected = float(np.dot(losses, weights) / sum(weights))
    assert abs(packed - expected) <= 1e-5, (packed, expected)
