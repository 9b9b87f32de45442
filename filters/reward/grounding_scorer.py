"""`grounding` scorer: does the checkpoint prefer the sample's box over nearby wrong boxes?

For a sample whose first answer holds a box in the shard's grounding format (Qwen2-VL
<|box_start|>(x1,y1),(x2,y2)<|box_end|>, Qwen2.5-VL "bbox_2d": [x1, y1, x2, y2], Qwen-VL <box>), the
answer is scored as written and with its first box replaced by each of PERTURBATIONS (shifted by half
the box's width/height left/right/up/down, shrunk to half and grown to double about its centre;
clamped to the image, skipped when clamping gives the original box back). Every other token of the
answer is unchanged, so the difference of summed log-probabilities is the model's preference for the
given coordinates.

Columns
  grounding.box_margin  summed log-prob of the answer as given minus the best perturbed one (nats);
                        > 0 the model prefers the given box; NaN without a box
  grounding.box_rank    share of the perturbed answers scored below the given one (1.0 = all)

Cannot catch: a box that is wrong by less than the perturbation, a wrong label with a right box, a
model that is itself poor at grounding (the signal is only as good as the checkpoint); only the first
box of the first answer is tested.
"""
from __future__ import annotations

import re

import numpy as np

from .batching import HostBatch
from .candidates import CandidateScorer, first_answer, truncate

COLUMNS = ["grounding.box_margin", "grounding.box_rank"]
# (dx, dy) in box widths/heights, then a scale about the centre
PERTURBATIONS = ((-0.5, 0, 1.0), (0.5, 0, 1.0), (0, -0.5, 1.0), (0, 0.5, 1.0), (0, 0, 0.5), (0, 0, 2.0))
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
BOX_PATTERNS = {
    "qwen2.5-vl": re.compile(r'"bbox_2d"\s*:\s*\[' + ",".join([_NUM] * 4) + r"\]"),
    "qwen2-vl": re.compile(r"<\|box_start\|>\(" + _NUM + "," + _NUM + r"\),\(" + _NUM + "," + _NUM + r"\)<\|box_end\|>"),
    "qwen-vl": re.compile(r"<box>\(" + _NUM + "," + _NUM + r"\),\(" + _NUM + "," + _NUM + r"\)</box>"),
}
BOX_PATTERNS["qwen3-vl"] = BOX_PATTERNS["qwen2.5-vl"]  # the same JSON, relative 0-1000


def box_limits(fmt: str, image_grid_thw) -> tuple[int, int] | None:
    """(max x, max y) a coordinate of `fmt` may take: 1000 (qwen2-vl, qwen3-vl), 999 (qwen-vl), the first
    image's resized width/height - 1 (qwen2.5-vl: grid * patch 14)."""
    if fmt in ("qwen2-vl", "qwen3-vl"):
        return 1000, 1000
    if fmt == "qwen-vl":
        return 999, 999
    g = np.asarray(image_grid_thw).reshape(-1, 3)
    if not len(g):
        return None
    return int(g[0, 2]) * 14 - 1, int(g[0, 1]) * 14 - 1


def perturbed_answers(text: str, fmt: str, limits: tuple[int, int]) -> list[str]:
    """`text` with its first box replaced by each distinct perturbation (empty when there is no box)."""
    m = BOX_PATTERNS[fmt].search(text)
    if not m:
        return []
    x1, y1, x2, y2 = (float(v) for v in m.groups())
    w, h, cx, cy = x2 - x1, y2 - y1, (x1 + x2) / 2, (y1 + y2) / 2
    mx, my = limits
    out, seen = [], {(round(x1), round(y1), round(x2), round(y2))}
    for dx, dy, sc in PERTURBATIONS:
        nx, ny = cx + dx * w, cy + dy * h
        box = (nx - sc * w / 2, ny - sc * h / 2, nx + sc * w / 2, ny + sc * h / 2)
        box = tuple(int(min(max(round(v), 0), lim)) for v, lim in zip(box, (mx, my, mx, my)))
        if box in seen:
            continue
        seen.add(box)
        new = m.group(0)
        # replace the four numbers inside the matched markup, right to left so offsets stay valid
        for k in range(4, 0, -1):
            a, b = m.start(k) - m.start(0), m.end(k) - m.start(0)
            new = new[:a] + str(box[k - 1]) + new[b:]
        out.append(text[:m.start()] + new + text[m.end():])
    return out


class GroundingScorer(CandidateScorer):
    name = "grounding"

    def columns(self) -> list[str]:
        return list(COLUMNS)

    def score(self, batch: HostBatch) -> dict[str, np.ndarray]:
        """The samples with a box are read once, batched, up to their first answer (vision included); the
        given and the perturbed answers of all of them continue from the padded keys/values together
        (candidates.Continuations.add_batch)."""
        import torch

        tok, sp = self._tok(batch), self._ids(batch)
        fmt = batch.preset.grounding
        n = len(batch)
        margin, rank = np.full(n, np.nan), np.full(n, np.nan)
        prefixes, answers, owner = [], [], []
        for i, s in enumerate(batch.samples):
            span = first_answer(s, sp)
            limits = box_limits(fmt, s["image_grid_thw"])
            if span is None or limits is None or fmt not in BOX_PATTERNS:
                continue
            text = tok.decode(np.asarray(s["input_ids"])[span[0]:span[1]].tolist())
            alts = perturbed_answers(text, fmt, limits)
            if not alts:
                continue
            prefixes.append(truncate(s, span[0], sp))
            # the given answer first, re-tokenised like the others
            answers.append([tok.encode(t) + [sp.im_end] for t in [text, *alts]])
            owner.append(i)
        with torch.inference_mode():
            for group, pre in self.prefix_batches(prefixes, batch):
                # every answer of every sample of the batch in one continuation pass (budget permitting)
                scored = self.continuations(batch)
                rows = scored.add_batch(pre, [answers[j] for j in group])
                total, _ = scored.sums()
                for j, r in zip(group, rows):
                    t = total[r]
                    margin[owner[j]] = t[0] - t[1:].max()
                    rank[owner[j]] = float((t[1:] < t[0]).mean())
        return {"grounding.box_margin": margin, "grounding.box_rank": rank}
