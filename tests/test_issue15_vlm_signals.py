"""#15: the checkpoint-based curation signals (vlm_category, grounding, query) with tiny random
Qwen2-VL / Qwen2.5-VL checkpoints: every candidate row's batched log-prob equals the per-sample
transformers forward (full logits, log_softmax, transformers' own positions) within 1e-4; the
columns, NaN rules and the `vlprep score` resume work end to end."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from filters.reward.batching import HostBatch
from filters.reward.candidates import extend, first_answer, row_logprobs, truncate
from filters.reward.grounding_scorer import GroundingScorer, perturbed_answers
from filters.reward.query_scorer import QueryScorer, question_mask
from filters.reward.vlm_category import VLMCategoryScorer
from filters.reward.taxonomy import load_taxonomy
from jobs.cli import main
from processors.presets import IM_END_ID, get_preset
from processors.tokenizer import get_tokenizer
from test_reward_fixtures import encode_frames, photo, tiny_qwen2_vl, tiny_qwen25_vl, write_shard  # noqa: F401
from test_reward_vlm import _reference
from tiny_models import load_model as _load
from reference_forward import reference_mean_logprob

CPU = torch.device("cpu")
BOX = {"qwen2-vl": "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(120,250),(480,700)<|box_end|>",
       "qwen2.5-vl": 'The cat is here: [{"bbox_2d": [12, 10, 48, 40], "label": "cat"}]'}


def _samples(family):
    enc = [
        encode_frames("g0", "Locate the cat in the image.", BOX[family], images=[photo(56, 84, 0)], preset=family),
        encode_frames("g1", "What is the animal doing?", "It is sleeping on a sofa.", images=[photo(84, 56, 1)],
                      preset=family),
        encode_frames("g2", "Tell me a fact about cats.", "Cats sleep for most of the day.", preset=family),
        encode_frames("g3", "What happens in the clip?", "A cat jumps onto the table.",
                      videos=[np.stack([photo(56, 56, k) for k in range(4)])], secs=[1.0], preset=family),
    ]
    return enc, [{"id": e.id, **e.arrays(), "meta": e.meta} for e in enc]


def _reference_at(model, s, preset):
    """One row through a plain transformers forward (full logits, log_softmax) at the row's own
    M-RoPE ids. The rows carry processors.rope's ids, as shards do (DECISIONS.md: 4.x semantics);
    transformers 5.x would place text after a Qwen2.5-VL video one id later (spec §11.4), which
    is a different input, not a different computation."""
    return reference_mean_logprob(model, s, preset, own_positions=True)


def _path(family, a, b):
    return str(a if family == "qwen2-vl" else b)


def _setup(family, a, b, cls, **kw):
    """(checkpoint folder, preset, tokenizer, scorer) for the tiny `family` checkpoint (a: qwen2-vl, b:
    qwen2.5-vl): `cls(path, **kw)` set up on the CPU."""
    path, preset = _path(family, a, b), get_preset(family)
    scorer = cls(path, **kw)
    scorer.setup(CPU)
    return path, preset, get_tokenizer(preset=preset), scorer


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_candidate_rows_match_per_sample_transformers(family, tiny_qwen2_vl, tiny_qwen25_vl):
    # a small budget: several batches
    path, preset, tok, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen25_vl, GroundingScorer, batch_tokens=600)
    model = _load(path)
    _, samples = _samples(family)
    rows = []
    for s in samples:  # a few continuations per sample, vision in the prefix
        start, end = first_answer(s)
        prefix = truncate(s, start)
        for text in ("Yes.", "A cat is sleeping on the red sofa.", tok.decode(s["input_ids"][start:end].tolist())):
            rows.append(extend(prefix, tok.encode(text) + [IM_END_ID], preset))
    batch = HostBatch(samples, preset)
    got, counts = row_logprobs(scorer.vlm, rows, batch, 600)
    ref = np.array([_reference_at(model, r, preset) for r in rows])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    assert counts.tolist() == [len(tok.encode(t)) + 1 for s in samples
                               for t in ("Yes.", "A cat is sleeping on the red sofa.",
                                         tok.decode(s["input_ids"][first_answer(s)[0]:first_answer(s)[1]].tolist()))]
    # text-only rows (vision blocks removed) match the per-sample text-only reference as well
    got_t, _ = row_logprobs(scorer.vlm, rows, batch, 600, with_vision=False)
    ref_t = np.array([_reference(model, r, preset, with_vision=False) for r in rows])
    np.testing.assert_allclose(got_t, ref_t, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_grounding_signal(family, tiny_qwen2_vl, tiny_qwen25_vl):
    path, preset, tok, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen25_vl, GroundingScorer)
    model = _load(path)
    _, samples = _samples(family)
    out = scorer.score(HostBatch(samples, preset))
    assert set(out) == set(scorer.columns())
    assert np.isnan(out["grounding.box_margin"][1:]).all() and np.isnan(out["grounding.box_rank"][1:]).all()
    # the margin is the given answer's summed log-prob minus the best perturbed one, per the reference
    s = samples[0]
    start, end = first_answer(s)
    text = tok.decode(s["input_ids"][start:end].tolist())
    limits = (1000, 1000) if family == "qwen2-vl" else (83, 55)
    alts = perturbed_answers(text, preset.grounding, limits)
    assert len(alts) == 6 and len(set(alts)) == 6 and text not in alts
    totals = []
    for t in [text, *alts]:
        row = extend(truncate(s, start), tok.encode(t) + [IM_END_ID], preset)
        totals.append(_reference_at(model, row, preset) * (len(tok.encode(t)) + 1))
    assert out["grounding.box_margin"][0] == pytest.approx(totals[0] - max(totals[1:]), abs=2e-3)
    assert out["grounding.box_rank"][0] == pytest.approx(np.mean(np.array(totals[1:]) < totals[0]))


def test_perturbed_boxes_are_clamped_and_formatted():
    alts = perturbed_answers('[{"bbox_2d": [0, 0, 40, 20], "label": "x"}]', "qwen2.5-vl", (83, 55))
    assert [a[13:a.index("]") + 1] for a in alts] == [
        "[0, 0, 20, 20]",    # shifted left by half the width, clamped at the image edge
        "[20, 0, 60, 20]",   # right
        "[0, 0, 40, 10]",    # up, clamped
        "[0, 10, 40, 30]",   # down
        "[10, 5, 30, 15]",   # half size about the centre
        "[0, 0, 60, 30]"]    # double size, clamped
    assert perturbed_answers('[{"bbox_2d": [0, 0, 83, 55]}]', "qwen2.5-vl", (83, 55)) == [
        '[{"bbox_2d": [0, 0, 42, 55]}]', '[{"bbox_2d": [42, 0, 83, 55]}]', '[{"bbox_2d": [0, 0, 83, 28]}]',
        '[{"bbox_2d": [0, 28, 83, 55]}]', '[{"bbox_2d": [21, 14, 62, 41]}]']  # round half-even; doubling clamps to itself: skipped
    assert perturbed_answers("no box", "qwen2-vl", (1000, 1000)) == []
    q2 = perturbed_answers("<|box_start|>(100,100),(300,200)<|box_end|>", "qwen2-vl", (1000, 1000))
    assert q2[0] == "<|box_start|>(0,100),(200,200)<|box_end|>"


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_query_signal(family, tiny_qwen2_vl, tiny_qwen25_vl):
    path, preset, tok, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen25_vl, QueryScorer)
    model = _load(path)
    _, samples = _samples(family)
    out = scorer.score(HostBatch(samples, preset))
    user = tok.encode("user")[0]
    for i, s in enumerate(samples):
        prompt = truncate(s, first_answer(s)[0])
        mask = question_mask(np.asarray(prompt["input_ids"]), user)
        q = tok.decode(np.asarray(prompt["input_ids"])[mask].tolist())
        assert q == ["Locate the cat in the image.", "What is the animal doing?", "Tell me a fact about cats.",
                     "What happens in the clip?"][i]
        row = {**prompt, "labels": np.where(mask, prompt["input_ids"], -100)}
        assert out["query.logprob"][i] == pytest.approx(_reference_at(model, row, preset), abs=1e-4)
        if i == 2:
            assert np.isnan(out["query.visual_relevance"][i])
        else:
            want = _reference_at(model, row, preset) - _reference(model, row, preset, with_vision=False)
            assert out["query.visual_relevance"][i] == pytest.approx(want, abs=2e-4)
            assert out["query.visual_relevance"][i] != 0


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_vlm_category_tagger(family, tiny_qwen2_vl, tiny_qwen25_vl):
    path, preset, tok, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen25_vl, VLMCategoryScorer, batch_tokens=4096)
    model = _load(path)
    _, samples = _samples(family)
    tax = load_taxonomy()
    out = scorer.score(HostBatch(samples[:2], preset))
    assert set(out) == set(scorer.columns())
    coarse = [(c.name, c.description) for c in tax.coarse]
    for i, s in enumerate(samples[:2]):
        # the coarse choice is the argmax of the reference's summed log-probs of each name
        start, end = first_answer(s)
        rows = scorer.rows_for(truncate(s, end + 1), tok, coarse, preset)
        totals = [_reference_at(model, r, preset) * (len(tok.encode(n)) + 1) for r, (n, _) in zip(rows, coarse)]
        assert out["vlm_category.coarse"][i] == coarse[int(np.argmax(totals))][0]
        p = np.exp(np.array(totals) - max(totals))
        assert out["vlm_category.coarse_confidence"][i] == pytest.approx(p.max() / p.sum(), abs=1e-3)
        assert tax.parent(out["vlm_category.fine"][i]) == out["vlm_category.coarse"][i]
        assert 0 < out["vlm_category.confidence"][i] <= out["vlm_category.coarse_confidence"][i]
        # the question turn lists every category and the candidate is the only supervised text
        r = rows[0]
        sup = np.asarray(r["labels"]) != -100
        assert tok.decode(np.asarray(r["input_ids"])[sup].tolist()) == coarse[0][0] + "<|im_end|>"
        assert "ocr_document: Reading text" in tok.decode(np.asarray(r["input_ids"]).tolist())


def _corpus(tmp_path):
    """tmp_path/out: the qwen2-vl samples as a two-unit prepared directory (shards + manifest)."""
    enc, _ = _samples("qwen2-vl")
    out = tmp_path / "out"
    rows = []
    for unit, part in (("u0000", enc[:2]), ("u0001", enc[2:])):
        shard = write_shard(out, unit, part)
        rows += [{"id": e.id, "unit": unit, "shard": shard, "preset": "qwen2-vl", "n_tokens": len(e.input_ids)}
                 for e in part]
    pq.write_table(pa.Table.from_pylist(rows), out / "manifest.parquet")
    return out


def test_score_cli_with_the_checkpoint_signals(tmp_path, tiny_qwen2_vl, capsys):
    out = _corpus(tmp_path)
    args = ["score", str(out), "--model", str(tiny_qwen2_vl), "--scorers", "grounding,query", "--device", "cpu"]
    assert main(args) == 0
    s = pa.concat_tables([pq.read_table(p) for p in sorted((out / "scores").glob("*.parquet"))])
    assert s.column_names == ["id", "grounding.box_margin", "grounding.box_rank", "query.logprob",
                              "query.visual_relevance"]
    margin = s.column("grounding.box_margin").to_pylist()
    assert np.isfinite(margin[0]) and all(np.isnan(margin[1:]))
    assert main(args) == 0
    assert "scoring 0 of 2 units" in capsys.readouterr().out
