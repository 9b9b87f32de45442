"""VLM scorer math on hand-built batches: the stage's batched, padded (or packed) forward with
shard positions gives the same answer log-probabilities as one-sample-at-a-time transformers
forwards with full logits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from filters.reward.batching import HostBatch, strip_vision
from filters.reward.vlm_scorer import VLMScorer
from processors.presets import (IGNORE_INDEX, IM_END_ID, IMAGE_PAD_ID, VIDEO_PAD_ID, VISION_END_ID,
                                VISION_START_ID, get_preset)
from reference_forward import reference_mean_logprob
from test_reward_fixtures import tiny_qwen2_vl, tiny_qwen25_vl  # noqa: F401  (fixtures)
from tiny_models import load_model as _load

RNG = np.random.default_rng(7)


def _words(n):
    return list(RNG.integers(100, 5000, size=n))


def _block(pad, grid):
    return [VISION_START_ID] + [pad] * (int(np.prod(grid)) // 4) + [VISION_END_ID]


def _sample(sid, prompt_len, answer_len, images=(), videos=(), secs=()):
    ids = _words(3)
    for g in images:
        ids += _block(IMAGE_PAD_ID, g)
    for g in videos:
        ids += _block(VIDEO_PAD_ID, g)
    ids += _words(prompt_len)
    prompt = len(ids)
    ids += _words(answer_len) + [IM_END_ID, 198]
    labels = [IGNORE_INDEX] * prompt + ids[prompt:]
    rows = sum(int(np.prod(g)) for g in list(images) + list(videos))
    return {
        "id": sid, "input_ids": np.array(ids, np.int32), "labels": np.array(labels, np.int32),
        "pixel_values": RNG.integers(0, 256, size=(rows, 1176), dtype=np.uint8),
        "image_grid_thw": np.array(images, np.int32).reshape(-1, 3),
        "video_grid_thw": np.array(videos, np.int32).reshape(-1, 3),
        "second_per_grid_ts": np.array(secs, np.float32), "meta": {},
    }


def _reference(model, s, preset, with_vision=True):
    """One sample, transformers computes positions itself, full logits, log_softmax."""
    if with_vision:
        return reference_mean_logprob(model, s, preset)
    ids, labels = strip_vision(s["input_ids"], s["labels"])
    return reference_mean_logprob(model, s, preset, input_ids=ids, labels=labels, vision=False)


def _positions(model, s):
    """The M-RoPE ids a shard would carry (here taken from transformers for these layouts, on which
    4.x and 5.x agree: no video's temporal extent exceeds its spatial one)."""
    ids = torch.tensor(s["input_ids"], dtype=torch.long)[None]
    if not (len(s["image_grid_thw"]) or len(s["video_grid_thw"])):
        return np.broadcast_to(np.arange(ids.shape[1]), (3, ids.shape[1])).astype(np.int32)
    tt = torch.zeros_like(ids)
    tt[ids == IMAGE_PAD_ID] = 1
    tt[ids == VIDEO_PAD_ID] = 2
    kw = dict(mm_token_type_ids=tt,
              image_grid_thw=torch.from_numpy(s["image_grid_thw"]).long() if len(s["image_grid_thw"]) else None,
              video_grid_thw=torch.from_numpy(s["video_grid_thw"]).long() if len(s["video_grid_thw"]) else None)
    if model.config.model_type == "qwen2_5_vl" and len(s["video_grid_thw"]):
        kw["second_per_grid_ts"] = torch.from_numpy(s["second_per_grid_ts"])
    pos, _ = model.model.get_rope_index(ids, **kw)
    return pos[:, 0].numpy().astype(np.int32)


def _samples(model):
    out = [
        _sample("img", 5, 7, images=[(1, 4, 6)]),
        _sample("txt", 9, 4),
        _sample("vid", 3, 6, videos=[(2, 6, 8)], secs=[1.0]),
        _sample("both", 4, 12, images=[(1, 8, 4)], videos=[(2, 4, 4)], secs=[0.5]),
        _sample("img2", 2, 3, images=[(1, 4, 4), (1, 6, 4)]),
    ]
    for s in out:
        s["position_ids"] = _positions(model, s)
    return out


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
@pytest.mark.parametrize("pack", ["off", "on"])
def test_batched_logprobs_match_per_sample_reference(family, pack, tiny_qwen2_vl, tiny_qwen25_vl):
    path = str(tiny_qwen2_vl if family == "qwen2-vl" else tiny_qwen25_vl)
    preset = get_preset(family)
    model = _load(path)
    samples = _samples(model)
    ref = np.array([_reference(model, s, preset) for s in samples])
    ref_text = np.array([_reference(model, s, preset, with_vision=False) for s in samples])

    scorer = VLMScorer(path, pack=pack)
    scorer.setup(torch.device("cpu"))
    assert scorer.pack == (pack == "on")
    out = scorer.score(HostBatch(samples, preset))
    np.testing.assert_allclose(out["vlm.mean_logprob"], ref, rtol=0, atol=2e-4)
    np.testing.assert_allclose(out["vlm.text_only_logprob"], ref_text, rtol=0, atol=2e-4)
    gain = out["vlm.visual_gain"]
    assert np.isnan(gain[1])  # the text-only sample has no vision to gain from
    np.testing.assert_allclose(np.delete(gain, 1), np.delete(ref - ref_text, 1), atol=4e-4)
    # the images matter to this random model: a gain of exactly 0 would mean vision was ignored
    assert np.all(np.abs(np.delete(gain, 1)) > 1e-5)
    assert set(out) == {"vlm.mean_logprob", "vlm.text_only_logprob", "vlm.visual_gain"}


def test_scalar_reward_head_is_read_from_the_checkpoint(tmp_path, tiny_qwen2_vl):
    import shutil

    from safetensors.torch import load_file, save_file

    path = tmp_path / "rm"
    shutil.copytree(tiny_qwen2_vl, path)
    weights = path / "model.safetensors"
    state = load_file(weights)
    g = torch.Generator().manual_seed(3)
    state["score.weight"] = torch.randn(1, 64, generator=g)
    save_file(state, weights, metadata={"format": "pt"})

    model = _load(str(path))
    preset = get_preset("qwen2-vl")
    samples = _samples(model)[:3]
    scorer = VLMScorer(str(path), pack="off")
    scorer.setup(torch.device("cpu"))
    assert "vlm.reward" in scorer.columns()
    out = scorer.score(HostBatch(samples, preset))
    for i, s in enumerate(samples):
        one = HostBatch([s], preset)
        with torch.no_grad():
            hs, _ = scorer.forward_hidden(one)
        expect = float(hs[0, -1].float() @ state["score.weight"][0])
        assert out["vlm.reward"][i] == pytest.approx(expect, abs=1e-4)
    assert len(set(np.round(out["vlm.reward"], 6))) == 3


def test_non_checkpoint_path_is_a_specific_error(tmp_path):
    from filters.reward.protocol import ScorerError

    with pytest.raises(ScorerError, match="config.json"):
        VLMScorer(str(tmp_path))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_token_logprobs_cpu_vocab_slices_equal_log_softmax(bias, rows):
    # The CPU path walks the vocabulary in slices with an online log-sum-exp; it must give the plain
    # log_softmax value. 10 007 words: not a multiple of the slice; targets in the first, a middle
    # and the last (partial) slice; one row with huge logits to exercise the running-max rescale.
    from filters.reward.vlm_scorer import _CPU_VOCAB_SLICE, token_logprobs

    g = torch.Generator().manual_seed(rows)
    head = torch.nn.Linear(48, 10_007, bias=bias)
    with torch.no_grad():
        head.weight.normal_(0, 0.3, generator=g)
        if bias:
            head.bias.normal_(0, 2.0, generator=g)
    h = torch.randn(rows, 48, generator=g)
    h[0] *= 40
    target = torch.randint(0, 10_007, (rows,), generator=g)
    target[0] = 10_006
    if rows > 2:
        target[1], target[2] = 0, _CPU_VOCAB_SLICE + 3
    with torch.inference_mode():
        got = token_logprobs(h, target, head)
        exp = torch.log_softmax(head(h).double(), -1).gather(1, target[:, None])[:, 0]
    assert got.dtype == torch.float32 and got.shape == (rows,)
    assert torch.allclose(got.double(), exp, rtol=1e-5, atol=1e-4), (got.double() - exp).abs().max()


def test_token_logprobs_rows_whose_first_slices_are_all_minus_inf():
    # e.g. a bias that masks the first vocabulary slice: the online log-sum-exp must not give NaN
    from filters.reward.vlm_scorer import _CPU_VOCAB_SLICE, token_logprobs

    head = torch.nn.Linear(16, 3 * _CPU_VOCAB_SLICE + 5, bias=True)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[: _CPU_VOCAB_SLICE + 7] = -float("inf")
    h = torch.randn(20, 16, generator=torch.Generator().manual_seed(0))
    target = torch.full((20,), 2 * _CPU_VOCAB_SLICE + 1)
    with torch.inference_mode():
        got = token_logprobs(h, target, head)
        exp = torch.log_softmax(head(h).double(), -1)[:, 2 * _CPU_VOCAB_SLICE + 1]
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), exp, rtol=1e-5, atol=1e-4)
