"""The per-sample stages of the prepare job, each turning failure into one ledger Outcome.

    read    RawRecord → Sample (processors.formats.parse_record); unreadable lines/records
    clean   text normalisation (processors.text.clean_sample); media checks: the reference stays
            under the media root, the file exists, its format is allowed, its header decodes;
            exact / near duplicates (decided in the index pass, see pipeline.dedup)
    filter  raw rules → media rules (header facts, boxes) → [encode] → encoded rules, max_length
    encode  processors.encode.encode_sample, then a placeholder/grid consistency guard
    write   serialisation into the shard

`prepare` runs everything up to (not including) dedup and encode; both the index pass and the
main pass call it, so the first occurrence a duplicate is compared with is a sample that itself
survived every cheaper stage. A stage says what it needs (`STAGE_RESOURCES`); the runner decides
where it runs.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from processors.presets import IMAGE_PAD_ID, VIDEO_PAD_ID, Preset, get_preset
from processors.sample import EncodedSample, Sample

from .config import JobConfig
from .ledger import Outcome
from .paths import MediaFormatError, resolve_media
from .sources import RawRecord, SourceFile

# Per-task resources declared to Ray (cpus per unit task); the encode stage's count is the job's
# `ray.num_cpus`, the index pass reads and hashes only.
STAGE_RESOURCES = {"index": "ray.index_num_cpus", "encode": "ray.num_cpus"}


def fallback_id(source: str, index: int, record=None) -> str:
    """The id of a record that could not be parsed: its own `id` when the raw record has one,
    else formats.sample_id's rule for a record without one."""
    from processors.formats import sample_id

    return sample_id(source, index, record if isinstance(record, dict) else None)


@dataclass
class Context:
    """What every sample of a job needs, built once per worker process."""

    cfg: JobConfig
    preset: Preset
    filters: list
    encode_options: Any
    tokenizer: Any
    image_formats: frozenset
    video_exts: frozenset


@functools.lru_cache(maxsize=2)
def context_for(cfg_json: str) -> Context:
    from filters.base import build_filters
    from processors.encode import EncodeOptions
    from processors.tokenizer import get_tokenizer

    cfg = JobConfig.from_dict(json.loads(cfg_json))
    # The job's image band is part of the preset every stage sees (ctx.preset.max_pixels is the job's),
    # and in its EncodeOptions, which the filters' token and box rules plan with (processors.plan
    # merges them with each item's options, as the encoder does).
    preset = get_preset(cfg.preset)
    band = {k: v for k, v in (("min_pixels", cfg.image.min_pixels), ("max_pixels", cfg.image.max_pixels)) if v}
    preset = preset.with_overrides(**band) if band else preset
    filters = build_filters(cfg.filters or {})
    tok = get_tokenizer(cfg.resolve_path(cfg.tokenizer) if cfg.tokenizer else None, preset=preset)
    return Context(cfg, preset, filters, EncodeOptions.from_dict(cfg.encode_options()), tok,
                   frozenset(f.lower() for f in cfg.image.formats), frozenset(f.lower() for f in cfg.video.formats))


@dataclass
class Prepared:
    """A sample that passed read, clean, media checks and the raw + media filters."""

    sample: Sample
    image_sizes: list[tuple[int, int]]
    video_infos: list[Any]
    media: list[Any] = field(default_factory=list)   # resolved path or bytes per image then video


# -- read / clean / filters --------------------------------------------------------------------

def prepare(raw: RawRecord, src: SourceFile, ctx: Context, new_id: str | None = None) -> Prepared | Outcome:
    from filters.base import FilterContext

    fid = fallback_id(raw.source, raw.index, raw.record)
    if raw.error is not None:
        return Outcome.error(fid, raw.source, raw.index, "read", raw.error_type or "read", raw.error)
    try:
        sample = raw.sample if raw.sample is not None else _parse(raw, src)
    except Exception as exc:  # a malformed record is that record's error, never the job's
        return Outcome.error(fid, raw.source, raw.index, "read", exc)
    if new_id is not None:
        sample.id = new_id
    sample.source, sample.record_index = raw.source, raw.index
    sid = sample.id

    try:
        from processors.text import clean_sample

        sample = clean_sample(sample, **(ctx.cfg.cleaning or {}))
    except Exception as exc:
        return Outcome.error(sid, raw.source, raw.index, "clean", exc)

    verdict = _run(ctx.filters, sample, FilterContext(preset=ctx.preset, encode_options=ctx.encode_options), "raw")
    if isinstance(verdict, Outcome) or verdict is not None:
        return _verdict_outcome(verdict, sample)

    try:
        prepared = check_media(sample, src, ctx)
    except Exception as exc:
        return Outcome.error(sid, raw.source, raw.index, "clean", exc)

    fctx = FilterContext(preset=ctx.preset, encode_options=ctx.encode_options, image_sizes=prepared.image_sizes,
                         video_infos=prepared.video_infos, boxes=_boxes_binder(ctx, prepared.image_sizes))
    verdict = _run(ctx.filters, sample, fctx, "media")
    if verdict is not None:
        return _verdict_outcome(verdict, sample)
    return prepared


def _parse(raw: RawRecord, src: SourceFile) -> Sample:
    from processors.formats import parse_record

    return parse_record(raw.record, source=raw.source, index=raw.index, fmt=src.format)


def _run(filters, sample, fctx, phase):
    """The first failing verdict of `phase`, None, or an error Outcome if a rule itself raised."""
    from filters.base import run_filters

    try:
        return run_filters(filters, sample, fctx, phase)
    except Exception as exc:
        return Outcome.error(sample.id, sample.source, sample.record_index, "filter", exc,
                             f"a {phase} filter raised on this sample: {type(exc).__name__}: {exc}")


def _verdict_outcome(verdict, sample: Sample) -> Outcome:
    if isinstance(verdict, Outcome):
        return verdict
    return Outcome.dropped(sample.id, sample.source, sample.record_index, "filter", verdict.rule, verdict.value,
                           verdict.reason)


def _boxes_binder(ctx: Context, image_sizes):
    """ctx.boxes for box rules: parsed lazily so samples without a box rule never pay for it."""
    fmt = ctx.cfg.grounding_format or ctx.preset.grounding

    def boxes(sample: Sample):
        from processors.plan import boxes_per_image, plan_image

        def resized(i: int):  # the encoder's sample plan: the size it re-grounds against
            h, w = image_sizes[i]
            return plan_image(h, w, sample.images[i], ctx.preset, ctx.encode_options).resized_size

        return boxes_per_image(sample, fmt, image_sizes, resized)

    return boxes


# -- media checks ------------------------------------------------------------------------------

def check_media(sample: Sample, src: SourceFile, ctx: Context) -> Prepared:
    """Resolve and header-check every image and video; raises the specific error of the first bad one."""
    from processors.image import DEFAULT_MAX_IMAGE_PIXELS, image_size_from_header, open_image

    # the decompression-bomb limit is a header fact: refuse here, before the filters and dedup
    # hashing, with the same limit encode would apply
    max_pixels = ctx.cfg.image.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS

    sizes, infos, media = [], [], []
    for i, ref in enumerate(sample.images):
        where = f"image {i} ({ref.path or 'bytes'})"
        if ref.data is not None:
            loc = ref.data
        elif ref.path:
            loc = resolve_media(ref.path, src.media_root)
        else:
            raise MediaFormatError(f"{where}: the reference has neither a path nor data")
        with open_image(loc, max_image_pixels=max_pixels) as im:   # one header read: format and size
            fmt = (im.format or "").lower()
            if fmt not in ctx.image_formats:
                raise MediaFormatError(f"{where}: format {fmt or 'unknown'!r} is not allowed "
                                       f"(image.formats: {sorted(ctx.image_formats)})")
            sizes.append(image_size_from_header(im))
        media.append(loc)
    for i, ref in enumerate(sample.videos):
        where = f"video {i} ({ref.path or 'frames'})"
        if ref.frames is not None:
            frames = [f if isinstance(f, (bytes, bytearray)) else resolve_media(f, src.media_root) for f in ref.frames]
            h, w = image_size_from_header(frames[0]) if frames else (0, 0)
            infos.append({"num_frames": len(frames), "width": w, "height": h, "duration": None, "avg_fps": None})
            media.append(frames)
            continue
        if ref.data is not None:
            infos.append(None)
            media.append(ref.data)
            continue
        if not ref.path:
            raise MediaFormatError(f"{where}: the reference has neither a path nor data")
        path = resolve_media(ref.path, src.media_root)
        ext = path.suffix.lower().lstrip(".")
        if ext not in ctx.video_exts:
            raise MediaFormatError(f"{where}: container .{ext} is not allowed (video.formats: "
                                   f"{sorted(ctx.video_exts)})")
        from processors.video import probe_video

        infos.append(probe_video(path))
        media.append(path)
    return Prepared(sample, sizes, infos, media)


# -- encode and encoded filters ------------------------------------------------------------------

def encode(prepared: Prepared, src: SourceFile, ctx: Context) -> EncodedSample | Outcome:
    from filters.base import FilterContext
    from processors.encode import encode_sample
    from processors.tokenizer import special_ids

    s = prepared.sample
    try:
        enc = encode_sample(s, ctx.preset, media_root=src.media_root, options=ctx.encode_options,
                            tokenizer=ctx.tokenizer, video_infos=prepared.video_infos)
        check_placeholders(enc, ctx.preset, special_ids(ctx.tokenizer, ctx.preset))
    except Exception as exc:
        return Outcome.error(s.id, s.source, s.record_index, "encode", exc)

    fctx = FilterContext(preset=ctx.preset, encode_options=ctx.encode_options, image_sizes=prepared.image_sizes,
                         video_infos=prepared.video_infos, encoded=enc, boxes=_boxes_binder(ctx, prepared.image_sizes))
    verdict = _run(ctx.filters, s, fctx, "encoded")
    if verdict is not None:
        return _verdict_outcome(verdict, s)
    limit = ctx.cfg.max_length
    n = int(enc.input_ids.size)
    if limit is not None and n > limit:
        return Outcome.dropped(s.id, s.source, s.record_index, "filter", "max_length", n,
                               f"{n} tokens > max_length {limit} (dropped whole: a sample is never truncated)")
    return enc


class PlaceholderGuardError(ValueError):
    code = "placeholder_mismatch"


def check_placeholders(enc: EncodedSample, preset: Preset, token_ids=None) -> None:
    """The shard contract: pad-token counts equal Σ prod(grid_thw) / merge² per modality.
    `token_ids`: the tokenizer's SpecialIds (default: the Qwen2/Qwen3 ids)."""
    if not preset.is_mrope:
        return
    m2 = preset.merge_size ** 2
    image_pad, video_pad = (IMAGE_PAD_ID, VIDEO_PAD_ID) if token_ids is None else (token_ids.image_pad,
                                                                                   token_ids.video_pad)
    for pad, grid, what in ((image_pad, enc.image_grid_thw, "image"), (video_pad, enc.video_grid_thw, "video")):
        want = int(np.prod(np.asarray(grid).reshape(-1, 3), axis=1).sum()) // m2
        have = int((enc.input_ids == pad).sum())
        if want != have:
            raise PlaceholderGuardError(f"{have} <|{what}_pad|> tokens but the {what} grids need {want}")
    rows = int(np.prod(np.asarray(enc.image_grid_thw).reshape(-1, 3), axis=1).sum()
               + np.prod(np.asarray(enc.video_grid_thw).reshape(-1, 3), axis=1).sum())
    if rows != enc.pixel_values.shape[0]:
        raise PlaceholderGuardError(f"pixel_values has {enc.pixel_values.shape[0]} rows, grids need {rows}")
