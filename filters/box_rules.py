"""Grounding box rules: boxes lie inside their image and have a real extent.

Boxes come from `ctx.boxes` (per image, (x1, y1, x2, y2) in original pixels), which the pipeline
fills from the grounding parser; box ends are exclusive, so x2 == width is inside.
"""
from __future__ import annotations

from dataclasses import dataclass

from processors.sample import Sample

from .base import FilterContext, Verdict


def box_overshoot(box, height: int, width: int) -> float:
    """How many pixels the box reaches outside a height x width image (0 when inside)."""
    x1, y1, x2, y2 = box
    return float(max(0.0, -x1, -y1, x2 - width, y2 - height))


def box_min_side(box) -> float:
    """The box's shorter side; <= 0 for an empty or inverted box."""
    x1, y1, x2, y2 = box
    return float(min(x2 - x1, y2 - y1))


@dataclass(frozen=True)
class BoxInImage:
    """Value: the largest overshoot in pixels over all boxes (0.0 when all are inside)."""

    tolerance: float = 0.0
    name: str = "box_in_image"
    phase: str = "media"
    cost: int = 2

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict:
        per_image = ctx.get_boxes(sample)
        if not per_image or not any(per_image):
            return Verdict(True, self.name, None, "no boxes")
        if ctx.image_sizes is None or len(ctx.image_sizes) < len(per_image):
            raise ValueError(f"sample {sample.id}: box_in_image needs ctx.image_sizes for {len(per_image)} images")
        worst, where = 0.0, ""
        for i, boxes in enumerate(per_image):
            h, w = ctx.image_sizes[i]
            for box in boxes:
                over = box_overshoot(box, h, w)
                if over > worst:
                    worst, where = over, f"box {tuple(box)} on {w}x{h} (WxH) image {i}"
        if worst > self.tolerance:
            return Verdict(False, self.name, worst, f"{where} reaches {worst:g} px outside (tolerance {self.tolerance:g})")
        return Verdict(True, self.name, worst)


@dataclass(frozen=True)
class BoxMinSide:
    """Value: the smallest box side over all boxes; drops empty, inverted or sliver boxes."""

    min_side: float = 1.0
    name: str = "box_min_side"
    phase: str = "media"
    cost: int = 1

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict:
        boxes = [(i, b) for i, bs in enumerate(ctx.get_boxes(sample) or []) for b in bs]
        if not boxes:
            return Verdict(True, self.name, None, "no boxes")
        i, box = min(boxes, key=lambda ib: box_min_side(ib[1]))
        side = box_min_side(box)
        if side < self.min_side:
            return Verdict(False, self.name, side, f"box {tuple(box)} on image {i} has side {side:g} px (min {self.min_side:g})")
        return Verdict(True, self.name, side)
