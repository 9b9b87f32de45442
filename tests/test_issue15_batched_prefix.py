"""#15 follow-up: the candidate scorers continue a whole batch of samples at once. The batch's
prefixes stay padded (candidates.encode_batches / Prefixes); questions of different lengths extend
every row in one call (padding between a row's tokens, hidden by the attention mask) and all
candidates of all samples are scored together (Continuations.add_batch). Values equal the
per-sample transformers forward of every whole row (<= 1e-4), and the number of forward calls per
batch no longer grows with the batch's sample count. Tiny random Qwen2-VL / Qwen2.5-VL on CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from filters.reward.batching import HostBatch, plan_batches
from candidates_reference import continuation_logprobs, encode_prefixes, extend_prefix
from filters.reward.candidates import Continuations, encode_batches, extend, first_answer, truncate
from filters.reward.grounding_scorer import GroundingScorer
from filters.reward.vlm_category import VLMCategoryScorer
from processors.presets import IM_END_ID
from reference_forward import reference_mean_logprob
from test_issue15_vlm_signals import _samples, _setup
from test_reward_fixtures import encode_frames, photo, tiny_qwen2_vl, tiny_qwen25_vl  # noqa: F401
from tiny_models import load_model as _load


class ForwardCount:
    """Counts the language model's forward calls (prefix reads and continuations alike)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.model.register_forward_pre_hook(self._hit)

    def _hit(self, *_):
        self.calls += 1

    def close(self):
        self.handle.remove()


def _more(family, k):
    """`k` extra samples of different lengths (text, image), so a batch's prefixes are ragged."""
    out = []
    for j in range(k):
        imgs = [photo(56 + 28 * (j % 2), 56, 10 + j)] if j % 3 else []
        e = encode_frames(f"x{j}", "Describe it " + "in detail " * j + "please.", "A red square." * (1 + j % 2),
                          images=imgs, preset=family)
        out.append({"id": e.id, **e.arrays(), "meta": e.meta})
    return out


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_batched_prefixes_equal_per_sample_transformers(family, tiny_qwen2_vl, tiny_qwen25_vl):
    """Prefixes.extend with a different question per row (ragged: padding inside the grown cache) then
    Continuations.add_batch equals the per-sample transformers forward of each whole row and the
    one-prefix-at-a-time reference (tests/candidates_reference.py)."""
    path, preset, tok, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen25_vl, GroundingScorer)
    model = _load(path)
    _, samples = _samples(family)
    samples += _more(family, 3)
    batch = HostBatch(samples, preset)
    prefixes = [truncate(s, first_answer(s)[0]) for s in samples]
    questions = [tok.encode("\n<|im_start|>user\n" + "Is it a cat? " * (1 + j % 3) + "<|im_end|>\n<|im_start|>assistant\n")
                 for j in range(len(samples))]
    conts = [[tok.encode(t) + [IM_END_ID] for t in ("Yes.", "A cat is sleeping on the red sofa.", "No")[:1 + j % 3]]
             for j in range(len(samples))]
    seen = set()
    with torch.inference_mode():
        one = {i: p for group in encode_prefixes(scorer.vlm, prefixes, batch, budget_tokens=100000) for i, p in group}
        for group, pre in encode_batches(scorer.vlm, prefixes, batch, budget_tokens=100000):
            assert len(group) == len(samples)  # one ragged batch
            for level in (0, 1):
                cur = pre if level == 0 else pre.extend(scorer.vlm, [questions[i] for i in group], batch)
                c = Continuations(scorer.vlm, batch, budget_tokens=100000)
                rows = c.add_batch(cur, [conts[i] for i in group])
                sums, counts = c.sums()
                for j, i in enumerate(group):
                    seen.add((level, i))
                    base = prefixes[i] if level == 0 else extend(prefixes[i], questions[i], preset,
                                                                 supervised=[False] * len(questions[i]))
                    if level:
                        np.testing.assert_array_equal(cur.rows[j]["position_ids"], base["position_ids"])
                    ref = np.array([reference_mean_logprob(model, extend(base, x, preset), preset, own_positions=True)
                                    for x in conts[i]])
                    np.testing.assert_allclose(sums[rows[j]] / counts[rows[j]], ref, rtol=0, atol=1e-4)
                    assert counts[rows[j]].tolist() == [len(x) for x in conts[i]]
                    p = one[i] if level == 0 else extend_prefix(scorer.vlm, one[i], questions[i], batch)
                    s1, _ = continuation_logprobs(scorer.vlm, p, conts[i], batch)
                    np.testing.assert_allclose(sums[rows[j]], s1, rtol=0, atol=1e-4)
    assert len(seen) == 2 * len(samples)


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_add_batch_chunks_within_the_budget(family, tiny_qwen2_vl, tiny_qwen25_vl):
    """A small budget splits the rows of a batch (one per sample: its candidates as a prefix tree) into
    several calls; values unchanged."""
    path, preset, tok, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen25_vl, GroundingScorer)
    _, samples = _samples(family)
    batch = HostBatch(samples, preset)
    prefixes = [truncate(s, first_answer(s)[0]) for s in samples]
    conts = [[tok.encode(t) + [IM_END_ID] for t in ("Yes.", "No, a dog.", "Maybe")] for _ in samples]
    with torch.inference_mode():
        (group, pre), = list(encode_batches(scorer.vlm, prefixes, batch, budget_tokens=100000))
        totals = []
        for budget in (100000, 1):
            hook = ForwardCount(scorer.vlm.model)
            c = Continuations(scorer.vlm, batch, budget_tokens=budget)
            rows = c.add_batch(pre, [conts[i] for i in group])
            hook.close()
            assert hook.calls == (1 if budget > 1 else len(samples))
            sums, _ = c.sums()
            totals.append(np.concatenate([sums[r] for r in rows]))
    np.testing.assert_allclose(totals[0], totals[1], rtol=0, atol=1e-4)


def _prefix_ends(cls, rows):
    """The lengths encode_batches groups: through the first answer (vlm_category), up to it (grounding)."""
    return [first_answer(s)[1] + 1 if cls is VLMCategoryScorer else first_answer(s)[0] for s in rows]


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
@pytest.mark.parametrize("cls,per_batch", [(VLMCategoryScorer, 3), (GroundingScorer, 2)])
def test_forward_calls_do_not_grow_with_the_batch(family, cls, per_batch, tiny_qwen2_vl, tiny_qwen25_vl):
    """vlm_category: prefix read, coarse question with the coarse names, fine questions with the fine
    names — three calls per prefix batch; grounding: prefix read and all answers — two; whether the batch holds one sample
    or six (one prefix batch), and for a ragged batch, per_batch times its prefix batches."""
    path, preset, tok, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen25_vl, cls, batch_tokens=1 << 20)
    _, samples = _samples(family)
    col = "vlm_category.confidence" if cls is VLMCategoryScorer else "grounding.box_margin"

    def calls(rows):
        hook = ForwardCount(scorer.vlm.model)
        out = scorer.score(HostBatch(rows, preset))
        hook.close()
        assert np.isfinite(out[col]).all()
        return hook.calls

    one = samples[0]  # the boxed image sample
    assert calls([one]) == calls([{**one, "id": f"{one['id']}-{r}"} for r in range(6)]) == per_batch
    if cls is VLMCategoryScorer:  # every sample answers it (grounding needs a box)
        rows = [{**s, "id": f"{s['id']}-{r}"} for r in range(3) for s in samples]
        assert calls(rows) == per_batch * len(plan_batches(_prefix_ends(cls, rows), 1 << 20, 0.25)) < 3 * len(samples)
