"""Issue #13 follow-up: the `vlm` scorer's packed batches (HostBatch.packed: processors.collate's
pack_collate, one row, 4-row position ids) on Qwen3-VL give the per-sample scores of the padded
batches and of one-sample transformers forwards (≤ 1e-4): Qwen3's vocabulary (both token layouts,
image / video with `<t seconds>` / text / mixed) and a Qwen3.5-style 248k tokenizer through
`vlprep prepare` (vision and turns found with Qwen3.5's ids). Two attention paths: SDPA (transformers
builds the block-diagonal mask from position-id row 0) and FlashAttention-2's varlen glue
(tests/flash_attn_standin.py), where the language model must run over the sample boundaries."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flash_attn_standin  # noqa: E402
from filters.reward.batching import HostBatch  # noqa: E402
from filters.reward.vlm_scorer import VLMScorer  # noqa: E402
from processors.presets import get_preset  # noqa: E402
from tiny_models import load_model  # noqa: E402

COLS = ("vlm.mean_logprob", "vlm.text_only_logprob", "vlm.visual_gain")
CPU = torch.device("cpu")


def _scores(path, samples, preset, pack, tokenizer=None, fa2=False):
    s = VLMScorer(str(path), pack=pack, attn_implementation="sdpa", dtype="fp32", tokenizer=tokenizer)
    s.setup(CPU)
    assert s.pack == (pack == "on")
    if fa2:
        flash_attn_standin.use_flash_attention_2(s.model)
    return s.score(HostBatch(samples, preset))


def _boundaries(samples):
    return tuple(int(v) for v in np.r_[0, np.cumsum([len(s["input_ids"]) for s in samples])])


def _check(packed, padded, ref, ref_text):
    np.testing.assert_allclose(packed["vlm.mean_logprob"], ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(packed["vlm.text_only_logprob"], ref_text, rtol=0, atol=1e-4)
    for col in COLS:
        np.testing.assert_allclose(packed[col], padded[col], rtol=0, atol=1e-4, err_msg=col)
        assert np.array_equal(np.isnan(packed[col]), np.isnan(padded[col])), col
    vis = ~np.isnan(padded["vlm.visual_gain"])
    assert vis.sum() >= 2 and np.all(np.abs(packed["vlm.visual_gain"][vis]) > 1e-6)   # vision was used


@pytest.mark.parametrize("fa2", [False, True], ids=["sdpa", "fa2"])
@pytest.mark.parametrize("name", ["qwen3-vl", "qwen3-vl-tf5"])
def test_packed_equals_padded_and_per_sample_qwen3_vocab(tiny_qwen3_vl, tmp_path, name, fa2, monkeypatch):
    from test_qwen3_vl_scorer import _samples
    from test_reward_vlm import _reference

    preset = get_preset(name)
    samples = _samples(tmp_path, preset)
    assert sum(len(s["video_grid_thw"]) > 0 for s in samples) == 2   # videos with their <t seconds> text
    model = load_model(tiny_qwen3_vl)
    ref = np.array([_reference(model, s, preset) for s in samples])
    ref_text = np.array([_reference(model, s, preset, with_vision=False) for s in samples])
    padded = _scores(tiny_qwen3_vl, samples, preset, "off")
    fa = flash_attn_standin.install(monkeypatch) if fa2 else None
    packed = _scores(tiny_qwen3_vl, samples, preset, "on", fa2=fa2)
    _check(packed, padded, ref, ref_text)
    if fa2:   # the language model attended within each sample of the one packed row, every layer
        layers = model.config.text_config.num_hidden_layers
        assert len([c for c in fa.calls if c["cu_seqlens"] == _boundaries(samples) and c["causal"]]) == layers


@pytest.mark.parametrize("fa2", [False, True], ids=["sdpa", "fa2"])
@pytest.mark.parametrize("name", ["qwen3-vl", "qwen3-vl-tf5"])
def test_packed_equals_padded_and_per_sample_248k_vocab(tiny_qwen35, tmp_path, name, fa2, monkeypatch):
    from test_qwen3_tokenizer_score import IMG, QWEN2_SPECIAL, VID, _prepare, _ref, _samples

    preset = get_preset(name)
    out, tok_dir = _prepare(tmp_path / "raw", name)
    samples = _samples(out)
    assert len(samples) == 4 and not any(np.isin(s["input_ids"], QWEN2_SPECIAL).any() for s in samples)
    assert sum(bool(np.isin(s["input_ids"], [IMG, VID]).any()) for s in samples) == 3
    model = load_model(tiny_qwen35)
    ref = np.array([_ref(model, s, preset)[0] for s in samples])
    ref_text = np.array([_ref(model, s, preset, with_vision=False)[0] for s in samples])
    padded = _scores(tiny_qwen35, samples, preset, "off", str(tok_dir))
    fa = flash_attn_standin.install(monkeypatch) if fa2 else None
    packed = _scores(tiny_qwen35, samples, preset, "on", str(tok_dir), fa2=fa2)
    _check(packed, padded, ref, ref_text)
    if fa2:
        layers = model.config.text_config.num_hidden_layers
        assert len([c for c in fa.calls if c["cu_seqlens"] == _boundaries(samples) and c["causal"]]) == layers


def test_score_cli_pack_on_equals_pack_off_248k(tiny_qwen35, tmp_path):
    """`vlprep score --pack on` and `--pack off` on a 248k-tokenizer OUT write the same vlm columns."""
    from jobs.cli import main
    from test_qwen3_tokenizer_score import _prepare, _scores as read_scores

    out, _ = _prepare(tmp_path / "raw", "qwen3-vl")
    got = {}
    for pack in ("off", "on"):
        assert main(["score", str(out), "--model", str(tiny_qwen35), "--scorers", "vlm", "--device", "cpu",
                     "--executor", "local", "--pack", pack, "--overwrite"]) == 0
        got[pack] = read_scores(out)
    assert set(got["on"]) == set(got["off"]) and len(got["on"]) == 4
    for k, r in got["off"].items():
        for col in COLS:
            a, b = r[col], got["on"][k][col]
            assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=1e-4), (k, col, a, b)


def test_a_packed_row_without_sample_boundaries_scores_differently(tiny_qwen3_vl, tmp_path, monkeypatch):
    """The equality above is the boundaries' doing: the same packed row with one running text position
    (no restart per sample, so attention crosses samples) moves the later samples' scores."""
    from test_qwen3_vl_scorer import _samples

    preset = get_preset("qwen3-vl")
    samples = _samples(tmp_path, preset)
    good = _scores(tiny_qwen3_vl, samples, preset, "on")
    real = HostBatch.packed

    def joined(self):
        t = dict(real(self))
        pos = t["position_ids"].clone()
        pos[0] = torch.arange(pos.shape[-1])
        return {**t, "position_ids": pos}

    monkeypatch.setattr(HostBatch, "packed", joined)
    bad = _scores(tiny_qwen3_vl, samples, preset, "on")
    assert abs(bad["vlm.mean_logprob"][0] - good["vlm.mean_logprob"][0]) < 1e-5   # the first sample sees only itself
    assert np.abs(bad["vlm.mean_logprob"][1:] - good["vlm.mean_logprob"][1:]).max() > 1e-3
