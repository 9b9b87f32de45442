"""The filter contract: a filter is a tiny callable that looks at a sample and returns a Verdict.

A Verdict always names its rule and carries the value it measured, kept or not, so the ledger can
say *why* a sample was dropped (rule + value) and stats can plot the distribution of every rule.

Filters run in three phases, each with more facts and a higher price:
  raw      the Sample alone (text, roles, placeholders)
  media    + media facts from headers/probes (image sizes, video infos, boxes), no pixel decode
  encoded  + the EncodedSample (sequence length, supervised tokens)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from processors.presets import DEFAULT_PRESET, Preset
from processors.sample import EncodedSample, Sample

PHASES = ("raw", "media", "encoded")

Box = tuple[float, float, float, float]  # (x1, y1, x2, y2) in original image pixels


@dataclass(frozen=True)
class Verdict:
    keep: bool
    rule: str
    value: float | None
    reason: str = ""


@dataclass
class FilterContext:
    """Facts a filter may need beyond the Sample; the pipeline fills what the phase has.

    `image_sizes`: (height, width) per Sample.images entry, from headers (EXIF-oriented).
    `video_infos`: per Sample.videos entry, a dict or an object (e.g. processors.video.VideoInfo)
    with duration, avg_fps, num_frames, width, height.
    `encode_options`: the job's EncodeOptions, for the token rule's sample plan.
    `boxes`: per image, the list of boxes in original pixels; either the list itself or a callable
    `(sample) -> list[list[Box]]` (the pipeline binds the grounding parser here, so samples
    without a box rule never pay for parsing).
    """

    preset: Preset = DEFAULT_PRESET
    image_sizes: list[tuple[int, int]] | None = None
    video_infos: list[Any] | None = None
    encoded: EncodedSample | None = None
    boxes: list[list[Box]] | Callable[[Sample], list[list[Box]]] | None = None
    # the job's processors.encode.EncodeOptions (image band, limits): the sample plan merges them
    # with each item's options exactly as the encoder does; None plans with the preset's band alone
    encode_options: Any = None

    def get_boxes(self, sample: Sample) -> list[list[Box]] | None:
        if callable(self.boxes):
            return self.boxes(sample)
        return self.boxes


@runtime_checkable
class Filter(Protocol):
    name: str  # the ledger's `rule`
    phase: str  # one of PHASES
    cost: int  # lower runs first inside a phase

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict: ...


def media_facts(sample: Sample, items: list, facts: list | None, what: str, field_name: str) -> list:
    """`facts` (one per item of the sample) checked against the sample: a media-phase rule run without
    them is a pipeline bug, reported as such rather than as a verdict."""
    if not items:
        return []
    if facts is None or len(facts) != len(items):
        got = None if facts is None else len(facts)
        raise ValueError(f"sample {sample.id}: {what} rules need ctx.{field_name} for its {len(items)} {what}s, got {got}")
    return list(facts)


def info_get(info: Any, key: str) -> Any:
    """Read a field from a video info given as a dict or as an object."""
    if isinstance(info, dict):
        return info.get(key)
    return getattr(info, key, None)


def run_filters(filters: Sequence[Filter], sample: Sample, ctx: FilterContext, phase: str) -> Verdict | None:
    """Run the filters of `phase`, cheapest first (stable), and return the first failing Verdict, or None."""
    if phase not in PHASES:
        raise ValueError(f"unknown filter phase {phase!r}; choose one of {PHASES}")
    selected = [f for f in filters if f.phase == phase]
    for f in sorted(selected, key=lambda f: getattr(f, "cost", 0)):
        verdict = f(sample, ctx)
        if not verdict.keep:
            return verdict
    return None


def evaluate_filters(filters: Sequence[Filter], sample: Sample, ctx: FilterContext, phase: str) -> list[Verdict]:
    """Every verdict of `phase` (kept or not), for stats that want each rule's measured value."""
    return [f(sample, ctx) for f in sorted((f for f in filters if f.phase == phase), key=lambda f: getattr(f, "cost", 0))]


def build_filters(config: dict | None = None, *, defaults: bool = True) -> list[Filter]:
    """See filters.registry.build_filters (kept here so `filters.base` is the one import a caller needs)."""
    from .registry import build_filters as _build

    return _build(config, defaults=defaults)


@dataclass(frozen=True)
class Threshold:
    """A rule that measures one number per item (image, video, turn, ...) and bounds the worst one.

    `measure(sample, ctx)` returns the per-item values; `bound="min"` drops when the smallest is
    below `limit`, `bound="max"` when the largest is above it. No items: kept, value None.
    """

    name: str
    phase: str
    measure: Callable[[Sample, FilterContext], Sequence[float]]
    limit: float
    bound: str  # "min" | "max"
    what: str  # e.g. "image min side (px)" — used in the reason
    item: str = "item"  # e.g. "image", "video", "turn"
    cost: int = 1

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict:
        values = list(self.measure(sample, ctx))
        if not values:
            return Verdict(True, self.name, None, f"no {self.item} to measure")
        pick = min if self.bound == "min" else max
        worst = pick(range(len(values)), key=lambda i: values[i])
        value = float(values[worst])
        if self.bound == "min" and value < self.limit:
            return Verdict(False, self.name, value, f"{self.what} {value:g} below {self.limit:g} ({self.item} {worst})")
        if self.bound == "max" and value > self.limit:
            return Verdict(False, self.name, value, f"{self.what} {value:g} above {self.limit:g} ({self.item} {worst})")
        return Verdict(True, self.name, value)
