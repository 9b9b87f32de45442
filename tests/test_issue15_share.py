"""#15 follow-up: the checkpoint scorers share one loaded model per worker, and the candidate scorers
(vlm_category, grounding) read each sample — its vision included — once, continuing every candidate
from its keys/values. Tiny random Qwen2-VL / Qwen2.5-VL checkpoints on CPU; the log-probs stay equal
to the per-sample transformers forward of every candidate row (<= 1e-4)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from filters.reward.batching import HostBatch, plan_batches
from candidates_reference import continuation_logprobs, encode_prefixes, extend_prefix
from filters.reward.candidates import extend, first_answer, row_logprobs, truncate
from filters.reward.grounding_scorer import GroundingScorer, perturbed_answers
from filters.reward.stage import ScoreConfig, run_local
from filters.reward.taxonomy import load_taxonomy
from filters.reward.vlm_category import VLMCategoryScorer, _softmax
from filters.reward.vlm_scorer import ModelCache
from jobs.cli import main
from pipeline.loader import ShardLoader
from pipeline.score_inputs import units_from_manifest
from processors.presets import IM_END_ID
from reference_forward import reference_mean_logprob
from test_issue15_vlm_signals import _corpus, _samples, _setup
from test_reward_fixtures import encode_frames, photo, tiny_qwen2_vl, tiny_qwen25_vl, write_shard  # noqa: F401
from tiny_models import load_model as _load

CPU = torch.device("cpu")
CHECKPOINT_SCORERS = ("vlm", "vlm_category", "grounding", "query", "verify")


def _pixel_rows(s) -> int:
    grids = (np.asarray(s[k]).reshape(-1, 3) for k in ("image_grid_thw", "video_grid_thw"))
    return sum(int(np.prod(g, axis=1).sum()) for g in grids)


class VisionCount:
    """Counts the vision tower's calls and the patch rows it encodes (a forward pre-hook)."""

    def __init__(self, model):
        self.calls, self.rows = 0, 0
        self.handle = model.model.visual.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        self.calls += 1
        self.rows += int(x.shape[0])

    def close(self):
        self.handle.remove()


# -- one model load ------------------------------------------------------------------------------------

def _count_loads(monkeypatch):
    cls = transformers.Qwen2VLForConditionalGeneration
    orig, calls = cls.from_pretrained.__func__, []

    def counted(c, *a, **kw):
        calls.append(a[0] if a else kw.get("pretrained_model_name_or_path"))
        return orig(c, *a, **kw)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(counted))
    return calls


def _scores(out):
    return pa.concat_tables([pq.read_table(p) for p in sorted((out / "scores").glob("*.parquet"))])


def test_checkpoint_scorers_load_the_model_once_and_score_as_alone(tmp_path, tiny_qwen2_vl, monkeypatch):
    out = _corpus(tmp_path)
    units, preset = units_from_manifest(out)
    calls = _count_loads(monkeypatch)
    cfg = ScoreConfig(str(out), CHECKPOINT_SCORERS, model=str(tiny_qwen2_vl), preset=preset, device="cpu",
                      batch_tokens=2048, max_new_tokens=8)
    report = run_local(cfg, units, ShardLoader)
    assert len(calls) == 1  # five checkpoint scorers, one from_pretrained
    assert report.workers[0]["model_loads"] == 1
    together = _scores(out)
    # each scorer on its own (its own worker, its own load) writes the same values
    for name in CHECKPOINT_SCORERS:
        calls.clear()
        alone = tmp_path / f"alone_{name}"
        alone.mkdir()
        (alone / "manifest.parquet").symlink_to(out / "manifest.parquet")
        (alone / "shards").symlink_to(out / "shards", target_is_directory=True)
        run_local(ScoreConfig(str(alone), (name,), model=str(tiny_qwen2_vl), preset=preset, device="cpu",
                              batch_tokens=2048, max_new_tokens=8), units, ShardLoader)
        assert len(calls) == 1
        single = _scores(alone)
        assert single.column("id").to_pylist() == together.column("id").to_pylist()
        for col in single.column_names[1:]:
            a, b = single.column(col).to_pylist(), together.column(col).to_pylist()
            if pa.types.is_string(single.schema.field(col).type):
                assert a == b, col
            else:
                np.testing.assert_array_equal(np.array(a, float), np.array(b, float), err_msg=col)


def test_model_cache_keys_and_scope(tiny_qwen2_vl, tiny_qwen25_vl, monkeypatch):
    """Shared only within an active cache, per (checkpoint, dtype, device, attention); outside one each
    scorer loads its own (tests that set up scorers directly keep their own models)."""
    calls = _count_loads(monkeypatch)
    a, b = GroundingScorer(str(tiny_qwen2_vl)), VLMCategoryScorer(str(tiny_qwen2_vl))
    a.setup(CPU), b.setup(CPU)
    assert len(calls) == 2 and a.vlm.model is not b.vlm.model
    calls.clear()
    with ModelCache() as cache:
        a, b = GroundingScorer(str(tiny_qwen2_vl)), VLMCategoryScorer(str(tiny_qwen2_vl))
        c = GroundingScorer(str(tiny_qwen25_vl))  # another checkpoint: its own model
        d = GroundingScorer(str(tiny_qwen2_vl), dtype="fp32")  # fp32 is CPU's auto dtype: the same key
        for s in (a, b, c, d):
            s.setup(CPU)
    assert len(calls) == 1 and cache.loads == 2 and len(cache.models) == 2
    assert a.vlm.model is b.vlm.model is d.vlm.model and c.vlm.model is not a.vlm.model
    assert ModelCache.active() is None


@pytest.mark.slow
def test_one_model_per_ray_actor(tmp_path, tiny_qwen2_vl):
    """On Ray every actor is one ScoreWorker: one load for all its checkpoint scorers."""
    import ray

    from filters.reward.stage import run_ray

    out = _corpus(tmp_path)
    units, preset = units_from_manifest(out)
    cfg = ScoreConfig(str(out), ("vlm", "grounding", "query"), model=str(tiny_qwen2_vl), preset=preset,
                      device="cpu")
    ray.shutdown()
    try:
        report = run_ray(cfg, units, ShardLoader, workers=1)
    finally:
        ray.shutdown()
    assert [w["model_loads"] for w in report.workers] == [1]
    assert _scores(out).num_rows == 4


# -- vision once per sample ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_continuations_equal_per_sample_transformers(family, tiny_qwen2_vl, tiny_qwen25_vl):
    """The one-prefix reference (tests/candidates_reference.py: one read of the prefix, candidates from
    its keys/values, two levels deep as vlm_category uses them) equals the per-sample transformers
    forward of every whole row and the batched row path, for image, video and text-only samples."""
    path, preset, tok, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen25_vl, GroundingScorer)
    model = _load(path)
    _, samples = _samples(family)
    batch = HostBatch(samples, preset)
    texts = ("Yes.", "A cat is sleeping on the red sofa.", "No")
    conts = [tok.encode(t) + [IM_END_ID] for t in texts]
    prefixes = [truncate(s, first_answer(s)[0]) for s in samples]
    question = tok.encode("\n<|im_start|>user\nIs it a cat?<|im_end|>\n<|im_start|>assistant\n")
    seen = 0
    with torch.inference_mode():
        for i, p in (x for group in encode_prefixes(scorer.vlm, prefixes, batch, budget_tokens=300) for x in group):
            seen += 1  # several prefix batches
            sums, counts = continuation_logprobs(scorer.vlm, p, conts, batch, budget_tokens=250)  # chunks of rows
            rows = [extend(prefixes[i], c, preset) for c in conts]
            ref = np.array([reference_mean_logprob(model, r, preset, own_positions=True) for r in rows])
            np.testing.assert_allclose(sums / counts, ref, rtol=0, atol=1e-4)
            mean, cnt = row_logprobs(scorer.vlm, rows, batch)
            np.testing.assert_allclose(sums / counts, mean, rtol=0, atol=1e-5)
            assert counts.tolist() == cnt.tolist() == [len(c) for c in conts]
            # a second level: a question read from the prefix's keys/values, then the candidates
            q = extend_prefix(scorer.vlm, p, question, batch)
            sums2, counts2 = continuation_logprobs(scorer.vlm, q, conts, batch)
            full = extend(prefixes[i], question, preset, supervised=[False] * len(question))
            rows2 = [extend(full, c, preset) for c in conts]
            ref2 = np.array([reference_mean_logprob(model, r, preset, own_positions=True) for r in rows2])
            np.testing.assert_allclose(sums2 / counts2, ref2, rtol=0, atol=1e-4)
            np.testing.assert_array_equal(q.row["position_ids"], full["position_ids"])
    assert seen == len(samples)


def _category_by_rows(scorer, samples, batch, tok):
    """The row-per-candidate computation (every rows_for row read whole, row_logprobs): the result the
    cached path must reproduce."""
    tax, out = scorer.taxonomy, []
    coarse = [(c.name, c.description) for c in tax.coarse]
    for s in samples:
        start, end = first_answer(s)
        ctx = truncate(s, end + 1)
        mean, cnt = row_logprobs(scorer.vlm, scorer.rows_for(ctx, tok, coarse, batch.preset), batch)
        p = _softmax(mean * cnt)
        b = int(p.argmax())
        fines = [(f.name, f.description) for f in tax.coarse[b].fine]
        fmean, fcnt = row_logprobs(scorer.vlm, scorer.rows_for(ctx, tok, fines, batch.preset), batch)
        fp = _softmax(fmean * fcnt)
        out.append((coarse[b][0], fines[int(fp.argmax())][0], float(p[b]), float(p[b] * fp.max())))
    return out


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_vlm_category_reads_vision_once_per_sample(family, tiny_qwen2_vl, tiny_qwen25_vl):
    path, preset, tok, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen25_vl, VLMCategoryScorer, batch_tokens=4096)
    _, samples = _samples(family)
    batch = HostBatch(samples, preset)
    hook = VisionCount(scorer.vlm.model)
    out = scorer.score(batch)
    hook.close()
    # every sample's images/videos through the vision tower once, one call per kind per prefix batch
    assert hook.rows == sum(_pixel_rows(s) for s in samples)
    ends = [first_answer(s)[1] + 1 for s in samples]
    assert hook.calls <= 2 * len(plan_batches(ends, 4096, 0.25)) < 2 * len(samples)
    ref = _category_by_rows(scorer, samples, batch, tok)
    n_coarse = len(load_taxonomy().coarse)
    assert n_coarse >= 8  # the row path would encode each sample's vision n_coarse + n_fine times
    for i, (c, f, pc, p) in enumerate(ref):
        assert (out["vlm_category.coarse"][i], out["vlm_category.fine"][i]) == (c, f)
        assert out["vlm_category.coarse_confidence"][i] == pytest.approx(pc, abs=1e-4)
        assert out["vlm_category.confidence"][i] == pytest.approx(p, abs=1e-4)


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_grounding_reads_vision_once_per_sample(family, tiny_qwen2_vl, tiny_qwen25_vl):
    path, preset, tok, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen25_vl, GroundingScorer, batch_tokens=4096)
    model = _load(path)
    enc, samples = _samples(family)
    box = {"qwen2-vl": "<|box_start|>(100,100),(500,600)<|box_end|>",
           "qwen2.5-vl": '[{"bbox_2d": [20, 8, 60, 30], "label": "dog"}]'}[family]
    samples.append({**(e := encode_frames("g4", "Where is the dog?", box, images=[photo(84, 84, 5)],
                                          preset=family)).arrays(), "id": e.id, "meta": e.meta})
    hook = VisionCount(scorer.vlm.model)
    out = scorer.score(HostBatch(samples, preset))
    hook.close()
    with_box = [0, 4]
    assert np.isfinite(out["grounding.box_margin"][with_box]).all()
    assert np.isnan(np.delete(out["grounding.box_margin"], with_box)).all()
    # only the two boxed samples are read, each once (the row path read each 1 + 6 perturbations times)
    assert hook.calls == 1 and hook.rows == sum(_pixel_rows(samples[i]) for i in with_box)
    for i in with_box:
        s = samples[i]
        start, end = first_answer(s)
        text = tok.decode(s["input_ids"][start:end].tolist())
        g = np.asarray(s["image_grid_thw"]).reshape(-1, 3)[0]
        limits = (1000, 1000) if family == "qwen2-vl" else (int(g[2]) * 14 - 1, int(g[1]) * 14 - 1)
        totals = []
        for t in [text, *perturbed_answers(text, preset.grounding, limits)]:
            ids = tok.encode(t) + [IM_END_ID]
            row = extend(truncate(s, start), ids, preset)
            totals.append(reference_mean_logprob(model, row, preset, own_positions=True) * len(ids))
        assert out["grounding.box_margin"][i] == pytest.approx(totals[0] - max(totals[1:]), abs=1e-3)
        assert out["grounding.box_rank"][i] == pytest.approx(np.mean(np.array(totals[1:]) < totals[0]))


def test_score_cli_shares_the_model(tmp_path, tiny_qwen2_vl, monkeypatch, capsys):
    out = _corpus(tmp_path)
    calls = _count_loads(monkeypatch)
    assert main(["score", str(out), "--model", str(tiny_qwen2_vl), "--scorers", "vlm,grounding,query",
                 "--device", "cpu"]) == 0
    assert len(calls) == 1
