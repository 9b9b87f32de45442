"""Test-only: a pure-torch stand-in for the `flash_attn` package, swapped into transformers' own
flash-attention glue (transformers.modeling_flash_attention_utils), so that a model whose config
says `flash_attention_2` runs the real FA2 code path of transformers on CPU: packed rows are split
by `_is_packed_sequence` / `prepare_fa_kwargs_from_position_ids` (text) or by the vision tower's
cu_seqlens, and the varlen function receives the boundaries transformers computed.

The stand-in computes each segment's attention directly (float32 softmax, causal mask aligned
bottom-right as flash-attn >= 2.1 does, grouped-query heads repeated) and records every call.
"""
from __future__ import annotations

import sys
import types

import torch


class FlashStandIn:
    def __init__(self):
        self.calls: list[dict] = []

    # flash_attn.flash_attn_varlen_func's signature (the parameters transformers inspects)
    def flash_attn_varlen_func(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                               dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                               softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False,
                               block_table=None):
        assert dropout_p == 0.0 and window_size == (-1, -1) and not softcap
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        assert len(cq) == len(ck) and cq[-1] == q.shape[0] and ck[-1] == k.shape[0]
        self.calls.append({"fn": "varlen", "cu_seqlens": tuple(cq), "causal": bool(causal), "heads": q.shape[1],
                           "dtype": q.dtype})
        out = torch.empty_like(q)
        for a, b, c, d in zip(cq[:-1], cq[1:], ck[:-1], ck[1:]):
            out[a:b] = _attend(q[a:b], k[c:d], v[c:d], softmax_scale, causal)
        return out

    def flash_attn_func(self, q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
        assert dropout_p == 0.0
        self.calls.append({"fn": "dense", "cu_seqlens": None, "causal": bool(causal), "heads": q.shape[2],
                           "dtype": q.dtype})
        return torch.stack([_attend(q[i], k[i], v[i], softmax_scale, causal) for i in range(q.shape[0])])

    def flash_attn_with_kvcache(self, *args, **kwargs):
        raise AssertionError("scoring never decodes with a cache")


def _attend(q, k, v, scale, causal):
    """q [Lq, H, D], k/v [Lk, Hkv, D] -> [Lq, H, D] in q's dtype; float32 arithmetic."""
    lq, h, d = q.shape
    lk, hkv = k.shape[0], k.shape[1]
    rep = h // hkv
    kk, vv = k.float().repeat_interleave(rep, dim=1), v.float().repeat_interleave(rep, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), kk) * (scale if scale is not None else d ** -0.5)
    if causal:
        i = torch.arange(lq)[:, None]
        j = torch.arange(lk)[None, :]
        scores = scores.masked_fill(j > i + (lk - lq), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), vv).to(q.dtype)


def install(monkeypatch) -> FlashStandIn:
    """Make transformers' FA2 glue import the stand-in as `flash_attn` (undone by monkeypatch)."""
    import transformers.modeling_flash_attention_utils as fa

    s = FlashStandIn()
    pkg = types.ModuleType("flash_attn")
    pkg.flash_attn_func = s.flash_attn_func
    pkg.flash_attn_varlen_func = s.flash_attn_varlen_func
    pkg.flash_attn_with_kvcache = s.flash_attn_with_kvcache
    pkg.__version__ = "2.8.3"
    padding = types.ModuleType("flash_attn.bert_padding")
    padding.pad_input, padding.unpad_input = fa._pad_input, fa._unpad_input  # transformers' torch equivalents
    pkg.bert_padding = padding
    monkeypatch.setitem(sys.modules, "flash_attn", pkg)
    monkeypatch.setitem(sys.modules, "flash_attn.bert_padding", padding)
    monkeypatch.setattr(fa, "is_flash_attn_2_available", lambda *a, **k: True)
    monkeypatch.setattr(fa, "_loaded_implementation", None)  # force a fresh import through `_lazy_imports`
    return s


def use_flash_attention_2(model) -> None:
    """Switch a loaded model (and its sub-configs) to transformers' flash_attention_2 path. Loading
    with it directly is refused on a machine without CUDA, before any attention runs."""
    model.config._attn_implementation = "flash_attention_2"
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "_attn_implementation", None) not in (None, "flash_attention_2"):
            cfg._attn_implementation = "flash_attention_2"
