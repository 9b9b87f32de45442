"""encode_sample: one canonical Sample -> the model-ready tensors of one training example.

Order of work: resolve and process every image and video (smart-resize, patches, frame sampling),
each checked against its `processors.plan` entry (sizes, grid, tokens, frames from the header facts
the decode read); the sample plan re-formats grounding and builds ChatML with the exact placeholder
counts; then M-RoPE position ids. Everything a later stage needs to explain the sample goes
into `meta`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .errors import FormatError, VlprepError
from .media import resolve_media_path
from .presets import IGNORE_INDEX, Preset, get_preset
from .plan import (
    VideoHeader,
    check_pixels,
    image_options,
    plan_image,
    plan_sample,
    plan_video,
    video_options,
)
from .sample import EncodedSample, MediaRef, Sample


@dataclass(frozen=True)
class EncodeOptions:
    """Job-level knobs for encoding; a record's per-item options override the media ones."""

    min_pixels: int | None = None          # image band (None: the preset's)
    max_pixels: int | None = None
    fast_images: bool = False              # JPEG draft decoding when the target is <= half the source
    max_image_pixels: int | None = None    # decompression-bomb guard (None: processors.image default)
    video_fps: float | None = None         # None: the preset's 2.0
    video_min_frames: int | None = None
    video_max_frames: int | None = None
    video_min_pixels: int | None = None
    video_max_pixels: int | None = None
    video_total_pixels: int | None = None
    video_backend: str = "pyav"
    video_timeout_s: float = 120.0
    video_decode_workers: int | None = None  # process_video's decode_workers (None: one per usable core)
    video_resize: str | None = None        # qwen-vl-utils | transformers (None: the preset's video_resize): the reference the frame resize equals (docs/video.md)
    fast_videos: bool = False              # deprecated: True = video_resize "transformers"
    grounding_format: str | None = None    # format of boxes in the SOURCE text; None: leave text as is
    max_length: int | None = None
    system_prompt: str | None = None       # None: the preset's default
    add_vision_id: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "EncodeOptions":
        d = dict(d or {})
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown encode option(s) {unknown}; valid: {sorted(valid)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _media_source(ref: MediaRef, media_root):
    if ref.data is not None:
        return ref.data
    if ref.path is None:
        raise FormatError(f"{ref.kind} reference has neither a path nor data")
    return resolve_media_path(ref.path, media_root)


def _encode_images(sample: Sample, preset: Preset, media_root, opts: EncodeOptions):
    from .image import process_image

    results, plans = [], []
    for i, ref in enumerate(sample.images):
        try:
            r = process_image(_media_source(ref, media_root), preset, **image_options(ref, opts))
            # the plan from the upright size the decode read (its header size)
            plans.append(plan_image(*r.original_size, ref, preset, opts))
        except VlprepError as exc:
            exc.args = (f"image {i} ({ref.path or 'bytes'}): {exc}",)
            raise
        check_pixels("image", i, plans[-1], r)
        results.append(r)
    return results, plans


def _encode_videos(sample: Sample, preset: Preset, media_root, opts: EncodeOptions, video_infos=None):
    if sample.videos and not preset.supports_video:
        raise FormatError(f"preset {preset.name} has no video support; sample {sample.id} has {len(sample.videos)} video(s)")
    if not sample.videos:
        return [], []
    from .video import VideoInfo, probe_video, process_video

    results, plans = [], []
    for i, ref in enumerate(sample.videos):
        if ref.frames is not None:
            src = [f if isinstance(f, (bytes, bytearray)) else resolve_media_path(f, media_root) for f in ref.frames]
        else:
            src = _media_source(ref, media_root)
        kw = video_options(ref, opts, preset)
        info = video_infos[i] if video_infos is not None and i < len(video_infos) else None
        try:
            is_file = ref.frames is None and ref.data is None
            if is_file:
                if not isinstance(info, VideoInfo):
                    process_video_checks(preset, kw)  # what process_video refuses before it probes
                    info = probe_video(src)
                kw["info"] = info
            r = process_video(src, preset, **kw)
            if is_file:
                plans.append(plan_video(VideoHeader.from_info(info), ref, preset, opts))
            else:
                plans.append(plan_video(VideoHeader(*r.original_size, len(ref.frames), 0.0, 0.0), ref, preset, opts,
                                        frame_list=len(ref.frames)))
        except VlprepError as exc:
            exc.args = (f"video {i} ({ref.path or 'frames'}): {exc}",)
            raise
        check_pixels("video", i, plans[-1], r)
        results.append(r)
    return results, plans


def process_video_checks(preset: Preset, kw: dict) -> None:
    """The option checks `process_video` makes before probing a file, made before the encoder probes."""
    from .resized_size import requested_size

    requested_size(kw.get("resized_height"), kw.get("resized_width"), preset.factor)


def encode_sample(
    sample: Sample,
    preset: Preset | str | None = None,
    *,
    media_root=None,
    options: EncodeOptions | None = None,
    tokenizer=None,
    video_infos: list | None = None,
) -> EncodedSample:
    """Encode one Sample into the tensors a Qwen-VL model consumes (see `EncodedSample`).

    `video_infos`: per `sample.videos` entry, the `VideoInfo` the caller already probed for that file
    (other entries, e.g. None or dicts for frame lists, are ignored); saves a second probe.
    """
    from .rope import get_rope_index
    from .tokenizer import get_tokenizer, special_ids

    preset = get_preset(preset)
    opts = options or EncodeOptions()
    tokenizer = tokenizer or get_tokenizer(preset=preset)
    ids = special_ids(tokenizer, preset)  # from the tokenizer in use; a missing token is a clear error

    images, image_plans = _encode_images(sample, preset, media_root, opts)
    videos, video_plans = _encode_videos(sample, preset, media_root, opts, video_infos)
    plan = plan_sample(sample, preset, opts, images=image_plans, videos=video_plans)
    sample, box_reports = plan.sample, plan.box_reports
    image_tokens, video_tokens = plan.image_tokens, plan.video_tokens
    chat = plan.chatml(tokenizer, max_length=opts.max_length)
    input_ids = np.asarray(chat.input_ids, dtype=np.int32)
    labels = np.asarray(chat.labels, dtype=np.int32)

    image_grid = np.asarray([r.grid_thw for r in images], dtype=np.int32).reshape(-1, 3)
    video_grid = np.asarray([r.grid_thw for r in videos], dtype=np.int32).reshape(-1, 3)
    second_per_grid_ts = np.asarray([r.second_per_grid_ts for r in videos], dtype=np.float32)
    position_ids, delta = get_rope_index(
        input_ids, image_grid, video_grid, second_per_grid_ts if len(videos) else None, preset, token_ids=ids
    )

    arrays = [r.patches for r in images] + [r.patches for r in videos]
    if arrays:
        pixel_values = np.concatenate(arrays, axis=0)
    elif preset.fixed_size is not None:
        pixel_values = np.zeros((0, *preset.fixed_size, 3), dtype=np.uint8)
    else:
        pixel_values = np.zeros((0, preset.patch_dim), dtype=np.uint8)

    n_image = int((input_ids == ids.image_pad).sum()) if preset.is_mrope else sum(image_tokens)
    n_video = int((input_ids == ids.video_pad).sum()) if preset.is_mrope else 0
    meta = {
        "id": sample.id,
        "source": sample.source,
        "record_index": sample.record_index,
        "preset": preset.name,
        "n_tokens": int(input_ids.size),
        "n_image_tokens": n_image,
        "n_video_tokens": n_video,
        "n_text_tokens": int(input_ids.size) - n_image - n_video,
        "n_supervised_tokens": int((labels != IGNORE_INDEX).sum()),
        "images": [
            {
                "original_size": list(r.original_size),
                "resized_size": list(r.resized_size),
                "grid_thw": [int(v) for v in r.grid_thw],
                "tokens": n,
            }
            for r, n in zip(images, image_tokens)
        ],
        "videos": [_video_meta(r, v, preset.video_timestamps is not None) for r, v in zip(videos, video_plans)],
        "boxes": box_reports,
        "n_boxes": sum(sum(1 for o in r["objects"] if o["shape"] == "box") for r in box_reports),
        "box_problems": sum(len(r["problems"]) for r in box_reports),
    }
    return EncodedSample(
        id=sample.id,
        input_ids=input_ids,
        labels=labels,
        position_ids=np.asarray(position_ids, dtype=np.int32),
        pixel_values=pixel_values,
        image_grid_thw=image_grid,
        video_grid_thw=video_grid,
        second_per_grid_ts=second_per_grid_ts,
        rope_delta=int(delta),
        meta=meta,
    )


def _video_meta(r, plan, with_times: bool = False) -> dict[str, Any]:
    def floats(xs):
        return [float(x) for x in (xs or [])]

    return {
        "original_size": list(r.original_size),
        "resized_size": list(r.resized_size),
        "grid_thw": [int(v) for v in r.grid_thw],
        "tokens": plan.tokens,
        "duration": float(r.duration) if r.duration is not None else None,
        "video_fps": float(r.video_fps) if getattr(r, "video_fps", None) is not None else None,
        "sample_fps": float(r.sample_fps),
        "second_per_grid_ts": float(r.second_per_grid_ts),
        "frame_indices": [int(i) for i in (r.frame_indices or [])],
        "frame_times": floats(r.frame_times),
        "timestamps": floats(r.timestamps),
        **({"group_times": floats(plan.group_times)} if with_times else {}),
    }
