"""Video rules over probe facts (duration, average fps, frame count) — no frame decode."""
from __future__ import annotations

from processors.sample import Sample

from .base import FilterContext, Threshold, info_get, media_facts


def video_values(sample: Sample, ctx: FilterContext, key: str) -> list[float]:
    values = []
    for i, info in enumerate(media_facts(sample, sample.videos, ctx.video_infos, "video", "video_infos")):
        v = info_get(info, key)
        if v is None:
            raise ValueError(f"sample {sample.id}: video {i} info has no {key!r}")
        values.append(float(v))
    return values


# config key -> (info field, bound, words for the reason)
VIDEO_RULES = {
    "video_min_duration": ("duration", "min", "video duration (s)"),
    "video_max_duration": ("duration", "max", "video duration (s)"),
    "video_min_fps": ("avg_fps", "min", "video average fps"),
    "video_max_fps": ("avg_fps", "max", "video average fps"),
    "video_min_frames": ("num_frames", "min", "video frame count"),
    "video_max_frames": ("num_frames", "max", "video frame count"),
}


def max_ratio(limit: float) -> Threshold:
    # Runs first (cost 0): smart_resize raises on ratio > 200, and this drops before any frame is decoded.
    def ratios(s: Sample, c: FilterContext) -> list[float]:
        sizes = zip(video_values(s, c, "width"), video_values(s, c, "height"))
        return [max(w, h) / min(w, h) for w, h in sizes if min(w, h) > 0]

    return Threshold("video_max_ratio", "media", ratios, limit, "max", "video aspect ratio", "video", cost=0)


def video_rule(name: str, limit: float) -> Threshold:
    key, bound, what = VIDEO_RULES[name]
    return Threshold(name, "media", lambda s, c: video_values(s, c, key), limit, bound, what, "video", cost=1)
