"""Boxes of a sample in original-image pixels, per image, for the box filter rules.

The image a message's boxes refer to follows encode_sample's rule: the message's own first image,
else the latest image before it. Coordinates are decoded from the source format (the job's
`grounding_format`, else the preset's own format); for qwen2.5-vl (absolute pixels on the resized
image) the resized size is the encoder's: the job's pixel band and the image's own overrides
(min/max_pixels, or resized_height/width).
"""
from __future__ import annotations

from processors.presets import Preset
from processors.sample import ImagePart, Sample


def boxes_per_image(sample: Sample, fmt: str, image_sizes: list[tuple[int, int]], preset: Preset,
                    min_pixels: int | None = None, max_pixels: int | None = None) -> list[list[tuple]]:
    from processors.grounding import Box, parse_grounding
    from processors.image import image_target_size
    from processors.resized_size import image_size_options

    per: list[list[tuple]] = [[] for _ in sample.images]
    latest = None
    for msg in sample.messages:
        own = next((p.index for p in msg.parts if isinstance(p, ImagePart)), None)
        target = own if own is not None else latest
        for p in msg.parts:
            if isinstance(p, ImagePart):
                latest = p.index
        if target is None or target >= len(image_sizes):
            continue
        h, w = image_sizes[target]
        resized = None
        if fmt == "qwen2.5-vl" and preset.fixed_size is None:
            size_kw = {"min_pixels": min_pixels or None, "max_pixels": max_pixels or None}
            size_kw.update(image_size_options(sample.images[target].options))
            resized = image_target_size(h, w, preset, **size_kw)
        for span in parse_grounding(msg.text, fmt, original_size=(h, w), resized_size=resized):
            per[target].extend((o.x1, o.y1, o.x2, o.y2) for o in span.objects if isinstance(o, Box))
    return per
