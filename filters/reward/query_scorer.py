"""`query` scorer: is the question about this image/video, and is it well formed?

Scores the tokens of the sample's last user turn before its first answer (the question; vision
blocks excluded) with a local checkpoint, once with the sample's images/videos and once with every
vision block removed (plain text positions), as `vlm.visual_gain` does for the answer.

Columns
  query.logprob           mean log-prob of the question's tokens given the image/video: very low for
                          garbled, truncated or machine-mangled questions
  query.visual_relevance  query.logprob minus the same without vision: > 0 when seeing the image makes
                          the question more expected, i.e. the question is about what is shown; near 0
                          for generic questions ("Describe the image.") and for questions about
                          something else; NaN for samples without images/videos

Cannot catch: whether the question is *answerable* from the image in the strict sense (a question
about a detail that is not visible can still be likely), nor a right question with a wrong answer
(use verify / vlm.mean_logprob). Like every likelihood signal it favours the checkpoint's own style.
"""
from __future__ import annotations

import re

import numpy as np

from processors.presets import IM_END_ID, IM_START_ID, VISION_END_ID, VISION_START_ID

from .batching import HostBatch, has_vision
from .candidates import CandidateScorer, first_answer, relabel, truncate

COLUMNS = ["query.logprob", "query.visual_relevance"]
TIMESTAMP = re.compile(r"\s?<\d+(?:\.\d+)? seconds>")   # Qwen3-VL: written before each temporal group


def timestamp_mask(ids: np.ndarray, tok, vision_start: int = VISION_START_ID) -> np.ndarray:
    """Positions of the `<t seconds>` text right before a vision block (Qwen3-VL videos; in the 4.57
    layout it sits outside every vision block, in the user's text run): the fewest tokens before each
    <|vision_start|> that decode to one timestamp."""
    out = np.zeros(len(ids), bool)
    for v in np.flatnonzero(ids == vision_start):
        for k in range(1, min(16, int(v)) + 1):
            if TIMESTAMP.fullmatch(tok.decode(ids[v - k:v].tolist())):
                out[v - k:v] = True
                break
    return out


def question_mask(ids: np.ndarray, user_id, tok=None, special=None) -> np.ndarray | None:
    """Positions of the last user turn's content (after '<|im_start|>user\\n', before <|im_end|>),
    vision blocks excluded, and with `tok` the video timestamps text (`timestamp_mask`); None when
    there is no user turn. `user_id`: the id of Qwen's one-token 'user' (an int), or the ids of 'user'
    in the tokenizer in use (a list); one newline token follows. `special`: the tokenizer's SpecialIds
    (None = Qwen2/Qwen3's)."""
    head = ([int(user_id)] if np.ndim(user_id) == 0 else [int(u) for u in user_id]) + [None]  # None: the newline
    im_start, im_end, v_start, v_end = ((IM_START_ID, IM_END_ID, VISION_START_ID, VISION_END_ID) if special is None
                                        else (special.im_start, special.im_end, special.vision_start, special.vision_end))
    k = len(head)
    starts = [i for i in np.flatnonzero(ids == im_start) if i + k < len(ids)
              and all(h is None or ids[i + 1 + j] == h for j, h in enumerate(head))]
    if not starts:
        return None
    a = int(starts[-1]) + 1 + k  # <|im_start|> user \n
    ends = np.flatnonzero(ids[a:] == im_end)
    b = a + int(ends[0]) if len(ends) else len(ids)
    depth = np.cumsum((ids == v_start).astype(np.int64) - np.r_[0, (ids[:-1] == v_end)])
    mask = np.zeros(len(ids), bool)
    mask[a:b] = True
    mask &= depth == 0
    mask &= ids != v_end
    if tok is not None:
        mask &= ~timestamp_mask(ids, tok, v_start)
    return mask if mask.any() else None


class QueryScorer(CandidateScorer):
    name = "query"

    def columns(self) -> list[str]:
        return list(COLUMNS)

    def score(self, batch: HostBatch) -> dict[str, np.ndarray]:
        tok, sp = self._tok(batch), self._ids(batch)
        user_head = tok.encode("user")  # one token in Qwen's vocabularies, more in a byte-level one
        n = len(batch)
        lp, rel = np.full(n, np.nan), np.full(n, np.nan)
        rows, owner = [], []
        for i, s in enumerate(batch.samples):
            span = first_answer(s, sp)
            prompt = truncate(s, span[0] if span else len(s["input_ids"]), sp)
            mask = question_mask(np.asarray(prompt["input_ids"]), user_head,
                                 tok if batch.preset.video_timestamps else None, sp)
            if mask is None:
                continue
            rows.append(relabel(prompt, mask))
            owner.append(i)
        if not rows:
            return {"query.logprob": lp, "query.visual_relevance": rel}
        owner = np.array(owner)
        lp[owner], _ = self.logprobs(rows, batch)
        vis = np.array([has_vision(r, sp.vision_start) for r in rows])
        if vis.any():
            text_lp, _ = self.logprobs([r for r, v in zip(rows, vis) if v], batch, with_vision=False)
            rel[owner[vis]] = lp[owner[vis]] - text_lp
        return {"query.logprob": lp, "query.visual_relevance": rel}
