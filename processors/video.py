"""Videos → uint8 patches, grid and timing, as qwen-vl-utils 0.0.14 + the Qwen2-VL video processor.

    from processors.video import process_video, probe_video, sample_frame_indices
    r = process_video("clip.mp4", "qwen2.5-vl")      # r.patches uint8 [N, 1176], r.grid_thw, ...

Steps (spec §6): probe (no pixel decode) → pick frames (§6.2–6.4; by presentation time on
variable-rate clips) → per-frame size (§6.5) → decode only the picked frames → bicubic+antialias
resize → temporal padding + patchify (§4 step 8), each resized frame written straight into its patch
rows as it arrives. Memory holds the kept frames' patches and the few frames in flight.
Split across video_probe / video_sampling / video_decode / video_resize; this module is the API.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .errors import VideoDecodeError, VlprepError
from .video_sampling import tf_frame_indices, tf_sample_by_time, tf_video_frame_size  # Qwen3-VL's rule
from .patches import frame_slot, patchify
from .presets import Preset, get_preset
from .resized_size import requested_size
from .video_decode import decode_decord, decode_parallelism, decode_pyav
from .video_probe import VideoInfo, probe_video
from .video_resize import TRANSFORMERS, resize_frames, resize_mode
from .video_sampling import sample_by_time, sample_frame_indices, video_frame_size

__all__ = ["VideoInfo", "VideoResult", "probe_video", "sample_frame_indices", "process_video"]

BACKENDS = ("pyav", "decord")
DEFAULT_FRAME_LIST_FPS = 2.0
_RESIZE_BATCH = 8
# The uint8 ("transformers") resize is cheap (≈ 1.2 ms a 720p frame), so its batches are small: the
# decoded RGB frames alive at once (≤ 3 batches) are then few enough for the allocator to hand their
# memory to the next frames, instead of every frame faulting in fresh pages (issue #14, one-keyframe
# 720p, 40 frames: 51 000 -> 38 000 page faults per clip); a hand-off per 2 frames costs ≈ 1 %.
_RESIZE_BATCH_UINT8 = 2
_RESIZE_BATCH_BYTES = 64 << 20
_RESIZE_IN_FLIGHT = 2  # batches handed to the resize thread and not yet done


@dataclass
class VideoResult:
    patches: np.ndarray                 # uint8 [grid_t * grid_h * grid_w, 3 * tp * p * p]
    grid_thw: tuple[int, int, int]
    second_per_grid_ts: float           # temporal_patch_size / sample_fps, seconds per temporal patch
    sample_fps: float
    frame_indices: list[int]            # sampled frames (presentation order), before temporal padding
    frame_times: list[float]            # their presentation times, seconds from the first frame
    timestamps: list[float]             # start time of each temporal patch (grid_t entries)
    original_size: tuple[int, int]      # (h, w) as displayed (rotation applied)
    resized_size: tuple[int, int]       # (H, W)
    duration: float
    video_fps: float                    # the container's average rate (frame lists: sample_fps)
    is_vfr: bool = False
    rotation: int = 0
    backend: str = ""
    num_tokens: int = field(default=0)  # prod(grid_thw) / merge_size², the number of <|video_pad|>


def _load_frame(item) -> np.ndarray:
    """One frame of a frame-list video → uint8 [H, W, 3] (paths/bytes go through the image loader:
    EXIF orientation, alpha on white, any mode to RGB)."""
    if isinstance(item, np.ndarray):
        a = item
        if a.dtype != np.uint8:
            raise VlprepError(f"frame arrays must be uint8, got {a.dtype}")
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise VlprepError(f"frame arrays must be [H, W, 3] (or 4 with alpha), got {a.shape}")
        if a.shape[2] == 4:  # alpha on white, like the image path
            alpha = a[:, :, 3:4].astype(np.float32) / 255.0
            a = np.round(a[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        return np.ascontiguousarray(a)
    from .image import load_image

    return np.asarray(load_image(item), dtype=np.uint8)


def _result(frames: np.ndarray, preset: Preset, *, indices, times, sample_fps, original_size, duration,
            video_fps, is_vfr=False, rotation=0, backend="", patched=None) -> VideoResult:
    """`patched`: (patches, grid) of `frames` already made (`_PatchRows`), else patchify here."""
    tp = preset.temporal_patch_size
    patches, grid = patched or patchify(frames, preset.patch_size, preset.merge_size, tp)
    times = [float(t) for t in times]
    return VideoResult(
        patches=patches, grid_thw=tuple(int(g) for g in grid), second_per_grid_ts=float(tp / sample_fps),
        sample_fps=float(sample_fps), frame_indices=[int(i) for i in indices], frame_times=times,
        timestamps=times[::tp], original_size=tuple(int(v) for v in original_size),
        resized_size=(int(grid[1]) * preset.patch_size, int(grid[2]) * preset.patch_size), duration=float(duration),
        video_fps=float(video_fps), is_vfr=is_vfr, rotation=rotation, backend=backend,
        num_tokens=preset.visual_tokens(grid),
    )


def _process_frame_list(frames_in, preset: Preset, *, sample_fps, min_pixels, max_pixels, total_pixels,
                        resized_height=None, resized_width=None, resize="qwen-vl-utils"):
    """`"video": [frame, …]` (spec §6.6, qwen-vl-utils 0.0.14 semantics for the rate: `sample_fps`,
    default 2.0; `fps`/`nframes` do not apply). Unlike 0.0.14, which resizes each frame with the image
    band and then again with the video budget, frames are resized once, straight to the §6.5 size
    computed from the first frame — the second resize of the reference only adds blur. With
    resized_height / resized_width both of the reference's passes land on the requested size: one
    resize to it."""
    if len(frames_in) == 0:
        raise VideoDecodeError("frame-list video has no frames")
    rate = DEFAULT_FRAME_LIST_FPS if sample_fps is None else float(sample_fps)
    if rate <= 0:
        raise VlprepError(f"sample_fps must be positive, got {sample_fps}")
    first = _load_frame(frames_in[0])
    h, w = first.shape[:2]
    n = len(frames_in)
    H, W = frame_size(h, w, n, preset, min_pixels=min_pixels, max_pixels=max_pixels, total_pixels=total_pixels,
                      resized_height=resized_height, resized_width=resized_width, frame_list=True)
    out = np.empty((n, H, W, 3), dtype=np.uint8)
    explicit = resized_height is not None  # every frame goes to the requested size, whatever its own
    for i, item in enumerate(frames_in):
        rgb = first if i == 0 else _load_frame(item)
        if rgb.shape[:2] != (h, w) and not explicit:
            raise VlprepError(f"frame {i} of a frame-list video is {rgb.shape[1]}x{rgb.shape[0]} (WxH), frame 0 is "
                              f"{w}x{h}; all frames of one video must have the same size")
        out[i] = resize_frames(rgb, H, W, mode=resize)
    times = np.arange(n) / rate
    return _result(out, preset, indices=range(n), times=times, sample_fps=rate, original_size=(h, w),
                   duration=n / rate, video_fps=rate, backend="frames")


def frame_size(h: int, w: int, nframes: int, preset: Preset | str | None = None, *, min_pixels=None,
               max_pixels=None, total_pixels=None, resized_height=None, resized_width=None,
               frame_list: bool = False) -> tuple[int, int]:
    """The (H, W) every kept frame of a clip of `nframes` frames is resized to, under the preset's
    video rule (the one place that decides it; the stats predictor and the sample plan call it).

    "qwen-vl-utils": spec §6.5 (`nframes` as sampled). "transformers": Qwen3VLVideoProcessor's one
    band for the whole clip, `min_pixels` (default preset.video_min_pixels) to the smaller of
    `max_pixels` / `total_pixels` (default preset.video_max_pixels) — the fine-tuning code sets
    the processor's size.shortest_edge / longest_edge from its video_min_pixels / video_max_pixels.
    resized_height / resized_width: qwen-vl-utils' requested size under either rule.
    `frame_list`: the clip is a list of frames (all kept); qwen-vl-utils budgets it padded to the
    temporal patch size (§6.6), the transformers processor as given.
    """
    preset = get_preset(preset)
    if frame_list and preset.video_rule != "transformers":
        nframes = nframes + nframes % preset.temporal_patch_size
    if preset.video_rule == "transformers":
        requested = requested_size(resized_height, resized_width, preset.factor)
        if requested is not None:
            return requested
        caps = [v for v in (max_pixels, total_pixels) if v is not None]
        return tf_video_frame_size(
            h, w, nframes, factor=preset.factor, temporal_factor=preset.temporal_patch_size,
            min_pixels=preset.video_min_pixels if min_pixels is None else min_pixels,
            max_pixels=min(caps) if caps else preset.video_max_pixels)
    return video_frame_size(
        h, w, nframes, factor=preset.factor, min_pixels=min_pixels, max_pixels=max_pixels,
        total_pixels=total_pixels, video_min_pixels=preset.video_min_pixels,
        video_max_pixels=preset.video_max_pixels, video_total_pixels=preset.video_total_pixels,
        resized_height=resized_height, resized_width=resized_width)


def select_frames(info: VideoInfo, *, fps=None, nframes=None, min_frames=None, max_frames=None,
                  video_start=None, video_end=None, preset: Preset | None = None) -> tuple[np.ndarray, float]:
    """The frames `process_video` keeps for this file: the reference's index rule on constant-rate
    clips, nearest-by-presentation-time on variable-rate ones."""
    return select_frames_from(info.num_frames, info.avg_fps, info.frame_times if info.is_vfr else None,
                              fps=fps, nframes=nframes, min_frames=min_frames, max_frames=max_frames,
                              video_start=video_start, video_end=video_end, preset=preset)


def select_frames_from(num_frames: int, avg_fps: float, vfr_times=None, *, fps=None, nframes=None,
                       min_frames=None, max_frames=None, video_start=None, video_end=None,
                       preset: Preset | None = None) -> tuple[np.ndarray, float]:
    """`select_frames` on container facts (the stats pre-flight's header view): `vfr_times` are
    every frame's presentation times for a variable-rate clip, None for a constant-rate one."""
    preset = get_preset(preset)
    kw = dict(fps=fps, nframes=nframes,
              min_frames=preset.min_frames if min_frames is None else min_frames,
              max_frames=preset.max_frames if max_frames is None else max_frames,
              video_start=video_start, video_end=video_end)
    if fps is None and nframes is None:
        kw["fps"] = preset.fps
    if preset.video_rule == "transformers":
        if vfr_times is not None:
            return tf_sample_by_time(np.asarray(vfr_times), **kw)
        return tf_frame_indices(num_frames, avg_fps, **kw)
    if vfr_times is not None:
        return sample_by_time(np.asarray(vfr_times), **kw)
    return sample_frame_indices(num_frames, avg_fps, **kw)


def _single_torch_thread() -> None:
    """Run this thread's torch ops on one core: the decoder holds the other. With torch's OpenMP
    backend the setting is per calling thread for threads that already used torch, but it also
    becomes the default of threads that start using torch later — `_decode_and_resize` restores it."""
    from .video_resize import require_torch

    torch = require_torch()

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


class _Scratch:
    """Per-thread resize targets, [H, W, 3] uint8 (each resized frame is put at once, so one per thread
    is enough: no [batch, H, W, 3] output, issue #14), and the caller's torch thread count, which
    `_single_torch_thread` on a worker also makes the process default: `restore_threads()` puts it back."""

    def __init__(self, H: int, W: int):
        import threading

        from .video_resize import require_torch

        self._torch = require_torch()
        self.caller_threads = self._torch.get_num_threads()  # also pins this thread's own setting first
        self.H, self.W, self._local = H, W, threading.local()

    def frame(self) -> np.ndarray:
        buf = getattr(self._local, "frame", None)
        if buf is None:
            buf = self._local.frame = np.empty((self.H, self.W, 3), dtype=np.uint8)
        return buf

    def restore_threads(self) -> None:
        self._torch.set_num_threads(self.caller_threads)


def _decode_and_resize(frames, H: int, W: int, put, slots: dict[int, list[int]], *,
                       resize: str = "qwen-vl-utils", decoded_elsewhere: bool = False) -> int:
    """Resize decoded frames in small batches on a worker thread while this thread keeps decoding
    (FFmpeg and torch both release the GIL, so the two overlap on two cores), and hand each resized
    frame to `put(ks, frame)` — `ks`: its slots `slots[i]` (a frame sampled twice, on short clips,
    has two), `frame`: uint8 [H, W, 3], a per-thread scratch buffer that the next frame overwrites,
    so `put` consumes it at once (`_PatchRows`: into the patch rows, while it is still in cache).
    `put` runs on the thread that resized the frame; two threads may call it at once (on different
    slots). At most `_RESIZE_IN_FLIGHT` batches are handed to the worker at once (plus the one being
    filled: at most 3 batches of decoded frames alive). Returns how many slots were put.

    When the worker is behind, this thread waits for it if it decodes the frames itself (pulling on
    `frames` runs the decoder here: measured for issue #14, resizing here instead gained nothing on
    240p–4K clips and cost system time on the 10-min 240p one). With `decoded_elsewhere` (the frames
    come from GOP-parallel decode workers: pulling on `frames` only takes them off a queue) it
    resizes that batch itself instead: waiting left one resize thread behind two decode workers,
    and after the last frame was decoded it worked alone through the backlog with the other core
    idle (issue #14: 480p MPEG-4, wall 1.8× the decode floor)."""
    from concurrent.futures import ThreadPoolExecutor

    scratch = _Scratch(H, W)

    def resize_into(batch: list[tuple[int, np.ndarray]]) -> int:
        _single_torch_thread()
        return resize_frames_into(batch)

    def resize_frames_into(batch: list[tuple[int, np.ndarray]]) -> int:
        buf = scratch.frame()  # each frame is resized into it and put before the next
        resize_frames([f for _, f in batch], H, W, mode=resize, out=[buf] * len(batch),
                      on_frame=lambda j, row: put(slots[batch[j][0]], row))
        return sum(len(slots[i]) for i, _ in batch)

    batch_frames = _RESIZE_BATCH_UINT8 if resize == TRANSFORMERS else _RESIZE_BATCH
    filled = 0
    in_flight: list = []
    pending: list[tuple[int, np.ndarray]] = []
    batch_bytes = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlprep-resize") as pool:
        try:
            for i, rgb in frames:
                pending.append((i, rgb))
                batch_bytes += rgb.nbytes
                if len(pending) >= batch_frames or batch_bytes >= _RESIZE_BATCH_BYTES:
                    if decoded_elsewhere and len(in_flight) >= _RESIZE_IN_FLIGHT and not in_flight[0][0].done():
                        _single_torch_thread()
                        filled += resize_frames_into(pending)
                        pending, batch_bytes = [], 0
                        continue
                    if len(in_flight) >= _RESIZE_IN_FLIGHT:
                        filled += in_flight.pop(0)[0].result()
                    in_flight.append((pool.submit(resize_into, pending), pending))
                    pending, batch_bytes = [], 0
            # Decoding is done: this thread takes the batches the worker has not started, so both
            # cores work until the end — on one torch thread, like the worker: with the caller's
            # count (2 here) its OpenMP team and the worker oversubscribed the cores, and the team's
            # threads spin at every barrier while descheduled (issue #14: 4K default mode, whose strip
            # resize is ~70 small parallel regions per frame, spent 1.5 CPU s more than the floor plus
            # the resize at load 6; the caller's count is restored below).
            _single_torch_thread()
            if pending:
                filled += resize_frames_into(pending)
            for f, batch in in_flight:
                filled += resize_frames_into(batch) if f.cancel() else f.result()
            in_flight.clear()
        finally:
            for f, _ in in_flight:
                f.cancel()
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # an abandoned decode generator closes its container now, not at GC
            scratch.restore_threads()  # the process-wide default the worker's overwrote
    return filled


def _resize_on_decoders(info: VideoInfo, idx: np.ndarray, H: int, W: int, put, slots: dict[int, list[int]], *,
                        resize: str, timeout_s, workers) -> int:
    """GOP-parallel decode where each decode worker also resizes the frames it decodes and puts them
    into their patch rows (`decode_pyav(convert=...)`, `put`/`slots` as in `_decode_and_resize`);
    returns how many slots were put. The "transformers" mode's path when the clip decodes on several
    workers: its uint8 resize is cheap next to the decode, so the workers keep the cores busy by
    themselves, and each frame is resized from the RGB buffer just converted, which is then released
    at once, so the next conversion reuses that memory instead of faulting in fresh pages. The
    resize thread, its batches and the queue of decoded RGB frames go away (issue #14, 2 cores,
    fresh processes: 720p HEVC 33 000 -> 24 000 page faults, 480p MPEG-4 AVI 42 000-48 000 ->
    36 000-39 000; CPU s in docs/video.md). Not the float mode: its resize outweighs the decode, and
    the last run's frames then wait for one worker (480p MPEG-4: more CPU and wall, measured).
    Each worker resizes on one torch thread (`_single_torch_thread`); the caller's count is restored."""
    scratch = _Scratch(H, W)

    def convert(i: int, rgb: np.ndarray) -> int:
        _single_torch_thread()
        buf = scratch.frame()  # this worker's resized frame, consumed by `put` at once
        resize_frames(rgb, H, W, mode=resize, out=buf)
        put(slots[i], buf)
        return len(slots[i])

    try:
        return sum(k for _, k in decode_pyav(info, idx, timeout_s=timeout_s, workers=workers, convert=convert))
    finally:
        scratch.restore_threads()  # the process-wide default the workers' setting overwrote


def _small_page_array(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised uint8 array on ordinary 4 KiB pages (private anonymous memory).

    numpy asks the kernel for transparent huge pages (madvise) for every array of 4 MiB or more; with
    THP defrag set to "madvise" (the common default) each 2 MiB fault of such an array may compact
    memory synchronously first. On this long-running shared machine that made the clip's patch array
    (60-110 MB) cost 0.06-0.4 s of system time and stalls, varying run to run; on 4 KiB pages it is
    a steady ~0.1 s (issue #14, 480p MPEG-4, 120 frames). It is the result of the call, read by the
    caller like any array (np.frombuffer of an mmap, writable; the mapping lives as long as it)."""
    import mmap

    size = int(np.prod(shape))
    flags = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    if size == 0 or None in flags:  # (Windows has no such flags: numpy's allocation then)
        return np.empty(shape, dtype=np.uint8)
    return np.frombuffer(mmap.mmap(-1, size, flags=flags[0] | flags[1]), dtype=np.uint8).reshape(shape)


class _PatchRows:
    """The patch rows of a clip of `n` sampled frames, written one resized frame at a time
    (`self(ks, frame)`, the `put` of `_decode_and_resize`): the frame goes straight into its
    temporal slot(s) of the rows with `patches.frame_slot` (the patch layout's owner), and the last
    frame also into the padding slots after it, as `patchify` pads. So the rows equal
    `patchify(all frames)` while no [n, H, W, 3] stack, no per-group frame buffers and no patchified
    copy of a group ever exist; the copy reads the frame while the resize has just left it in cache
    (issue #14: 480p MPEG-4, 120 frames, 0.11 -> 0.05 CPU s for the patch layout)."""

    def __init__(self, n: int, H: int, W: int, preset: Preset):
        self.p, self.m, self.tp = preset.patch_size, preset.merge_size, preset.temporal_patch_size
        self.n, self.slots = n, -(-n // self.tp) * self.tp
        self.grid = (self.slots // self.tp, H // self.p, W // self.p)
        self.patches = _small_page_array((self.grid[0] * self.grid[1] * self.grid[2], 3 * self.tp * self.p * self.p))

    def __call__(self, ks: list[int], frame: np.ndarray) -> None:
        p, m = self.p, self.m
        x = frame.reshape(self.grid[1] // m, m, p, self.grid[2] // m, m, p, 3)
        for k in ks:
            for j in range(k, self.slots if k == self.n - 1 else k + 1):
                frame_slot(self.patches, self.grid, j, p, m, self.tp)[...] = x

    def result(self) -> tuple[np.ndarray, tuple[int, int, int]]:
        return self.patches, self.grid


def process_video(
    src,
    preset: Preset | str | None = None,
    *,
    fps: float | None = None,
    nframes: int | None = None,
    min_frames: int | None = None,
    max_frames: int | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    total_pixels: int | None = None,
    video_start: float | None = None,
    video_end: float | None = None,
    sample_fps: float | None = None,
    resized_height: int | None = None,
    resized_width: int | None = None,
    backend: str = "pyav",
    timeout_s: float | None = 120,
    resize: str | None = None,
    fast: bool | None = None,
    info: VideoInfo | None = None,
    decode_workers: int | None = None,
) -> VideoResult:
    """A video file (path) or a frame list (paths / bytes / PIL images / uint8 arrays) → VideoResult.

    `resize`: which reference the frame resize equals bit for bit (video_resize, docs/video.md):
    "qwen-vl-utils" (torchvision v1 float32 path, also transformers on GPU) or "transformers"
    (torchvision v2 uint8 path, transformers' video processors on CPU; 5–12× cheaper). None: the
    preset's `video_resize` (qwen-vl-utils for Qwen2/2.5-VL, transformers for qwen3-vl).
    `fast=True` is the deprecated spelling of resize="transformers".

    `info`: `probe_video(src)` when the caller already has it (the prepare job probes at its media
    check), so the file's packets are not demuxed a second time; it must describe `src`.

    `decode_workers` (PyAV backend): threads that decode independent keyframe-to-target runs of the
    clip at once, each on its own container (`video_decode.decode_pyav`); None: one per core this
    process may use, at most one per run. The frames are the same whatever the count.

    `resized_height` / `resized_width` (both or neither): every frame is resized to
    `resized_size.requested_size(...)` (qwen-vl-utils' explicit size, image band) instead of the
    §6.5 budget; min/max/total_pixels then do not apply.

    Raises VideoDecodeError (unreadable, empty, audio-only, corrupt), VideoTooShortError (fewer than
    2 frames to sample), VideoTimeoutError (decoding took longer than `timeout_s`), AspectRatioError,
    FormatError (bad resized_height / resized_width).
    """
    preset = get_preset(preset)
    if not preset.supports_video:
        raise VlprepError(f"preset {preset.name} has no video support")
    requested_size(resized_height, resized_width, preset.factor)  # refuse bad values before any decode
    resize = resize_mode(resize, fast, default=preset.video_resize)
    if isinstance(src, (list, tuple)):
        return _process_frame_list(src, preset, sample_fps=sample_fps, min_pixels=min_pixels,
                                   max_pixels=max_pixels, total_pixels=total_pixels,
                                   resized_height=resized_height, resized_width=resized_width, resize=resize)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if decode_workers is not None and (isinstance(decode_workers, bool) or int(decode_workers) < 1):
        raise ValueError(f"decode_workers must be at least 1 (or None: one per usable core), got {decode_workers!r}")
    if not isinstance(src, (str, os.PathLike)):
        raise VlprepError(f"video source must be a path or a list of frames, got {type(src).__name__}")
    if info is None:
        info = probe_video(src)
    elif os.path.realpath(info.path) != os.path.realpath(os.fspath(src)):
        raise ValueError(f"info describes {info.path}, not the video {os.fspath(src)}")
    idx, sfps = select_frames(info, fps=fps, nframes=nframes, min_frames=min_frames, max_frames=max_frames,
                              video_start=video_start, video_end=video_end, preset=preset)
    n = len(idx)
    h, w = info.display_size
    H, W = frame_size(h, w, n, preset, min_pixels=min_pixels, max_pixels=max_pixels, total_pixels=total_pixels,
                      resized_height=resized_height, resized_width=resized_width)
    slots: dict[int, list[int]] = {}
    for k, i in enumerate(idx.tolist()):
        slots.setdefault(i, []).append(k)
    rows = _PatchRows(n, H, W, preset)
    parallel = backend == "pyav" and decode_parallelism(info, idx, decode_workers) > 1
    if parallel and resize == TRANSFORMERS:
        filled = _resize_on_decoders(info, idx, H, W, rows, slots, resize=resize, timeout_s=timeout_s,
                                     workers=decode_workers)
    else:
        if backend == "pyav":
            frames = decode_pyav(info, idx, timeout_s=timeout_s, workers=decode_workers)
        else:
            frames = decode_decord(info, idx, timeout_s=timeout_s)
        filled = _decode_and_resize(frames, H, W, rows, slots, resize=resize, decoded_elsewhere=parallel)
    if filled != n:
        raise VideoDecodeError(f"{info.path}: decoded {filled} of {n} sampled frames")
    times = info.frame_times[idx]
    return _result(None, preset, indices=idx, times=times, sample_fps=sfps, original_size=(h, w),
                   duration=info.duration, video_fps=info.avg_fps, is_vfr=info.is_vfr,
                   rotation=info.rotation, backend=backend, patched=rows.result())
