"""`vlm_category` scorer: a local Qwen2-VL / Qwen2.5-VL checkpoint tags each sample into the taxonomy
by the log-probability of each category name (no free generation).

Row per candidate: the sample up to the end of its first answer (vision included), then a user turn
asking which category describes the request (the categories listed with their descriptions) and the
candidate name as the assistant's answer. Coarse first (one row per coarse category), then the fine
categories of the winning coarse one. Probabilities: softmax of the names' summed log-probabilities.
Cost: a batch of samples is read once (vision included, candidates.encode_batches); the coarse
question and all coarse names of every sample continue from the padded keys/values in one call
(Continuations.add_batch with the question as head, the names as a prefix tree), then the fine ones:
three forward calls per batch (more only when the rows outgrow the token budget), however many
samples or categories.
Equal to scoring each `rows_for` row on its own (tested ≤ 1e-4). Use the zero-shot `category` scorer for
bulk tagging and this one where its labels need a second opinion.

Columns (as `category`): vlm_category.coarse, vlm_category.fine (strings), vlm_category.confidence
(P(coarse) * P(fine | coarse)), vlm_category.coarse_confidence (P(coarse)).
"""
from __future__ import annotations

import numpy as np

from .batching import HostBatch
from .candidates import CandidateScorer, extend, first_answer, truncate
from .taxonomy import Taxonomy, load_taxonomy

COLUMNS = ["vlm_category.coarse", "vlm_category.fine", "vlm_category.confidence", "vlm_category.coarse_confidence"]
ASK = ("Which category best describes the request above? The categories are:\n{options}\n"
       "Answer with the category name only.")


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


class VLMCategoryScorer(CandidateScorer):
    name = "vlm_category"

    def __init__(self, model_path: str, taxonomy: str | Taxonomy | None = None, **kw):
        super().__init__(model_path, **kw)
        self.taxonomy = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(taxonomy)

    def columns(self) -> list[str]:
        return list(COLUMNS)

    def question_ids(self, tok, names_descs: list[tuple[str, str]]) -> list[int]:
        options = "\n".join(f"- {n}: {d}" for n, d in names_descs)
        text = f"\n<|im_start|>user\n{ASK.format(options=options)}<|im_end|>\n<|im_start|>assistant\n"
        return tok.encode(text)

    def rows_for(self, context: dict, tok, names_descs: list[tuple[str, str]], preset, special=None) -> list[dict]:
        """One row per candidate name; `special`: the tokenizer's SpecialIds (None = Qwen2/Qwen3's)."""
        from processors.presets import IM_END_ID

        im_end = IM_END_ID if special is None else special.im_end
        q = self.question_ids(tok, names_descs)
        rows = []
        for name, _ in names_descs:
            cand = tok.encode(name) + [im_end]
            ids = q + cand
            rows.append(extend(context, ids, preset, supervised=[False] * len(q) + [True] * len(cand),
                               special=special))
        return rows

    def score(self, batch: HostBatch) -> dict[str, np.ndarray]:
        """Each sample is read once (vision included) up to the end of its first answer; the coarse
        and the fine question continue from its keys/values, and every candidate name from theirs."""
        import torch

        tok, sp = self._tok(batch), self._ids(batch)
        n = len(batch)
        out = {"vlm_category.coarse": np.full(n, None, dtype=object), "vlm_category.fine": np.full(n, None, dtype=object),
               "vlm_category.confidence": np.full(n, np.nan), "vlm_category.coarse_confidence": np.full(n, np.nan)}
        contexts = []
        for s in batch.samples:
            span = first_answer(s, sp)
            end = span[1] + 1 if span else len(s["input_ids"])  # through the answer's <|im_end|>
            contexts.append(truncate(s, end, sp))
        coarse = [(c.name, c.description) for c in self.taxonomy.coarse]
        coarse_q = self.question_ids(tok, coarse)
        names = lambda nd: [tok.encode(name) + [sp.im_end] for name, _ in nd]  # noqa: E731
        coarse_names, fine_q = names(coarse), {}
        with torch.inference_mode():
            for group, pre in self.prefix_batches(contexts, batch):
                # the whole batch at once: one call reads the coarse question after every sample and
                # all their candidate names (Continuations.add_batch with heads); one the fine ones
                asked = self.continuations(batch)
                rows = asked.add_batch(pre, [coarse_names] * len(group), heads=[coarse_q] * len(group))
                total, _ = asked.sums()
                fine_sets = []
                for j, i in enumerate(group):
                    p = _softmax(total[rows[j]])
                    b = int(p.argmax())
                    out["vlm_category.coarse"][i], out["vlm_category.coarse_confidence"][i] = coarse[b][0], float(p[b])
                    fine_sets.append([(f.name, f.description) for f in self.taxonomy.coarse[b].fine])
                asked = self.continuations(batch)
                for f in fine_sets:  # one tokenisation per fine list, however many samples ask it
                    if tuple(f) not in fine_q:
                        fine_q[tuple(f)] = (self.question_ids(tok, f), names(f))
                rows = asked.add_batch(pre, [fine_q[tuple(f)][1] for f in fine_sets],
                                       heads=[fine_q[tuple(f)][0] for f in fine_sets])
                total, _ = asked.sums()
                for j, i in enumerate(group):
                    p = _softmax(total[rows[j]])
                    b = int(p.argmax())
                    out["vlm_category.fine"][i] = fine_sets[j][b][0]
                    out["vlm_category.confidence"][i] = float(p[b]) * out["vlm_category.coarse_confidence"][i]
        return out
