"""encode_sample: one canonical Sample -> the model-ready tensors of one training example.

Order of work: resolve and process every image and video (smart-resize, patches, frame sampling),
re-format grounding against each image's real sizes, build ChatML with the exact placeholder
counts, then M-RoPE position ids. Everything a later stage needs to explain the sample goes
into `meta`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .errors import FormatError, VlprepError
from .media import resolve_media_path
from .presets import IGNORE_INDEX, IMAGE_PAD_ID, VIDEO_PAD_ID, Preset, get_preset
from .resized_size import image_size_options
from .sample import EncodedSample, ImagePart, MediaRef, Message, Sample, TextPart

_VIDEO_OPTION_KEYS = (
    "fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels",
    "video_start", "video_end", "sample_fps", "resized_height", "resized_width",
)


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
    video_resize: str | None = None        # qwen-vl-utils (None: the default) | transformers: the reference the frame resize equals (docs/video.md)
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


def _image_kwargs(ref: MediaRef, opts: EncodeOptions) -> dict[str, Any]:
    kw: dict[str, Any] = {"min_pixels": opts.min_pixels, "max_pixels": opts.max_pixels, "fast": opts.fast_images}
    if opts.max_image_pixels is not None:
        kw["max_image_pixels"] = opts.max_image_pixels
    # The item's own band, or its resized_height/width (then the job's band is the model
    # processor's second pass, see process_image).
    kw.update(image_size_options(ref.options))
    return kw


def _video_kwargs(ref: MediaRef, opts: EncodeOptions) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "fps": opts.video_fps,
        "min_frames": opts.video_min_frames,
        "max_frames": opts.video_max_frames,
        "min_pixels": opts.video_min_pixels,
        "max_pixels": opts.video_max_pixels,
        "total_pixels": opts.video_total_pixels,
        "backend": opts.video_backend,
        "timeout_s": opts.video_timeout_s,
        "resize": opts.video_resize,
        "fast": opts.fast_videos or None,
    }
    for key in _VIDEO_OPTION_KEYS:
        if ref.options.get(key) is not None:
            kw[key] = ref.options[key]
    if kw.get("nframes") is not None:
        kw["fps"] = None
    return {k: v for k, v in kw.items() if v is not None}


def _encode_images(sample: Sample, preset: Preset, media_root, opts: EncodeOptions):
    from .image import process_image

    results = []
    for i, ref in enumerate(sample.images):
        try:
            results.append(process_image(_media_source(ref, media_root), preset, **_image_kwargs(ref, opts)))
        except VlprepError as exc:
            exc.args = (f"image {i} ({ref.path or 'bytes'}): {exc}",)
            raise
    return results


def _encode_videos(sample: Sample, preset: Preset, media_root, opts: EncodeOptions, video_infos=None):
    if sample.videos and not preset.supports_video:
        raise FormatError(f"preset {preset.name} has no video support; sample {sample.id} has {len(sample.videos)} video(s)")
    if not sample.videos:
        return []
    from .video import VideoInfo, process_video

    results = []
    for i, ref in enumerate(sample.videos):
        if ref.frames is not None:
            src = [f if isinstance(f, (bytes, bytearray)) else resolve_media_path(f, media_root) for f in ref.frames]
        else:
            src = _media_source(ref, media_root)
        kw = _video_kwargs(ref, opts)
        info = video_infos[i] if video_infos is not None and i < len(video_infos) else None
        if isinstance(info, VideoInfo) and ref.frames is None and ref.data is None:
            kw["info"] = info
        try:
            results.append(process_video(src, preset, **kw))
        except VlprepError as exc:
            exc.args = (f"video {i} ({ref.path or 'frames'}): {exc}",)
            raise
    return results


def _image_for_each_message(sample: Sample) -> list[int | None]:
    """The image a message's boxes refer to: its own first image, else the latest one before it."""
    latest: int | None = None
    out = []
    for msg in sample.messages:
        own = next((p.index for p in msg.parts if isinstance(p, ImagePart)), None)
        if own is not None:
            latest = own
        out.append(own if own is not None else latest)
        for p in msg.parts:
            if isinstance(p, ImagePart):
                latest = p.index
    return out


def _regrounded(sample: Sample, preset: Preset, images, src_format: str):
    """A copy of the sample with every grounding span re-rendered for `preset`, plus the box report."""
    from .grounding import convert_grounding_text

    reports = []
    messages = []
    for msg, image_index in zip(sample.messages, _image_for_each_message(sample)):
        parts = []
        for part in msg.parts:
            if isinstance(part, TextPart) and image_index is not None:
                img = images[image_index]
                text, report = convert_grounding_text(
                    part.text, src_format, preset,
                    original_size=img.original_size, resized_size=img.resized_size,
                )
                if report.changes or report.problems:
                    reports.append({"message_role": msg.role, "image": image_index, **report.to_dict()})
                part = TextPart(text)
            parts.append(part)
        messages.append(Message(msg.role, parts))
    new = Sample(sample.id, messages, sample.images, sample.videos, sample.source, sample.record_index, sample.meta)
    return new, reports


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
    from .chatml import build_chatml
    from .rope import get_rope_index
    from .tokenizer import get_tokenizer

    preset = get_preset(preset)
    opts = options or EncodeOptions()
    tokenizer = tokenizer or get_tokenizer(preset=preset)

    images = _encode_images(sample, preset, media_root, opts)
    videos = _encode_videos(sample, preset, media_root, opts, video_infos)

    box_reports: list[dict] = []
    if opts.grounding_format and images:
        sample, box_reports = _regrounded(sample, preset, images, opts.grounding_format)

    image_tokens = [preset.visual_tokens(r.grid_thw) for r in images]
    video_tokens = [preset.visual_tokens(r.grid_thw) for r in videos]
    chat = build_chatml(
        sample, preset, tokenizer,
        image_tokens=image_tokens, video_tokens=video_tokens,
        system_prompt=opts.system_prompt if opts.system_prompt is not None else preset.system_prompt,
        max_length=opts.max_length, add_vision_id=opts.add_vision_id,
    )
    input_ids = np.asarray(chat.input_ids, dtype=np.int32)
    labels = np.asarray(chat.labels, dtype=np.int32)

    image_grid = np.asarray([r.grid_thw for r in images], dtype=np.int32).reshape(-1, 3)
    video_grid = np.asarray([r.grid_thw for r in videos], dtype=np.int32).reshape(-1, 3)
    second_per_grid_ts = np.asarray([r.second_per_grid_ts for r in videos], dtype=np.float32)
    position_ids, delta = get_rope_index(
        input_ids, image_grid, video_grid, second_per_grid_ts if len(videos) else None, preset
    )

    arrays = [r.patches for r in images] + [r.patches for r in videos]
    if arrays:
        pixel_values = np.concatenate(arrays, axis=0)
    elif preset.fixed_size is not None:
        pixel_values = np.zeros((0, *preset.fixed_size, 3), dtype=np.uint8)
    else:
        pixel_values = np.zeros((0, preset.patch_dim), dtype=np.uint8)

    n_image = int((input_ids == IMAGE_PAD_ID).sum()) if preset.is_mrope else sum(image_tokens)
    n_video = int((input_ids == VIDEO_PAD_ID).sum())
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
        "videos": [_video_meta(r, n) for r, n in zip(videos, video_tokens)],
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


def _video_meta(r, tokens: int) -> dict[str, Any]:
    def floats(xs):
        return [float(x) for x in (xs or [])]

    return {
        "original_size": list(r.original_size),
        "resized_size": list(r.resized_size),
        "grid_thw": [int(v) for v in r.grid_thw],
        "tokens": tokens,
        "duration": float(r.duration) if r.duration is not None else None,
        "video_fps": float(r.video_fps) if getattr(r, "video_fps", None) is not None else None,
        "sample_fps": float(r.sample_fps),
        "second_per_grid_ts": float(r.second_per_grid_ts),
        "frame_indices": [int(i) for i in (r.frame_indices or [])],
        "frame_times": floats(r.frame_times),
        "timestamps": floats(r.timestamps),
    }
