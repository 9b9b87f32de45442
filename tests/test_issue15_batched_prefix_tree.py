"""#15 follow-up: a batch's candidates continue as one row per sample. Continuations.add_batch lays a
sample's head (a question) and its candidates, as a prefix tree, into one row over the sample's cached
keys/values under a 4-D mask (each token sees the prefix, the head and its own tree ancestors), so the
prefix cache is never copied per candidate and shared tokens run once; sums() runs lm_head once per
predicting state. Values equal the per-sample transformers forward of every whole row (<= 1e-4) and the
one-row-per-candidate path, under SDPA and eager attention. Tiny random Qwen2-VL / Qwen2.5-VL on CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import filters.reward.candidates as cand
import filters.reward.vlm_scorer as vs
from filters.reward.batching import HostBatch
from filters.reward.candidates import Continuations, _node_logprobs, _Trie, encode_batches, extend, first_answer, truncate
from filters.reward.grounding_scorer import GroundingScorer
from filters.reward.vlm_category import VLMCategoryScorer
from filters.reward.vlm_scorer import _cache_kw, _cache_out, cache_tensors, token_logprobs
from processors.presets import IM_END_ID, get_preset
from processors.tokenizer import get_tokenizer
from reference_forward import reference_mean_logprob
from test_issue15_batched_prefix import _more
from test_issue15_vlm_signals import _path, _samples, _setup
from test_reward_fixtures import tiny_qwen2_vl, tiny_qwen25_vl  # noqa: F401
from tiny_models import load_model as _load

CANDIDATES = ("A cat.", "A cat is sleeping on the red sofa.", "A dog.", "A cat.", "A", "No")


def _case(tok, n):
    """Per sample: a head (a question; empty for every third sample) and candidates sharing prefixes
    ("A cat." twice, "A" a prefix of the others), a different subset per sample."""
    heads = [[] if j % 3 == 0 else
             tok.encode("\n<|im_start|>user\n" + "Is it a cat? " * j + "<|im_end|>\n<|im_start|>assistant\n")
             for j in range(n)]
    conts = [[tok.encode(t) + [IM_END_ID] for t in CANDIDATES[:len(CANDIDATES) - j % 2]] for j in range(n)]
    return heads, conts


def _scored(scorer, pre, batch, conts, heads, budget=100000):
    c = Continuations(scorer.vlm, batch, budget_tokens=budget)
    rows = c.add_batch(pre, conts, heads=heads)
    sums, counts = c.sums()
    return [sums[r] for r in rows], [counts[r] for r in rows]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_tree_rows_equal_per_sample_transformers(family, attn, tiny_qwen2_vl, tiny_qwen25_vl, monkeypatch):
    """Heads and prefix-tree candidates in one row per sample equal each whole row through a plain
    transformers forward and the one-row-per-candidate path (Prefixes.extend + _continue_rows); the
    continuation calls see one cache row per sample, never one per candidate."""
    path, preset = _path(family, tiny_qwen2_vl, tiny_qwen25_vl), get_preset(family)
    tok = get_tokenizer(preset=preset)
    scorer = GroundingScorer(path)
    scorer.vlm.attn_implementation = attn
    scorer.setup(torch.device("cpu"))
    assert scorer.vlm.model.config._attn_implementation == attn
    model = _load(path)
    _, samples = _samples(family)
    samples += _more(family, 2)
    batch = HostBatch(samples, preset)
    prefixes = [truncate(s, first_answer(s)[0]) for s in samples]
    heads, conts = _case(tok, len(samples))
    seen_rows, caches = [], []
    real = scorer.vlm.forward_continue

    def spy(ids, mask, pos, kv, use_cache, rows=None):
        hs, grown = real(ids, mask, pos, kv, use_cache, rows)
        seen_rows.append((int(ids.shape[0]), list(rows)))
        caches.append((kv, grown))
        return hs, grown

    def same(a, b):  # the very tensors (no copy selected for the call)
        return all(x is y and v is w for (x, v), (y, w) in zip(a, b))

    with torch.inference_mode():
        (group, pre), = list(encode_batches(scorer.vlm, prefixes, batch, budget_tokens=100000))
        monkeypatch.setattr(scorer.vlm, "forward_continue", spy)
        tree, counts = _scored(scorer, pre, batch, [conts[i] for i in group], [heads[i] for i in group])
        assert seen_rows == [(len(samples), list(range(len(samples))))]  # one call, one row per sample
        monkeypatch.setattr(cand, "_tree_ok", lambda *a: False)
        flat, _ = _scored(scorer, pre, batch, [conts[i] for i in group], [heads[i] for i in group])
        # the per-candidate path: heads read first (a row per sample), then a row per candidate, each
        # reading its sample's cache row
        assert seen_rows[2] == (sum(map(len, conts)), [j for j in range(len(samples)) for _ in conts[group[j]]])
        # each call reads the cache it continues as it is: the batch's, then the one the heads grew
        assert same(caches[0][0], pre.kv) and same(caches[1][0], pre.kv) and same(caches[2][0], caches[1][1])
    for j, i in enumerate(group):
        base = extend(prefixes[i], heads[i], preset, supervised=[False] * len(heads[i])) if heads[i] else prefixes[i]
        ref = np.array([reference_mean_logprob(model, extend(base, x, preset), preset, own_positions=True)
                        for x in conts[i]])
        assert counts[j].tolist() == [len(x) for x in conts[i]]
        np.testing.assert_allclose(tree[j] / counts[j], ref, rtol=0, atol=1e-4)
        np.testing.assert_allclose(tree[j], flat[j], rtol=0, atol=1e-4)
        dup = [k for k, t in enumerate(CANDIDATES) if t == "A cat."]
        assert tree[j][dup[0]] == tree[j][dup[1]]  # one path in the tree: the very same value


def test_trie_shares_prefixes():
    t = _Trie([[1, 2, 3], [1, 2, 4], [1, 2, 3], [1], [5], []])
    assert t.tokens == [1, 2, 3, 4, 5] and t.parent == [-1, 0, 1, 1, -1] and t.depth == [0, 1, 2, 2, 0]
    assert t.paths == [[0, 1, 2], [0, 1, 3], [0, 1, 2], [0], [4], []]
    assert t.inner() == [0, 1] and t.longest() == [1, 2, 3]


def test_node_logprobs_equal_token_logprobs():
    """One lm_head pass per state, its other targets by logit difference: token_logprobs per node."""
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=True)
    with torch.no_grad():
        head.weight.copy_(torch.randn(300, 16, generator=g))
        head.bias.copy_(torch.randn(300, generator=g))
    h = torch.randn(5, 16, generator=g)
    pred = torch.tensor([0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 1])
    target = torch.tensor([3, 7, 3, 299, 0, 1, 5, 9, 8, 7, 2])
    with torch.inference_mode():
        got = _node_logprobs(h, pred, target, head)
        want = token_logprobs(h[pred], target, head)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
@pytest.mark.parametrize("cls", [VLMCategoryScorer, GroundingScorer])
def test_scorers_equal_the_per_candidate_path(family, cls, tiny_qwen2_vl, tiny_qwen25_vl, monkeypatch):
    """The scorers' columns with the tree rows equal those with one row per candidate."""
    _, preset, _, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen25_vl, cls)
    _, samples = _samples(family)
    batch = HostBatch(samples + [{**samples[0], "id": "again"}], preset)
    with torch.inference_mode():
        tree = scorer.score(batch)
        monkeypatch.setattr(cand, "_tree_ok", lambda *a: False)
        flat = scorer.score(batch)
    for k in tree:
        if tree[k].dtype == object:
            assert tree[k].tolist() == flat[k].tolist()
        else:
            np.testing.assert_allclose(tree[k].astype(float), flat[k].astype(float), rtol=0, atol=1e-4)


def _rows_as_a_copied_cache(tiny_qwen2_vl):
    """forward_continue with `rows` (repeats, gaps and reordering) against a plain transformers
    DynamicCache over the selected copy: hidden states and grown keys/values bitwise equal, and the
    cache it was given left as it was."""
    from transformers import DynamicCache

    family, preset = "qwen2-vl", get_preset("qwen2-vl")
    _, _, _, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen2_vl, GroundingScorer)
    _, samples = _samples(family)
    batch = HostBatch(samples, preset)
    prefixes = [truncate(s, first_answer(s)[0]) for s in samples]
    rows = [0, 0, 0, 1, 2, 3, 3, 1, 0, 2, 3]
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        (_, pre), = list(encode_batches(scorer.vlm, prefixes, batch, budget_tokens=100000))
        before = [(a.clone(), b.clone()) for a, b in pre.kv]
        p = int(pre.keep.shape[1])
        ids = torch.randint(0, 1000, (len(rows), 5), generator=g)
        real = torch.ones(len(rows), 5, dtype=torch.bool)
        real[1, 3:] = real[7, 1:] = False
        mask = torch.cat([pre.keep[rows], real], dim=1).long()
        pos = torch.arange(p, p + 5)[None, None].expand(3, len(rows), -1).contiguous()
        for keep in (False, True):
            hs, grown = scorer.vlm.forward_continue(ids, mask, pos, pre.kv, keep, rows=rows)
            sel = torch.as_tensor(rows)
            ref = DynamicCache(ddp_cache_data=[(a[sel], b[sel]) for a, b in pre.kv])
            out = scorer.vlm.model.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=keep,
                                         **{_cache_kw(scorer.vlm.model.model): ref})
            assert torch.equal(hs, out.last_hidden_state)
            if keep:
                assert all(torch.equal(a, x) and torch.equal(b, y) for (a, b), (x, y) in
                           zip(grown, cache_tensors(_cache_out(out))))
                assert grown[0][0].shape == (len(rows), pre.kv[0][0].shape[1], p + 5, pre.kv[0][0].shape[3])
        assert all(torch.equal(a, x) and torch.equal(b, y) for (a, b), (x, y) in zip(pre.kv, before))
    return pre


def test_forward_continue_reads_rows_as_a_copied_cache(tiny_qwen2_vl):
    """forward_continue with `rows` (each row reads its cache row in place) gives exactly what a plain
    transformers DynamicCache over the selected copy gives; the installed transformers takes the
    in-place row layers (vlm_scorer._row_layer), not the copying fallback."""
    assert vs._row_layer() is not None
    _rows_as_a_copied_cache(tiny_qwen2_vl)


def test_row_cache_falls_back_without_dynamic_layer(tiny_qwen2_vl, monkeypatch):
    """A transformers without `cache_utils.DynamicLayer` (the real module's attribute removed while
    vlprep probes it): one warning naming what is missing and the tested versions, then forward_continue
    reads a plain DynamicCache over the selected rows — the same values, bitwise — and warns no more."""
    import warnings

    import transformers.cache_utils

    monkeypatch.setattr(vs, "_ROW_LAYER", {})
    with monkeypatch.context() as m:
        m.delattr(transformers.cache_utils, "DynamicLayer")
        with pytest.warns(UserWarning, match=r"no transformers\.cache_utils\.DynamicLayer.*tested with transformers "
                                             + vs.TESTED_TRANSFORMERS):
            assert vs._row_layer() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _rows_as_a_copied_cache(tiny_qwen2_vl)
    assert vs._ROW_LAYER == {"cls": None}


def test_row_cache_probe_refuses_an_update_that_skips_the_layers(monkeypatch):
    """A DynamicCache.update (the real class's, replaced) that grows the cache without calling the
    layer's own update fails the probe: the copying fallback, with one warning."""
    from transformers import DynamicCache

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):   # concatenates by itself
        layer = self.layers[layer_idx]
        layer.keys, layer.values = (torch.cat([layer.keys, key_states], -2),
                                    torch.cat([layer.values, value_states], -2))
        return layer.keys, layer.values

    monkeypatch.setattr(vs, "_ROW_LAYER", {})
    monkeypatch.setattr(DynamicCache, "update", update)
    with pytest.warns(UserWarning, match="does not take row layers|does not hand a layer's update its rows"):
        assert vs._row_layer() is None


def test_a_row_layer_not_updated_once_is_one_clear_error(tiny_qwen2_vl):
    """After a forward, every row layer must have been updated exactly once (else a transformers that
    reads the cache some other way attended to the wrong rows): a ScorerError naming the layer and
    the tested transformers versions."""
    from filters.reward.protocol import ScorerError

    kv = [(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4)) for _ in range(2)]
    cache = vs._read_cache(kv, [1, 0, 1], False)
    for i in range(2):
        cache.update(torch.ones(3, 1, 1, 4), torch.ones(3, 1, 1, 4), i)
    vs._check_read(cache)   # once each: fine
    cache.update(torch.ones(3, 1, 1, 4), torch.ones(3, 1, 1, 4), 1)
    with pytest.raises(ScorerError, match=r"did not update the KV cache's layer 1 exactly once.*tested with "
                                          r"transformers " + vs.TESTED_TRANSFORMERS):
        vs._check_read(cache)


@pytest.mark.parametrize("budget", [1, 100000])
def test_per_candidate_rows_take_empty_candidates(tiny_qwen2_vl, tiny_qwen25_vl, monkeypatch, budget):
    """Empty candidate lists in the one-row-per-candidate path (FlashAttention-2, vision candidates)
    score 0 over 0 tokens, as in the tree rows, even when a call would hold only empty ones (a budget of
    one row per call; this used to send a zero-width row to the model); the others equal the tree's."""
    _, preset, tok, scorer = _setup("qwen2-vl", tiny_qwen2_vl, tiny_qwen25_vl, GroundingScorer)
    _, samples = _samples("qwen2-vl")
    batch = HostBatch(samples, preset)
    prefixes = [truncate(s, first_answer(s)[0]) for s in samples]
    conts = [[[], []], [tok.encode("A cat.") + [IM_END_ID], []], [[]], [tok.encode("No"), [IM_END_ID]]]
    with torch.inference_mode():
        (group, pre), = list(encode_batches(scorer.vlm, prefixes, batch, budget_tokens=100000))
        tree = _scored(scorer, pre, batch, [conts[i] for i in group], None, budget)
        monkeypatch.setattr(cand, "_tree_ok", lambda *a: False)
        flat = _scored(scorer, pre, batch, [conts[i] for i in group], None, budget)
    assert [c.tolist() for c in flat[1]] == [[len(c) for c in conts[i]] for i in group] == \
        [c.tolist() for c in tree[1]]
    for j, i in enumerate(group):
        assert all(flat[0][j][conts[i].index(c)] == 0 for c in conts[i] if not c)
        np.testing.assert_allclose(flat[0][j], tree[0][j], rtol=0, atol=1e-4)


def _peak_bytes(fn):
    """fn()'s result and the most bytes it held allocated on the CPU at once (torch profiler memory events)."""
    import itertools

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    mem = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                 key=lambda e: e.start_ns())
    return out, max(itertools.accumulate(e.nbytes() for e in mem))


def test_per_candidate_rows_do_not_copy_the_cache_per_layer(tmp_path, monkeypatch):
    """The one-row-per-candidate path (FlashAttention-2, vision candidates) holds one layer's grown
    keys/values at a time: its peak memory with 64 candidates per sample is the same for a 2- and a
    6-layer model. Copying every layer's cache per candidate (index_select, as before; or a plain
    DynamicCache, which copies on construction and keeps every layer's grown copy) adds a per-candidate
    copy of each extra layer's cache — here about 2 x 7.4 MB per layer, the margin this allows at most
    one of. Values: the tree rows' (<= 1e-4), each depth alike."""
    from test_reward_fixtures import encode_frames, photo
    from tiny_models import tiny_config
    from transformers import Qwen2VLForConditionalGeneration

    family, preset = "qwen2-vl", get_preset("qwen2-vl")
    tok = get_tokenizer(preset=preset)
    samples = [{"id": e.id, **e.arrays(), "meta": e.meta} for e in
               [encode_frames(f"s{j}", "Describe the picture.", "A cat.", images=[photo(224, 224 + 28 * j, j)],
                              preset=family) for j in range(4)]]
    batch = HostBatch(samples, preset)
    prefixes = [truncate(s, first_answer(s)[0]) for s in samples]
    words = "cat dog sofa red table sleeping jumps onto the a".split()
    conts = [[tok.encode(" ".join(words[(j + c) % 10:(j + c) % 10 + 1 + c % 3])) + [IM_END_ID] for c in range(64)]
             for j in range(len(samples))]
    peaks, copy_bytes = {}, {}
    for layers in (2, 6):
        torch.manual_seed(0)
        Qwen2VLForConditionalGeneration(tiny_config(family, layers)).eval().save_pretrained(tmp_path / str(layers))
        scorer = GroundingScorer(str(tmp_path / str(layers)))
        scorer.setup(torch.device("cpu"))
        with torch.inference_mode():
            (group, pre), = list(encode_batches(scorer.vlm, prefixes, batch, budget_tokens=100000))
            tree, _ = _scored(scorer, pre, batch, [conts[i] for i in group], None)
            with monkeypatch.context() as m:
                m.setattr(cand, "_tree_ok", lambda *a: False)
                c = Continuations(scorer.vlm, batch, budget_tokens=1 << 20)
                rows, peaks[layers] = _peak_bytes(lambda: c.add_batch(pre, [conts[i] for i in group]))
                sums, _ = c.sums()
        for j in range(len(group)):
            np.testing.assert_allclose(sums[rows[j]], tree[j], rtol=0, atol=1e-4)
        k = sum(map(len, conts))
        a, b = pre.kv[0]
        copy_bytes[layers] = k * (a[0].numel() * a.element_size() + b[0].numel() * b.element_size())  # one layer
    assert copy_bytes[2] == copy_bytes[6] > 5e6
    assert peaks[6] - peaks[2] < copy_bytes[2], (peaks, copy_bytes)


@pytest.mark.parametrize("cls", [VLMCategoryScorer, GroundingScorer])
def test_fa2_scores_through_the_per_candidate_rows(cls, tiny_qwen2_vl, tiny_qwen25_vl, monkeypatch):
    """Under FlashAttention-2 (transformers' own glue over tests/flash_attn_standin.py) the scorers take
    the one-row-per-candidate path — rows reading their sample's cache row in place, padding between a
    row's tokens once a question extended it — and their columns equal the SDPA tree rows' (<= 1e-4)."""
    import flash_attn_standin

    family = "qwen2-vl"
    _, preset, _, scorer = _setup(family, tiny_qwen2_vl, tiny_qwen25_vl, cls)
    _, samples = _samples(family)
    batch = HostBatch(samples + [{**samples[0], "id": "again"}], preset)
    with torch.inference_mode():
        tree = scorer.score(batch)
        fa = flash_attn_standin.install(monkeypatch)
        flash_attn_standin.use_flash_attention_2(scorer.vlm.model)
        assert not cand._tree_ok(scorer.vlm, batch, [[[1]]], [[]])
        flat = scorer.score(batch)
    assert any(c["causal"] for c in fa.calls)  # the continuations went through the FA2 glue
    for k in tree:
        if tree[k].dtype == object:
            assert tree[k].tolist() == flat[k].tolist()
        else:
            np.testing.assert_allclose(tree[k].astype(float), flat[k].astype(float), rtol=0, atol=1e-4)
