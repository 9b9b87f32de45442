"""Conversation structure, placeholder/media agreement, and the encoded-phase length rules."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from processors.presets import IGNORE_INDEX
from processors.sample import ImagePart, Sample, VideoPart

from .base import FilterContext, Verdict

ROLES = ("system", "user", "assistant")
# Placeholder text left in a TextPart means the parser missed a media slot (or the text forges one).
STRAY_PLACEHOLDER = re.compile(r"<image>|<video>|<\|(?:image_pad|video_pad|vision_start|vision_end)\|>")


def structure_problem(sample: Sample) -> tuple[int, str] | None:
    """(message index, what is wrong) for the first structural fault, or None.

    Expected: an optional system message first, then user/assistant alternating starting with
    user, ending with assistant, and every assistant turn has text.
    """
    msgs = sample.messages
    if not msgs:
        return 0, "no messages"
    for i, m in enumerate(msgs):
        if m.role not in ROLES:
            return i, f"unknown role {m.role!r}"
        if m.role == "system" and i > 0:
            return i, "system message after the first position"
    turns = [(i, m) for i, m in enumerate(msgs) if m.role != "system"]
    if not turns:
        return 0, "only a system message"
    for k, (i, m) in enumerate(turns):
        expected = "user" if k % 2 == 0 else "assistant"
        if m.role != expected:
            return i, f"expected {'a user' if expected == 'user' else 'an assistant'} turn, got {m.role}"
        if m.role == "assistant" and not m.text.strip():
            return i, "empty assistant turn"
    if turns[-1][1].role != "assistant":
        return turns[-1][0], "last turn is not an assistant turn"
    return None


@dataclass(frozen=True)
class ConversationStructure:
    """Value: the offending message's index when dropped; the number of non-system turns when kept."""

    name: str = "conversation_structure"
    phase: str = "raw"
    cost: int = 0

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict:
        problem = structure_problem(sample)
        if problem:
            return Verdict(False, self.name, float(problem[0]), f"message {problem[0]}: {problem[1]}")
        return Verdict(True, self.name, float(sum(m.role != "system" for m in sample.messages)))


def placeholder_problem(sample: Sample, preset) -> tuple[float, str] | None:
    """(value, what is wrong) when media parts and Sample.images/videos disagree, or None."""
    for kind, cls, refs in (("image", ImagePart, sample.images), ("video", VideoPart, sample.videos)):
        indices = [p.index for m in sample.messages for p in m.parts if isinstance(p, cls)]
        if len(indices) != len(refs):
            return float(len(indices) - len(refs)), f"{len(indices)} {kind} placeholders for {len(refs)} {kind}s"
        if indices != list(range(len(refs))):
            return 0.0, f"{kind} placeholders refer to {indices}, expected 0..{len(refs) - 1} in order"
    for i, m in enumerate(sample.messages):
        hit = STRAY_PLACEHOLDER.search(m.text)
        if hit:
            return 0.0, f"message {i} has placeholder text {hit.group(0)!r} outside a media part"
    if sample.videos and not preset.supports_video:
        return float(len(sample.videos)), f"preset {preset.name} does not take video"
    return None


@dataclass(frozen=True)
class MediaPlaceholders:
    """Value: placeholders minus media items for a count mismatch (0 for other faults; None when kept)."""

    name: str = "media_placeholders"
    phase: str = "raw"
    cost: int = 0

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict:
        problem = placeholder_problem(sample, ctx.preset)
        if problem:
            return Verdict(False, self.name, problem[0], problem[1])
        return Verdict(True, self.name, None)


def _encoded(sample: Sample, ctx: FilterContext):
    if ctx.encoded is None:
        raise ValueError(f"sample {sample.id}: encoded-phase rules need ctx.encoded")
    return ctx.encoded


@dataclass(frozen=True)
class MaxSeqLength:
    limit: int
    name: str = "max_seq_length"
    phase: str = "encoded"
    cost: int = 0

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict:
        n = int(len(_encoded(sample, ctx).input_ids))
        if n > self.limit:
            return Verdict(False, self.name, float(n), f"{n} tokens above max_seq_length {self.limit}")
        return Verdict(True, self.name, float(n))


@dataclass(frozen=True)
class MinSupervisedTokens:
    """A sample with (almost) no supervised positions teaches nothing and wastes a packing slot."""

    limit: int
    name: str = "min_supervised_tokens"
    phase: str = "encoded"
    cost: int = 0

    def __call__(self, sample: Sample, ctx: FilterContext) -> Verdict:
        n = int(np.count_nonzero(np.asarray(_encoded(sample, ctx).labels) != IGNORE_INDEX))
        if n < self.limit:
            return Verdict(False, self.name, float(n), f"{n} supervised tokens, below {self.limit}")
        return Verdict(True, self.name, float(n))
