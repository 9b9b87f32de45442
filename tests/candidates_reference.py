"""Test-only reference for the candidate scorers: the one-prefix-at-a-time path that
filters/reward/candidates.py used before it continued a whole batch (Prefixes, Continuations.add_batch).
Each prefix is cut out of encode_batches' padded batch as its own [1, heads, L, d] keys/values and its
candidates run as one row each over that cache repeated (`expand`); every candidate token goes
through lm_head on its own (token_logprobs). tests/test_issue15_share.py and
tests/test_issue15_batched_prefix.py compare the library's paths with it (<= 1e-4)."""
from __future__ import annotations

import numpy as np
import torch

from filters.reward.batching import HostBatch
from filters.reward.candidates import encode_batches, extend
from filters.reward.vlm_scorer import token_logprobs


class Prefix:
    """A row the model has read once (vision included): its keys/values per layer [1, heads, L, d], the
    final hidden state of its last token (it predicts the first continued token) and the row itself
    (a sample: what follows takes its positions from `extend` on it)."""

    def __init__(self, row: dict, kv: list, last):
        self.row, self.kv, self.last = row, kv, last

    def __len__(self) -> int:
        return len(self.row["input_ids"])


def encode_prefixes(vlm, rows: list[dict], batch: HostBatch, budget_tokens: int = 16384):
    """Batches of [(index, Prefix)] covering every row: encode_batches' batches, cut into one Prefix per row."""
    for group, pre in encode_batches(vlm, rows, batch, budget_tokens):
        n = [len(rows[i]["input_ids"]) for i in group]
        yield [(i, Prefix(rows[i], [(k[j:j + 1, :, :n[j]], v[j:j + 1, :, :n[j]]) for k, v in pre.kv], pre.last[j]))
               for j, i in enumerate(group)]


def _continue(vlm, prefix: Prefix, conts: list, batch: HostBatch, *, keep: bool = False):
    """Token lists `conts` after `prefix` (its keys/values repeated per row; rows right-padded), each
    row's positions from `extend` on the whole row: (hidden states [k, W, H] with the prefix's last
    state shifted in; the hidden states; ids [k, W]; real-token mask [k, W]; grown keys/values when `keep`)."""
    sp = vlm.vocab(batch.preset).ids
    k, width, n = len(conts), max(len(c) for c in conts), len(prefix)
    _, dev, _ = batch._torch()
    ids = np.full((k, width), vlm.vocab(batch.preset).pad, np.int64)
    real = np.zeros((k, width), bool)
    pos = np.zeros((3, k, width), np.int64)
    for r, c in enumerate(conts):
        ids[r, :len(c)], real[r, :len(c)] = c, True
        pos[:, r, :len(c)] = extend(prefix.row, c, batch.preset, special=sp)["position_ids"][:, n:]
    mask = np.concatenate([np.ones((k, n), np.int64), real.astype(np.int64)], axis=1)
    kv = [(a.expand(k, -1, -1, -1), b.expand(k, -1, -1, -1)) for a, b in prefix.kv]
    t = lambda x: torch.from_numpy(x).to(dev)  # noqa: E731
    hs, grown = vlm.forward_continue(t(ids), t(mask), t(pos), kv, keep)
    pred = torch.cat([prefix.last[None, None].expand(k, 1, -1), hs[:, :-1]], dim=1)
    return pred, hs, t(ids), t(real), grown


def extend_prefix(vlm, prefix: Prefix, ids, batch: HostBatch) -> Prefix:
    """`prefix` followed by the text `ids`, read from the prefix's keys/values (no vision re-encoded)."""
    ids = [int(x) for x in ids]
    with torch.inference_mode():
        _, hs, _, _, grown = _continue(vlm, prefix, [ids], batch, keep=True)
    sp = vlm.vocab(batch.preset).ids
    return Prefix(extend(prefix.row, ids, batch.preset, supervised=[False] * len(ids), special=sp), grown, hs[0, -1])


def continuation_logprobs(vlm, prefix: Prefix, conts: list, batch: HostBatch,
                          budget_tokens: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """(summed log-prob, token count) of each token list in `conts` after `prefix` (every appended token
    scored), in calls of at most `budget_tokens` (prefix + row) per row chunk."""
    conts = [[int(x) for x in c] for c in conts]
    sums = np.zeros(len(conts))
    if not conts:
        return sums, np.zeros(0, np.int64)
    step = max(1, budget_tokens // (len(prefix) + max(len(c) for c in conts)))
    with torch.inference_mode():
        for a in range(0, len(conts), step):
            pred, _, ids, real, _ = _continue(vlm, prefix, conts[a:a + step], batch)
            lp = token_logprobs(pred[real], ids[real], vlm.model.lm_head).double()
            who = real.nonzero(as_tuple=True)[0]
            part = torch.zeros(int(real.shape[0]), dtype=torch.float64, device=lp.device).index_add_(0, who, lp)
            sums[a:a + len(part)] = part.cpu().numpy()
    return sums, np.array([len(c) for c in conts], dtype=np.int64)
