"""Scoring candidate continuations of a shard sample with the `vlm` scorer's forward pass.

The model-based curation signals (VLM category tagger, grounding quality, query quality, answer
verification) all ask the same thing: how likely does the checkpoint find some tokens after some
prefix of a sample? This module builds those rows as ordinary shard-style samples (vision blocks in
the prefix kept, with their grids and pixel rows; M-RoPE ids from processors.rope.get_rope_index,
the function the encoder writes shards with) and scores them in token-budget batches through
`VLMScorer._answer_logprob`, so they share its batching, device handling and lm_head path.
"""
from __future__ import annotations

import numpy as np

from processors.presets import IGNORE_INDEX, IMAGE_PAD_ID, VIDEO_PAD_ID

from .batching import HostBatch, plan_batches


def _rows(grids) -> np.ndarray:
    g = np.asarray(grids).reshape(-1, 3)
    return np.prod(g, axis=1).astype(np.int64) if len(g) else np.zeros(0, np.int64)


def _count_items(pad_tokens: int, rows: np.ndarray) -> int:
    """How many leading vision items (rows / 4 placeholders each, merge 2x2) `pad_tokens` placeholders hold."""
    cum = np.concatenate([[0], np.cumsum(rows // 4)])
    k = int(np.searchsorted(cum, pad_tokens))
    if k >= len(cum) or cum[k] != pad_tokens:
        raise ValueError(f"prefix holds {pad_tokens} vision placeholders, not a whole number of items {cum.tolist()}")
    return k


def truncate(sample: dict, n: int, special=None) -> dict:
    """The sample's first `n` tokens as a sample: vision items after the cut are dropped with their
    grids and pixel rows; no position is supervised. `special`: the tokenizer's SpecialIds (None =
    Qwen2/Qwen3's)."""
    ids = np.asarray(sample["input_ids"])[:n]
    img_rows, vid_rows = _rows(sample["image_grid_thw"]), _rows(sample["video_grid_thw"])
    image_pad, video_pad = (IMAGE_PAD_ID, VIDEO_PAD_ID) if special is None else (special.image_pad, special.video_pad)
    n_img = _count_items(int((ids == image_pad).sum()), img_rows)
    n_vid = _count_items(int((ids == video_pad).sum()), vid_rows)
    # a stage sample (read with pixels="frames") carries stored frames: its rows are rebuilt here
    pv = np.asarray(sample["pixel_values"] if "pixel_values" in sample else sample["stored_pixels"].pixel_values())
    all_img = int(img_rows.sum())
    pixels = np.concatenate([pv[:int(img_rows[:n_img].sum())], pv[all_img:all_img + int(vid_rows[:n_vid].sum())]])
    return {
        "id": sample["id"], "input_ids": ids, "labels": np.full(len(ids), IGNORE_INDEX, np.int64),
        "position_ids": np.asarray(sample["position_ids"])[..., :n], "pixel_values": pixels,
        "image_grid_thw": np.asarray(sample["image_grid_thw"]).reshape(-1, 3)[:n_img],
        "video_grid_thw": np.asarray(sample["video_grid_thw"]).reshape(-1, 3)[:n_vid],
        "second_per_grid_ts": np.asarray(sample["second_per_grid_ts"]).reshape(-1)[:n_vid],
        "meta": sample.get("meta", {}),
    }


def extend(prefix: dict, ids, preset, *, supervised=None, special=None) -> dict:
    """`prefix` (a sample) followed by `ids`; the appended tokens are supervised (or those where the
    boolean `supervised` is True). Positions for the whole row come from get_rope_index (`special`: the
    tokenizer's SpecialIds; None = Qwen2/Qwen3's)."""
    from processors.rope import get_rope_index

    ids = np.asarray(ids, dtype=np.int64)
    sup = np.ones(len(ids), bool) if supervised is None else np.asarray(supervised, bool)
    full = np.concatenate([np.asarray(prefix["input_ids"], np.int64), ids])
    labels = np.concatenate([np.asarray(prefix["labels"], np.int64), np.where(sup, ids, IGNORE_INDEX)])
    vids = np.asarray(prefix["video_grid_thw"]).reshape(-1, 3)
    pos, _ = get_rope_index(full, prefix["image_grid_thw"], vids,
                            np.asarray(prefix["second_per_grid_ts"], np.float32) if len(vids) else None, preset,
                            token_ids=special)
    return {**prefix, "input_ids": full, "labels": labels, "position_ids": pos}


def relabel(sample: dict, supervised: np.ndarray) -> dict:
    """The same row with only the `supervised` positions scored."""
    ids = np.asarray(sample["input_ids"], np.int64)
    return {**sample, "labels": np.where(np.asarray(supervised, bool), ids, IGNORE_INDEX)}


def row_logprobs(vlm, rows: list[dict], batch: HostBatch, budget_tokens: int = 16384,
                 with_vision: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mean log-prob, number of supervised tokens) per row; sum = mean * count.

    Rows are grouped by length into padded batches of at most `budget_tokens` (plan_batches) and sent
    through `vlm._answer_logprob` on `batch`'s device/dtype; with_vision=False drops every vision
    block first (HostBatch.text_only: plain text positions)."""
    n = len(rows)
    mean = np.full(n, np.nan)
    counts = np.array([int((np.asarray(r["labels"])[1:] != IGNORE_INDEX).sum()) for r in rows], dtype=np.int64)
    if not n:
        return mean, counts
    import torch

    lengths = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
    special = vlm.vocab(batch.preset).ids
    for group in plan_batches(lengths, budget_tokens, 0.25):
        hb = HostBatch([rows[i] for i in group], batch.preset, batch.device, batch.dtype)
        if not with_vision:
            hb = hb.text_only(special)
        with torch.inference_mode():
            lp, _ = vlm._answer_logprob(hb, with_vision=with_vision)
        mean[group] = lp
    return mean, counts


class Continuations:
    """Candidate continuations of any number of prefixes, each read from its prefix's keys/values;
    `sums()` sends their tokens through lm_head at once (one pass over the vocabulary, as row_logprobs
    makes one per batch), once per distinct predicting hidden state. Queued as nodes: a hidden state,
    the token it predicts and the rows whose sum the token's log-prob joins."""

    def __init__(self, vlm, batch: HostBatch, budget_tokens: int = 16384):
        self.vlm, self.batch, self.budget = vlm, batch, budget_tokens
        self.h, self.pred, self.target, self.node, self.row, self.counts = [], [], [], [], [], []
        self.states = self.nodes = 0

    def _queue(self, h, pred, target, node, row) -> None:
        """States `h` [m, H]; per node: its state pred (into h), target token; (node, row) membership."""
        self.h.append(h)
        self.pred.append(np.asarray(pred, np.int64) + self.states)
        self.target.append(np.asarray(target, np.int64))
        self.node.append(np.asarray(node, np.int64) + self.nodes)
        self.row.append(np.asarray(row, np.int64))
        self.states += int(h.shape[0])
        self.nodes += len(target)

    def _queue_rows(self, pred, ids, real, rows: np.ndarray) -> None:
        """One node per real token of padded rows (pred [k, W, H], ids, real [k, W]); row r is `rows[r]`."""
        k = int(real.sum())
        where = real.nonzero(as_tuple=True)
        self._queue(pred[real], np.arange(k), ids[real].cpu().numpy(), np.arange(k), rows[where[0].cpu().numpy()])

    def add_batch(self, pre: Prefixes, conts: list, heads: list | None = None) -> list:
        """Queue token lists `conts[j]` after row j of `pre` — after the text `heads[j]` when given (a
        question read in the same call; nothing of it is scored or kept); returns each row's candidate
        row numbers in `sums()`.

        One model row per sample (`_tree_rows`): its head, then its candidates as a prefix tree, each
        token attending to the sample's cached keys/values, the head and its own tree ancestors only
        (a 4-D mask), at the position `extend` gives it. The sample's cache is read once for all its
        candidates (never copied per candidate), a token several candidates share is computed once,
        and `sums()` runs lm_head once per predicting state. Rows go in chunks of at most
        `budget_tokens` (cache + row) per call. Attention backends without 4-D masks
        (FlashAttention-2), or candidates or heads with vision tokens, take one row per candidate
        (`_continue_rows`), the heads read first by Prefixes.extend."""
        import torch

        conts = [[[int(x) for x in c] for c in cs] for cs in conts]
        heads = [[] for _ in conts] if heads is None else [[int(x) for x in h] for h in heads]
        first = len(self.counts)
        out, at = [], first
        for cs in conts:
            out.append(np.arange(at, at + len(cs)))
            at += len(cs)
        self.counts += [len(c) for cs in conts for c in cs]
        if not any(c for cs in conts for c in cs):
            return out
        if not _tree_ok(self.vlm, self.batch, conts, heads):
            if any(heads):
                pre = pre.extend(self.vlm, heads, self.batch)
            # (candidate, its sample, its row in sums()); empty lists: sum 0, nothing to run
            flat = [(c, j, int(r)) for j, cs in enumerate(conts) for c, r in zip(cs, out[j]) if c]
            step = max(1, self.budget // (int(pre.keep.shape[1]) + max(len(c) for c, _, _ in flat)))
            for a in range(0, len(flat), step):
                part = flat[a:a + step]
                with torch.inference_mode():
                    pred, _, ids, real, _, _ = _continue_rows(self.vlm, pre, [j for _, j, _ in part],
                                                              [c for c, _, _ in part], self.batch)
                    self._queue_rows(pred, ids, real, np.array([r for _, _, r in part], np.int64))
            return out
        trees = [_Trie(cs) for cs in conts]
        todo = [j for j, t in enumerate(trees) if t.tokens]  # empty lists: sum 0, nothing to run
        if not todo:
            return out
        width = max(len(heads[j]) + len(trees[j].tokens) for j in todo)
        step = max(1, self.budget // (int(pre.keep.shape[1]) + width))
        for a in range(0, len(todo), step):
            part = todo[a:a + step]
            with torch.inference_mode():
                hs, root = _tree_rows(self.vlm, pre, part, [heads[j] for j in part], [trees[j] for j in part],
                                      self.batch)
                for r, j in enumerate(part):
                    t, h0 = trees[j], len(heads[j])
                    # states: the root's predictor, then every node that has children, in node order
                    inner = t.inner()
                    at_state = {-1: 0, **{k: 1 + i for i, k in enumerate(inner)}}
                    states = torch.cat([root[r:r + 1], hs[r, [h0 + k for k in inner]]])
                    node, row = zip(*[(k, int(out[j][c])) for c, path in enumerate(t.paths) for k in path])
                    self._queue(states, [at_state[p] for p in t.parent], t.tokens, node, row)
        return out

    def sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(summed log-prob, token count) of every queued row."""
        import torch

        n = len(self.counts)
        if not self.h:  # no rows, or only empty ones
            return np.zeros(n), np.array(self.counts, dtype=np.int64)
        with torch.inference_mode():
            h = torch.cat(self.h)
            dev = h.device
            t = lambda x: torch.from_numpy(np.concatenate(x)).to(dev)  # noqa: E731
            lp = _node_logprobs(h, t(self.pred), t(self.target), self.vlm.model.lm_head)
            s = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, t(self.row), lp.double()[t(self.node)])
        return s.cpu().numpy(), np.array(self.counts, dtype=np.int64)


class _Trie:
    """Token lists as a prefix tree: node k holds tokens[k] after parent[k] (-1: the root, i.e. right
    after the prefix) at depth[k]; paths[c]: the nodes of list c in order. Parents precede children."""

    def __init__(self, conts: list):
        self.tokens, self.parent, self.depth, self.paths = [], [], [], []
        child: dict = {}
        for c in conts:
            at, path = -1, []
            for d, x in enumerate(c):
                k = child.get((at, x))
                if k is None:
                    k = child[(at, x)] = len(self.tokens)
                    self.tokens.append(x)
                    self.parent.append(at)
                    self.depth.append(d)
                at = k
                path.append(k)
            self.paths.append(path)

    def inner(self) -> list:
        """Nodes with children, ascending."""
        return sorted(set(p for p in self.parent if p >= 0))

    def longest(self) -> list:
        """The tokens of the deepest path (a list the text positions of every node can be read from)."""
        return [self.tokens[k] for k in max(self.paths, key=len)]


def _node_logprobs(h, pred, target, lm_head):
    """log p(target[i] | h[pred[i]]): token_logprobs once per state (with its first target); the other
    targets of a state from its log-prob plus their float32 logit difference to that first target."""
    import torch

    from .vlm_scorer import token_logprobs

    m = h.shape[0]
    order = torch.arange(len(pred), device=pred.device)
    # the first node of each state (every state predicts at least one node)
    first = torch.full((m,), len(pred), dtype=torch.int64, device=pred.device).scatter_reduce_(0, pred, order, "amin")
    lp_first = token_logprobs(h, target[first], lm_head)
    lp = lp_first[pred]
    other = (order != first[pred]).nonzero(as_tuple=True)[0]
    if len(other):
        w, b = lm_head.weight, lm_head.bias
        tt, tf = target[other], target[first[pred[other]]]
        hh = h[pred[other]].float()
        diff = (hh * (w[tt].float() - w[tf].float())).sum(-1)
        if b is not None:
            diff = diff + (b[tt].float() - b[tf].float())
        lp = lp.clone()
        lp[other] = lp[other] + diff
    return lp


def _tree_ok(vlm, batch: HostBatch, conts: list, heads: list) -> bool:
    """Whether _tree_rows can run: an attention backend that takes a 4-D mask (sdpa, eager) and text only."""
    attn = getattr(vlm.model.config, "_attn_implementation", None) or "sdpa"
    if attn not in ("sdpa", "eager"):
        return False
    sp = vlm.vocab(batch.preset).ids
    vision = (sp.vision_start, sp.image_pad, sp.video_pad)
    return not any(np.isin(x, vision).any() for h, cs in zip(heads, conts) for x in [h, *cs] if len(x))


def _tree_rows(vlm, pre: Prefixes, part: list, heads: list, trees: list, batch: HostBatch):
    """One forward call over rows `part` of `pre`'s padded keys/values: row r is heads[r] (causal) then
    trees[r]'s nodes (each after the head and its ancestors), positions as `extend` gives the head
    followed by the node's path. Returns (final hidden states [k, W, H], the state predicting each
    row's first tree token [k, H]: the head's last, or the prefix's own when the head is empty)."""
    import torch

    sp = vlm.vocab(batch.preset).ids
    k = len(part)
    width = max(len(h) + len(t.tokens) for h, t in zip(heads, trees))
    ids = np.full((k, width), vlm.vocab(batch.preset).pad, np.int64)
    pos = np.zeros((3, k, width), np.int64)
    see = np.zeros((k, width, width), bool)
    see[:, np.arange(width), np.arange(width)] = True  # padding sees itself (never a fully masked row)
    for r, (o, h, t) in enumerate(zip(part, heads, trees)):
        n, h0 = len(pre.rows[o]["input_ids"]), len(h)
        # text positions do not depend on which text: the head and the deepest path give every node's
        tail = extend(pre.rows[o], h + t.longest(), batch.preset, special=sp)["position_ids"][:, n:]
        ids[r, :h0], ids[r, h0:h0 + len(t.tokens)] = h, t.tokens
        pos[:, r, :h0] = tail[:, :h0]
        pos[:, r, h0:h0 + len(t.tokens)] = tail[:, h0 + np.asarray(t.depth, np.int64)]
        see[r, :h0, :h0] = np.tril(np.ones((h0, h0), bool))
        for j, p in enumerate(t.parent):
            see[r, h0 + j, :h0] = True
            if p >= 0:
                see[r, h0 + j] |= see[r, h0 + p]
            see[r, h0 + j, h0 + j] = True
    _, dev, _ = batch._torch()
    tt = lambda x: torch.from_numpy(x).to(dev)  # noqa: E731
    seen, last = pre.pick(part)
    seen = seen.to(dev)
    allowed = torch.cat([seen[:, None, :].expand(-1, width, -1), tt(see)], dim=2)[:, None]
    dt = pre.kv[0][0].dtype
    mask = torch.zeros(allowed.shape, dtype=dt, device=dev).masked_fill_(~allowed, torch.finfo(dt).min)
    hs, _ = vlm.forward_continue(tt(ids), mask, tt(pos), pre.kv, False, rows=part)
    heads_end = torch.tensor([len(h) - 1 for h in heads], device=hs.device)
    root = torch.where((heads_end >= 0)[:, None], hs[torch.arange(k, device=hs.device), heads_end.clamp(min=0)], last)
    return hs, root


class Prefixes:
    """A batch of rows the model has read (vision included), kept padded: keys/values per layer
    [B, heads, P, d], `keep` [B, P] (True at a row's own positions; False at padding, which may sit
    between its tokens once extended), `last` [B, H] (final hidden state of each row's last token) and
    the rows (samples: what follows takes its positions from `extend` on them). Continuing all rows
    together is one forward call; the mask hides the padding, so every row sees only its own tokens."""

    def __init__(self, rows: list[dict], kv: list, keep, last):
        self.rows, self.kv, self.keep, self.last = rows, kv, keep, last

    def __len__(self) -> int:
        return len(self.rows)

    def pick(self, rows: list) -> tuple:
        """(keep, last) of `rows` (indices, repeats allowed), in that order. The keys/values are not
        selected: forward_continue reads rows of `kv` itself (never a copy per candidate)."""
        import torch

        if rows == list(range(len(self))):
            return self.keep, self.last
        sel = torch.as_tensor(rows, device=self.keep.device)
        return self.keep.index_select(0, sel), self.last.index_select(0, sel)

    def extend(self, vlm, ids: list, batch: HostBatch) -> "Prefixes":
        """Row j followed by the text `ids[j]` (lengths may differ), all rows in one forward call from
        the cached keys/values (no vision re-encoded)."""
        import torch

        ids = [[int(x) for x in c] for c in ids]
        if not any(ids):
            return self
        with torch.inference_mode():
            _, hs, _, real, grown, keep = _continue_rows(vlm, self, list(range(len(self))), ids, batch, keep=True)
            end = torch.tensor([len(c) - 1 for c in ids], device=hs.device)
            # a row extended by nothing keeps its own last state
            last = torch.where((end >= 0)[:, None], hs[torch.arange(len(ids), device=hs.device), end.clamp(min=0)],
                               self.last.to(hs.device))
        sp = vlm.vocab(batch.preset).ids
        rows = [extend(r, c, batch.preset, supervised=[False] * len(c), special=sp) for r, c in zip(self.rows, ids)]
        return Prefixes(rows, grown, keep, last)


def encode_batches(vlm, rows: list[dict], batch: HostBatch, budget_tokens: int = 16384):
    """(indices, Prefixes) per batch of `rows` (plan_batches): each batch read once
    with its vision and kept padded, so its rows continue together (Prefixes.extend, Continuations.add_batch)."""
    import torch

    lengths = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
    for group in plan_batches(lengths, budget_tokens, 0.25):
        hb = HostBatch([rows[i] for i in group], batch.preset, batch.device, batch.dtype)
        with torch.inference_mode():
            hs, _, kv = vlm.forward_cached(hb)
            lens = torch.as_tensor(lengths[group], device=hs.device)
            keep = torch.arange(hs.shape[1], device=hs.device)[None] < lens[:, None]
            last = hs[torch.arange(len(group), device=hs.device), lens - 1]
        yield list(group), Prefixes([rows[i] for i in group], kv, keep, last)
        del hs, kv


def _continue_rows(vlm, pre: Prefixes, owner: list, conts: list, batch: HostBatch, *, keep: bool = False):
    """Run token lists `conts` (row r after prefix row owner[r]; rows right-padded) over `pre`'s padded
    keys/values in one forward call: (hidden states [k, W, H] with the prefix row's last state shifted
    in, so row r's position j predicts conts[r][j]; the hidden states themselves; ids [k, W]; real-token
    mask [k, W]; grown keys/values when `keep`; their mask of each row's own positions)."""
    import torch

    sp = vlm.vocab(batch.preset).ids
    k, width = len(conts), max(len(c) for c in conts)
    _, dev, _ = batch._torch()
    ids = np.full((k, width), vlm.vocab(batch.preset).pad, np.int64)
    real = np.zeros((k, width), bool)
    pos = np.zeros((3, k, width), np.int64)
    vision = (sp.vision_start, sp.image_pad, sp.video_pad)
    # text positions do not depend on which text: per prefix row, the longest continuation's serve all
    tails = {}
    for o in set(owner):
        mine = [c for c, w in zip(conts, owner) if w == o]
        if not any(np.isin(c, vision).any() for c in mine):
            n = len(pre.rows[o]["input_ids"])
            tails[o] = extend(pre.rows[o], max(mine, key=len), batch.preset, special=sp)["position_ids"][:, n:]
    for r, (c, o) in enumerate(zip(conts, owner)):
        ids[r, :len(c)], real[r, :len(c)] = c, True
        n = len(pre.rows[o]["input_ids"])
        tail = tails[o] if o in tails else extend(pre.rows[o], c, batch.preset, special=sp)["position_ids"][:, n:]
        pos[:, r, :len(c)] = tail[:, :len(c)]
    t = lambda x: torch.from_numpy(x).to(dev)  # noqa: E731
    seen, last = pre.pick(owner)
    realt = t(real)
    grown_keep = torch.cat([seen, realt.to(seen.device)], dim=1)
    # row r reads cache row owner[r] in place: the sample's keys/values are not copied per candidate
    hs, grown = vlm.forward_continue(t(ids), grown_keep.long().to(dev), t(pos), pre.kv, keep, rows=owner)
    pred = torch.cat([last[:, None], hs[:, :-1]], dim=1)
    return pred, hs, t(ids), realt, grown, grown_keep


class CandidateScorer:
    """Base of the scorers that rank candidate continuations with a local checkpoint: the `vlm`
    scorer owns loading it (dtype, attention backend, device); rows are padded, never packed."""

    name = "candidates"
    pack = False

    def __init__(self, model_path: str, *, batch_tokens: int = 16384, tokenizer: str | None = None,
                 dtype: str = "auto"):
        from .vlm_scorer import VLMScorer

        # `tokenizer`: the folder the shards were prepared with (job.json); None = the built-in ranks
        self.vlm = VLMScorer(model_path, pack="off", visual_gain=False, dtype=dtype, tokenizer=tokenizer)
        self.batch_tokens = batch_tokens

    def setup(self, device) -> None:
        self.vlm.setup(device)
        self.vlm.pack = False

    def check_preset(self, preset_name: str) -> str | None:
        return self.vlm.check_preset(preset_name)

    def _tok(self, batch: HostBatch):
        return self.vlm.vocab(batch.preset).tokenizer

    def _ids(self, batch: HostBatch):
        """The shards' SpecialIds (processors.tokenizer.special_ids of their tokenizer)."""
        return self.vlm.vocab(batch.preset).ids

    def logprobs(self, rows: list[dict], batch: HostBatch, with_vision: bool = True):
        return row_logprobs(self.vlm, rows, batch, self.batch_tokens, with_vision)

    def prefix_batches(self, rows: list[dict], batch: HostBatch):
        """encode_batches with this scorer's model and token budget."""
        return encode_batches(self.vlm, rows, batch, self.batch_tokens)

    def continuations(self, batch: HostBatch) -> Continuations:
        """A Continuations collector with this scorer's model and token budget."""
        return Continuations(self.vlm, batch, self.batch_tokens)


def answer_spans(sample: dict, special=None, most: int | None = None) -> list[tuple[int, int]]:
    """(start, end) of every supervised assistant answer (the first `most`): start = its first
    supervised token, end = its <|im_end|> (exclusive; the end of the row when absent). Supervised
    runs not separated by an <|im_start|> belong to one answer. `special`: the tokenizer's SpecialIds
    (None = Qwen2/Qwen3's)."""
    from processors.presets import IM_END_ID, IM_START_ID

    ids, labels = np.asarray(sample["input_ids"]), np.asarray(sample["labels"])
    im_start, im_end = (IM_START_ID, IM_END_ID) if special is None else (special.im_start, special.im_end)
    sup = labels != IGNORE_INDEX
    starts = np.flatnonzero(sup & ~np.concatenate([[False], sup[:-1]]))
    spans: list[tuple[int, int]] = []
    for s in starts.tolist():
        if most is not None and len(spans) >= most:
            break
        if spans and not (ids[spans[-1][0]:s] == im_start).any():
            continue  # a gap inside one answer (e.g. an unsupervised token): same turn
        ends = np.flatnonzero(ids[s:] == im_end)
        spans.append((s, s + int(ends[0]) if len(ends) else len(ids)))
    return spans


def first_answer(sample: dict, special=None) -> tuple[int, int] | None:
    """(start, end) token span of the first supervised answer (answer_spans' first), or None."""
    spans = answer_spans(sample, special, most=1)
    return spans[0] if spans else None
