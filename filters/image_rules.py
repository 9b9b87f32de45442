"""Image rules measured from header sizes (no pixel decode): sides, pixel count, aspect ratio, and
the visual tokens an image will cost under the preset's smart_resize."""
from __future__ import annotations

from processors.sample import Sample
from processors.smart_resize import smart_resize

from .base import FilterContext, Threshold, media_facts


def image_sizes(sample: Sample, ctx: FilterContext) -> list[tuple[int, int]]:
    """ctx.image_sizes checked against the sample: a media-phase rule without sizes is a pipeline bug."""
    return [(int(h), int(w)) for h, w in media_facts(sample, sample.images, ctx.image_sizes, "image", "image_sizes")]


def image_tokens(sample: Sample, ctx: FilterContext) -> list[int]:
    """Visual tokens per image under ctx.preset (Preset.visual_tokens after smart_resize), honouring the
    per-image overrides a record may carry (min_pixels, max_pixels), exactly as the encoder does."""
    preset = ctx.preset
    sizes = image_sizes(sample, ctx)
    if preset.image_tokens_fixed is not None:
        return [preset.image_tokens_fixed] * len(sizes)
    tokens = []
    for (h, w), ref in zip(sizes, sample.images):
        opts = ref.options or {}
        min_px = int(opts.get("min_pixels", preset.min_pixels))
        max_px = int(opts.get("max_pixels", preset.max_pixels))
        rh, rw = smart_resize(h, w, factor=preset.factor, min_pixels=min_px, max_pixels=max_px)
        tokens.append(preset.visual_tokens(preset.grid_thw(rh, rw)))
    return tokens


def min_side(limit: float) -> Threshold:
    return Threshold("image_min_side", "media", lambda s, c: [min(hw) for hw in image_sizes(s, c)],
                     limit, "min", "image shorter side (px)", "image", cost=1)


def max_side(limit: float) -> Threshold:
    return Threshold("image_max_side", "media", lambda s, c: [max(hw) for hw in image_sizes(s, c)],
                     limit, "max", "image longer side (px)", "image", cost=1)


def min_pixels(limit: float) -> Threshold:
    return Threshold("image_min_pixels", "media", lambda s, c: [h * w for h, w in image_sizes(s, c)],
                     limit, "min", "image pixels", "image", cost=1)


def max_pixels(limit: float) -> Threshold:
    return Threshold("image_max_pixels", "media", lambda s, c: [h * w for h, w in image_sizes(s, c)],
                     limit, "max", "image pixels", "image", cost=1)


def max_ratio(limit: float) -> Threshold:
    # Runs before the token rule (cost 0): smart_resize raises on ratio > 200, this drops cleanly.
    return Threshold("image_max_ratio", "media",
                     lambda s, c: [max(h, w) / min(h, w) for h, w in image_sizes(s, c)],
                     limit, "max", "image aspect ratio", "image", cost=0)


def max_visual_tokens(limit: float) -> Threshold:
    return Threshold("max_visual_tokens", "media", lambda s, c: [sum(image_tokens(s, c))] if s.images else [],
                     limit, "max", "image visual tokens (sum)", "sample", cost=2)
