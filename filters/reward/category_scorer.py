"""`category` scorer: zero-shot tagging of each sample into a taxonomy (filters/reward/taxonomy.py)
with the bundled sentence model, offline, on CPU or GPU.

The sample's text is its first user turn plus the first `ANSWER_CHARS` characters of the answer that
follows (recovered from the shard's token ids by the `text` scorer's code, with the ids of the
tokenizer the shards were prepared with: `tokenizer`, as for `text`). It is embedded once and
compared with every fine category's description and examples (cosine; the best prototype counts).
Media the sample holds (image, video, none) and whether its text is mostly non-Latin script gate
the fine categories that `require` them and add their `boost`.

Columns
  category.coarse             label (string): parent of the best fine category
  category.fine               label (string): the best fine category
  category.confidence         softmax probability of that fine category over the eligible ones
                              (similarities / TEMPERATURE); near 1/n_fine when nothing stands out
  category.coarse_confidence  the summed probability of its coarse category's fine categories
"""
from __future__ import annotations

import re

import numpy as np

from .batching import HostBatch
from .taxonomy import Taxonomy, load_taxonomy
from .text_scorer import TextScorer, conversation_turns, qa_pairs, shard_vocab

COLUMNS = ["category.coarse", "category.fine", "category.confidence", "category.coarse_confidence"]
LABEL_COLUMNS = ("category.coarse", "category.fine")
ANSWER_CHARS = 200
TEMPERATURE = 0.05
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


def non_latin_share(text: str) -> float:
    """Share of the letters in `text` that are outside Latin script (Basic + Latin-1 + Extended-A/B)."""
    letters = _LETTER.findall(text)
    if not letters:
        return 0.0
    return sum(ord(ch) > 0x024F for ch in letters) / len(letters)


def sample_features(has_image: bool, has_video: bool, text: str) -> set[str]:
    feats = set()
    if has_image:
        feats.add("image")
    if has_video:
        feats.add("video")
    if not has_image and not has_video:
        feats.add("text_only")
    if non_latin_share(text) > 0.5:
        feats.add("non_latin")
    return feats


def sample_text(sample: dict, tokenizer, special=None, timestamps: bool = False) -> str:
    """First user turn + the start of its answer, from the shard's token ids (vision blocks dropped;
    `special`, `timestamps`: as text_scorer.conversation_turns)."""
    turns = conversation_turns(sample["input_ids"], tokenizer, special, timestamps)
    pairs = qa_pairs(turns)
    if pairs:
        q, a = pairs[0]
        return f"{q}\n{a[:ANSWER_CHARS]}".strip()
    users = [t for r, t in turns if r == "user"]
    return (users[0] if users else " ".join(t for r, t in turns if r != "system")).strip()


class CategoryScorer:
    name = "category"

    def __init__(self, taxonomy: str | Taxonomy | None = None, model_path: str | None = None, tokenizer=None):
        self.taxonomy = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(taxonomy)
        self.text = TextScorer(model_path, tokenizer)  # owns the sentence model and its loading
        self.tokenizer = tokenizer

    def setup(self, device) -> None:
        self.text.setup(device)
        fines = self.taxonomy.fine
        protos = [(k, p) for k, f in enumerate(fines) for p in f.prototypes()]
        self._proto_owner = np.array([k for k, _ in protos], dtype=np.int64)
        self._proto_emb = self.text.embed([p for _, p in protos])
        self._requires = [set(f.requires) for f in fines]
        self._boost = np.array([f.boost for f in fines], dtype=np.float64)
        coarse = self.taxonomy.coarse_names
        self._coarse_of = np.array([coarse.index(f.coarse) for f in fines], dtype=np.int64)

    def columns(self) -> list[str]:
        return list(COLUMNS)

    def tag_texts(self, texts: list[str], features: list[set[str]]) -> dict[str, np.ndarray]:
        """The columns for samples given as text + media features (see `sample_features`)."""
        n, fines = len(texts), self.taxonomy.fine
        emb = self.text.embed([t if t else " " for t in texts])
        sims = emb @ self._proto_emb.T                                   # [n, prototypes]
        per_fine = np.full((n, len(fines)), -np.inf)
        for k in range(len(fines)):
            per_fine[:, k] = sims[:, self._proto_owner == k].max(1)
        eligible = np.array([[req <= feats for req in self._requires] for feats in features], dtype=bool)
        per_fine = np.where(eligible, per_fine + np.where([bool(r) for r in self._requires], self._boost, 0.0),
                            -np.inf)
        z = per_fine / TEMPERATURE
        z -= z.max(1, keepdims=True)
        prob = np.exp(z)
        prob /= prob.sum(1, keepdims=True)
        best = prob.argmax(1)
        coarse_prob = np.zeros((n, len(self.taxonomy.coarse)))
        np.add.at(coarse_prob.T, self._coarse_of, prob.T)
        rows = np.arange(n)
        fine_names = np.array([f.name for f in fines], dtype=object)
        return {
            "category.coarse": np.array([fines[b].coarse for b in best], dtype=object),
            "category.fine": fine_names[best],
            "category.confidence": prob[rows, best].astype(np.float64),
            "category.coarse_confidence": coarse_prob[rows, self._coarse_of[best]].astype(np.float64),
        }

    def texts(self, batch: HostBatch) -> tuple[list[str], list[set[str]]]:
        """Each sample's text and media features as the tagger sees them."""
        tok, sp = shard_vocab(self.tokenizer, batch.preset)
        ts = batch.preset.video_timestamps is not None
        texts, feats = [], []
        for s in batch.samples:
            ids = np.asarray(s["input_ids"])
            text = sample_text(s, tok, sp, ts)
            texts.append(text)
            feats.append(sample_features(bool((ids == sp.image_pad).any()), bool((ids == sp.video_pad).any()), text))
        return texts, feats

    def score(self, batch: HostBatch) -> dict[str, np.ndarray]:
        return self.tag_texts(*self.texts(batch))
