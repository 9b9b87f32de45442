"""What one sample will cost once encoded, predicted from media headers and the tokenizer alone.

The arithmetic is the encoder's own sample plan (`processors.plan`: option merging, sizes, frames,
tokens, re-grounding, the ChatML arguments) plus `processors.text.clean_sample`. Only the pixels are
skipped, so the predicted token counts equal what `vlprep prepare` writes to the manifest.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from processors.encode import EncodeOptions
from processors.errors import VlprepError
from processors.media import resolve_media_path
# the encoder's own sample plan, so predictions match it
from processors.plan import plan_image, plan_sample, plan_video
from processors.presets import IGNORE_INDEX, Preset
from processors.sample import MediaRef, Sample
from processors.text import clean_sample
from processors.tokenizer import get_tokenizer

from ..sizes import media_files
from .media_probe import ImageFacts, error_code, facts_from_info, image_facts, video_facts


@dataclass
class Prediction:
    id: str
    source: str
    index: int
    error_type: str | None = None
    error: str | None = None
    image_tokens: list[int] = field(default_factory=list)
    video_tokens: list[int] = field(default_factory=list)
    n_tokens: int | None = None           # None when the sample would fail to encode
    n_text_tokens: int | None = None
    n_supervised_tokens: int | None = None
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    image_resized: list[tuple[int, int]] = field(default_factory=list)
    image_plans: list = field(default_factory=list, repr=False)   # processors.plan entries (not packed)
    video_plans: list = field(default_factory=list, repr=False)
    video_sizes: list[tuple[int, int]] = field(default_factory=list)
    video_resized: list[tuple[int, int]] = field(default_factory=list)
    video_durations: list[float] = field(default_factory=list)
    video_fps: list[float] = field(default_factory=list)
    video_sample_fps: list[float] = field(default_factory=list)
    video_frames: list[int] = field(default_factory=list)
    # bytes in / out (pipeline/sizes.py): media as read, and the shard bytes the pre-flight predicts
    media_files: list[tuple[str, str, int]] = field(default_factory=list)
    media_bytes: int | None = None
    sample_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None


class MediaCache:
    """Header facts per resolved path, shared by all threads; failures are cached too (a missing file
    referenced 1000 times is looked up once). `enabled=False` re-reads on every reference (bench)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._d: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.reads = 0

    def get(self, kind: str, src):
        key = (kind, str(src)) if not isinstance(src, (bytes, bytearray)) else None
        if self.enabled and key is not None:
            with self._lock:
                if key in self._d:
                    hit = self._d[key]
                    if isinstance(hit, BaseException):
                        raise hit
                    return hit
        try:
            val = image_facts(src) if kind == "image" else video_facts(src)
        except (VlprepError, OSError) as exc:
            val = exc
        with self._lock:
            self.reads += 1
            if self.enabled and key is not None:
                self._d[key] = val
        if isinstance(val, BaseException):
            raise val
        return val


class Predictor:
    def __init__(self, preset: Preset, encode_options: dict, *, cleaning: dict | None = None,
                 tokenizer=None, cache: MediaCache | None = None):
        self.preset = preset
        self.opts = EncodeOptions.from_dict(encode_options)
        self.cleaning = cleaning
        self.cache = cache or MediaCache()
        self.tokenizer = tokenizer
        if self.tokenizer is None:
            self.tokenizer = get_tokenizer(preset=preset)

    # -- media --------------------------------------------------------------------------------
    def media_sources(self, sample: Sample, media_root) -> list[tuple[str, Any]]:
        """(kind, resolved source) for every image and video file, for warming the cache in parallel."""
        out = []
        for kind, refs in (("image", sample.images), ("video", sample.videos)):
            for ref in refs:
                try:
                    out.append((kind, self._source(ref, media_root)))
                except VlprepError:
                    pass  # reported per sample by predict()
        return out

    def _source(self, ref: MediaRef, media_root):
        if ref.data is not None:
            return ref.data
        if ref.frames is not None:
            f = ref.frames[0]
            return f if isinstance(f, (bytes, bytearray)) else resolve_media_path(f, media_root)
        if ref.path is None:
            raise VlprepError(f"{ref.kind} reference has neither a path nor data")
        return resolve_media_path(ref.path, media_root)

    def _image(self, ref: MediaRef, media_root, pred: Prediction, f=None) -> None:
        f = f or self.cache.get("image", self._source(ref, media_root))
        plan = plan_image(f.height, f.width, ref, self.preset, self.opts)
        pred.image_plans.append(plan)
        pred.image_sizes.append((f.height, f.width))
        pred.image_resized.append(plan.resized_size)
        pred.image_tokens.append(plan.tokens)

    def _video(self, ref: MediaRef, media_root, pred: Prediction, known=None) -> None:
        p = self.preset
        if not p.supports_video:
            raise VlprepError(f"preset {p.name} has no video support")
        if ref.frames is not None:
            # the first frame's header; every frame of a frame list is kept
            f = self.cache.get("image", self._source(ref, media_root))
            plan = plan_video(f, ref, p, self.opts, frame_list=len(ref.frames))
        else:
            f = known or self.cache.get("video", self._source(ref, media_root))
            plan = plan_video(f, ref, p, self.opts)
        pred.video_plans.append(plan)
        pred.video_durations.append(plan.duration)
        pred.video_fps.append(plan.video_fps)
        pred.video_sizes.append((f.height, f.width))
        pred.video_resized.append(plan.resized_size)
        pred.video_sample_fps.append(plan.sample_fps)
        pred.video_frames.append(len(plan.frame_indices))
        pred.video_tokens.append(plan.tokens)

    # -- one sample ---------------------------------------------------------------------------
    def predict(self, sample: Sample, media_root, *, image_sizes=None, video_infos=None,
                clean: bool = True) -> Prediction:
        """Predict one sample. `image_sizes` / `video_infos` are header facts the job's media check
        already read (pipeline.stages.Prepared); `clean=False` when the sample is already cleaned."""
        pred = Prediction(sample.id, sample.source, sample.record_index)
        try:
            for i, ref in enumerate(sample.images):
                known = ImageFacts(*image_sizes[i]) if image_sizes is not None else None
                self._image(ref, media_root, pred, known)
            for i, ref in enumerate(sample.videos):
                info = video_infos[i] if video_infos is not None else None
                known = facts_from_info(info) if info is not None and not isinstance(info, dict) else None
                self._video(ref, media_root, pred, known)
            self._text(sample, pred, clean)
            pred.media_files = media_files(self.media_sources(sample, media_root))
            pred.media_bytes = sum(f[2] for f in pred.media_files)
        except (VlprepError, OSError) as exc:
            pred.error_type, pred.error = error_code(exc), f"{type(exc).__name__}: {exc}"
        pred.image_plans, pred.video_plans = [], []  # used; a packed prediction does not carry them
        return pred

    def _text(self, sample: Sample, pred: Prediction, clean: bool) -> None:
        if clean and self.cleaning is not None:
            sample = clean_sample(sample, **self.cleaning)
        plan = plan_sample(sample, self.preset, self.opts, images=pred.image_plans, videos=pred.video_plans)
        chat = plan.chatml(self.tokenizer, max_length=None)
        n = len(chat.input_ids)
        pred.n_tokens = n
        pred.n_text_tokens = n - sum(pred.image_tokens) - sum(pred.video_tokens)
        pred.n_supervised_tokens = int(sum(1 for x in chat.labels if x != IGNORE_INDEX))
