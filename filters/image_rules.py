"""Image rules measured from header sizes (no pixel decode): sides, pixel count, aspect ratio, and
the visual tokens an image will cost under the preset's smart_resize (or the size its record asks for)."""
from __future__ import annotations

from processors.plan import plan_image
from processors.sample import Sample

from .base import FilterContext, Threshold, media_facts


def image_sizes(sample: Sample, ctx: FilterContext) -> list[tuple[int, int]]:
    """ctx.image_sizes checked against the sample: a media-phase rule without sizes is a pipeline bug."""
    return [(int(h), int(w)) for h, w in media_facts(sample, sample.images, ctx.image_sizes, "image", "image_sizes")]


def image_tokens(sample: Sample, ctx: FilterContext) -> list[int]:
    """Visual tokens per image: the sample plan's (`processors.plan.plan_image` with ctx.preset, the job's
    encode options and the per-image options a record may carry), exactly as the encoder."""
    opts = ctx.encode_options if ctx.encode_options is not None else _PRESET_BAND_ONLY
    return [plan_image(h, w, ref, ctx.preset, opts).tokens for (h, w), ref in zip(image_sizes(sample, ctx), sample.images)]


class _PresetBandOnly:
    """Encode options that add nothing to the preset (a FilterContext without the job's options)."""

    min_pixels = max_pixels = max_image_pixels = None
    fast_images = False


_PRESET_BAND_ONLY = _PresetBandOnly()


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
