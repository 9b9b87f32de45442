"""The sample plan: everything about a sample that its media headers decide, computed in one place.

    plan = plan_sample(sample, preset, options, images=[plan_image(h, w, ref, preset, options), ...],
                       videos=[plan_video(header, ref, preset, options), ...])
    chat = plan.chatml(tokenizer)            # ids + labels with the exact placeholder counts

Per media item: the original and resized size, the patch grid, the token count, and for videos the
kept frames, their sample rate and the seconds written before each temporal group (Qwen3-VL). The
job's options merged with the record's per-item options (`image_options` / `video_options`: the
item wins), the image each message's boxes refer to (`image_for_each_message`), the re-grounded text,
and the ChatML arguments. No pixel is decoded here.

Who reads it: `encode_sample` (plan + pixels: it checks the pixels it decodes against the plan),
the filters' token and box rules (`filters/image_rules.py`, `pipeline/stages.py` box binder) and the
stats predictor (`pipeline/report/predict.py`). What differs between generations lives in `Preset`
fields (patch/merge sizes, video rule, timestamp layout, rope mode, system prompt, box format).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import VlprepError
from .presets import Preset, get_preset
from .resized_size import image_size_options
from .sample import ImagePart, MediaRef, Message, Sample, TextPart

VIDEO_OPTION_KEYS = (
    "fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels",
    "video_start", "video_end", "sample_fps", "resized_height", "resized_width",
)


# ---------------------------------------------------------------- options: job < record item


def image_options(ref: MediaRef, opts) -> dict[str, Any]:
    """`process_image` keyword arguments for one image: the job's band and flags, then the item's own
    band, or its resized_height/width (then the job's band is the model processor's second pass)."""
    kw: dict[str, Any] = {"min_pixels": opts.min_pixels, "max_pixels": opts.max_pixels, "fast": opts.fast_images}
    if opts.max_image_pixels is not None:
        kw["max_image_pixels"] = opts.max_image_pixels
    kw.update(image_size_options(ref.options))
    return kw


def video_options(ref: MediaRef, opts, preset: Preset | None = None) -> dict[str, Any]:
    """`process_video` keyword arguments for one video: the job's video settings, then the item's own
    (an item's nframes replaces any fps). The frame resize: the job's `video_resize` (or the
    deprecated `fast_videos`), else the preset's reference one (`Preset.video_resize`)."""
    from .video_resize import DEFAULT_RESIZE, resize_mode

    kw: dict[str, Any] = {
        "fps": opts.video_fps,
        "min_frames": opts.video_min_frames,
        "max_frames": opts.video_max_frames,
        "min_pixels": opts.video_min_pixels,
        "max_pixels": opts.video_max_pixels,
        "total_pixels": opts.video_total_pixels,
        "backend": opts.video_backend,
        "timeout_s": opts.video_timeout_s,
        "decode_workers": getattr(opts, "video_decode_workers", None),
        "resize": resize_mode(getattr(opts, "video_resize", None), opts.fast_videos or None,
                              default=preset.video_resize if preset is not None else DEFAULT_RESIZE),
    }
    for key in VIDEO_OPTION_KEYS:
        if ref.options.get(key) is not None:
            kw[key] = ref.options[key]
    if kw.get("nframes") is not None:
        kw["fps"] = None
    return {k: v for k, v in kw.items() if v is not None}


# ---------------------------------------------------------------- media


@dataclass(frozen=True)
class ImagePlan:
    original_size: tuple[int, int]   # (h, w) upright (EXIF applied)
    resized_size: tuple[int, int]    # (H, W) the model sees
    grid_thw: tuple[int, int, int]
    tokens: int                      # <|image_pad|> count


@dataclass(frozen=True)
class VideoHeader:
    """Container facts of one video (processors.video.VideoInfo, or the pre-flight's VideoFacts)."""

    height: int
    width: int
    num_frames: int
    fps: float
    duration: float
    frame_times: tuple[float, ...] | None = None  # variable-rate clips only: every frame's time (s)

    @classmethod
    def from_info(cls, info) -> "VideoHeader":
        h, w = info.display_size
        times = tuple(float(t) for t in info.frame_times) if info.is_vfr else None
        return cls(int(h), int(w), int(info.num_frames), float(info.avg_fps), float(info.duration), times)


@dataclass(frozen=True)
class VideoPlan:
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    grid_thw: tuple[int, int, int]
    tokens: int
    frame_indices: tuple[int, ...]   # kept frames (frame lists: 0..n-1)
    sample_fps: float
    group_times: tuple[float, ...]   # seconds before each temporal group (Qwen3-VL text timestamps)
    video_fps: float                 # the container's rate (frame lists: the sample rate)
    duration: float


def plan_image(height: int, width: int, ref: MediaRef, preset: Preset | str | None, opts) -> ImagePlan:
    """One image of (height, width) pixels (upright): its size, grid and tokens under the preset, the
    job band and the item's options. Raises what `process_image` raises for these sizes."""
    from .image import DEFAULT_MAX_IMAGE_PIXELS, image_target_size

    preset = get_preset(preset)
    kw = image_options(ref, opts)
    resized = image_target_size(
        height, width, preset, min_pixels=kw.get("min_pixels"), max_pixels=kw.get("max_pixels"),
        resized_height=kw.get("resized_height"), resized_width=kw.get("resized_width"),
        max_image_pixels=kw.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
    grid = preset.grid_thw(*resized)
    return ImagePlan((int(height), int(width)), tuple(int(v) for v in resized), grid, int(preset.visual_tokens(grid)))


def frame_seconds(indices, video_fps: float, vfr_times=None) -> list[float]:
    """The time of each kept frame as the model's processor writes it: index / fps on a constant-rate
    clip (Qwen3VLProcessor), the presentation time on a variable-rate one."""
    if vfr_times is not None:
        return [float(vfr_times[int(i)]) for i in indices]
    return [int(i) / float(video_fps) for i in indices]


def plan_video(header, ref: MediaRef, preset: Preset | str | None, opts, *, frame_list: int | None = None) -> VideoPlan:
    """One video from its header facts (`VideoHeader` or any object with the same fields). Frame lists:
    `frame_list` = the number of frames, `header` the first frame's (height, width) in its first two
    fields. Raises what `process_video` raises for these facts."""
    from .video import DEFAULT_FRAME_LIST_FPS, frame_size, select_frames_from
    from .video_sampling import group_timestamps

    preset = get_preset(preset)
    if not preset.supports_video:
        raise VlprepError(f"preset {preset.name} has no video support")
    kw = video_options(ref, opts, preset)
    size_kw = {k: kw.get(k) for k in ("min_pixels", "max_pixels", "total_pixels", "resized_height", "resized_width")}
    h, w = int(header.height), int(header.width)
    if frame_list is not None:
        n = int(frame_list)
        rate = kw.get("sample_fps")
        fps = DEFAULT_FRAME_LIST_FPS if rate is None else float(rate)
        idx = list(range(n))
        H, W = frame_size(h, w, n, preset, frame_list=True, **size_kw)
        seconds = [i / fps for i in idx]
        sample_fps, video_fps, duration = fps, fps, n / fps
    else:
        vfr = header.frame_times
        sel, sample_fps = select_frames_from(
            header.num_frames, header.fps, vfr, preset=preset, fps=kw.get("fps"), nframes=kw.get("nframes"),
            min_frames=kw.get("min_frames"), max_frames=kw.get("max_frames"),
            video_start=kw.get("video_start"), video_end=kw.get("video_end"))
        idx = [int(i) for i in sel]
        n = len(idx)
        H, W = frame_size(h, w, n, preset, **size_kw)
        seconds = frame_seconds(idx, header.fps, vfr)
        video_fps, duration = float(header.fps), float(header.duration)
    grid = preset.grid_thw(H, W, n)
    return VideoPlan((h, w), (int(H), int(W)), grid, int(preset.visual_tokens(grid)), tuple(idx), float(sample_fps),
                     tuple(group_timestamps(seconds, preset.temporal_patch_size)), video_fps, duration)


# ---------------------------------------------------------------- boxes and text


def image_for_each_message(sample: Sample) -> list[int | None]:
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


def regrounded(sample: Sample, preset: Preset, images, src_format: str) -> tuple[Sample, list[dict]]:
    """A copy of the sample with every grounding span re-rendered for `preset`, plus the box report.
    `images[i]` needs `original_size` and `resized_size` (an ImagePlan or an ImageResult)."""
    from .grounding import convert_grounding_text

    reports = []
    messages = []
    for msg, image_index in zip(sample.messages, image_for_each_message(sample)):
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


def boxes_per_image(sample: Sample, fmt: str, original_sizes, resized_size_of=None) -> list[list[tuple]]:
    """Boxes of a sample in original-image pixels, per image, decoded from `fmt` (the job's
    grounding_format, else the preset's own) as the encoder re-grounds them: the image each message's
    boxes refer to is `image_for_each_message`'s. `resized_size_of(i)`: image i's planned resized
    size (`plan_image(...).resized_size`), asked only when `fmt` writes pixels of the resized image.
    For the box filter rules."""
    from .grounding import Box, parse_grounding, uses_resized_size

    need = uses_resized_size(fmt)
    per: list[list[tuple]] = [[] for _ in sample.images]
    for msg, target in zip(sample.messages, image_for_each_message(sample)):
        if target is None or target >= len(original_sizes):
            continue
        resized = resized_size_of(target) if need and resized_size_of is not None else None
        for span in parse_grounding(msg.text, fmt, original_size=original_sizes[target], resized_size=resized):
            per[target].extend((o.x1, o.y1, o.x2, o.y2) for o in span.objects if isinstance(o, Box))
    return per


# ---------------------------------------------------------------- the sample


@dataclass
class SamplePlan:
    sample: Sample                       # re-grounded when the job converts boxes
    preset: Preset
    images: list[ImagePlan]
    videos: list[VideoPlan]
    box_reports: list[dict] = field(default_factory=list)
    system_prompt: str | None = None
    add_vision_id: bool = False

    @property
    def image_tokens(self) -> list[int]:
        return [p.tokens for p in self.images]

    @property
    def video_tokens(self) -> list[int]:
        return [p.tokens for p in self.videos]

    def chatml(self, tokenizer, max_length: int | None = None):
        from .chatml import build_chatml

        return build_chatml(
            self.sample, self.preset, tokenizer, image_tokens=self.image_tokens, video_tokens=self.video_tokens,
            system_prompt=self.system_prompt, max_length=max_length, add_vision_id=self.add_vision_id,
            video_times=[list(v.group_times) for v in self.videos])


def plan_sample(sample: Sample, preset: Preset | str | None, opts, *, images: list[ImagePlan],
                videos: list[VideoPlan]) -> SamplePlan:
    """The sample's plan from its planned media: grounding re-rendered for the preset (when the job
    names a source format), the system prompt (the job's, else the preset's default)."""
    preset = get_preset(preset)
    box_reports: list[dict] = []
    if opts.grounding_format and images:
        sample, box_reports = regrounded(sample, preset, images, opts.grounding_format)
    system = opts.system_prompt if opts.system_prompt is not None else preset.system_prompt
    return SamplePlan(sample, preset, list(images), list(videos), box_reports, system, opts.add_vision_id)


def check_pixels(kind: str, i: int, plan, result) -> None:
    """The decoded pixels must be what the plan says (same code decides both; a mismatch is a bug)."""
    got = (tuple(int(v) for v in result.grid_thw), tuple(int(v) for v in result.resized_size))
    want = (tuple(plan.grid_thw), tuple(plan.resized_size))
    idx_ok = kind == "image" or [int(x) for x in result.frame_indices] == list(plan.frame_indices)
    if got != want or not idx_ok:
        raise VlprepError(f"{kind} {i}: decoded grid/size {got} differ from the sample plan {want} "
                          f"(a vlprep bug: please report it with this record)")
