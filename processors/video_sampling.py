"""Which frames of a video to keep, and at what size: spec §6.2–6.5 (qwen-vl-utils 0.0.14).

Pure functions on numbers (numpy only), so the test vectors of spec §6.8 can be checked without
encoding a 10-minute clip. Decoding lives in video_decode.py.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import AspectRatioError, VideoTooShortError
from .resized_size import requested_size
from .sizing import MAX_RATIO, smart_resize

FRAME_FACTOR = 2  # frames per temporal patch; frame counts are multiples of it


def _round_by(x: float, f: int) -> int:
    return round(x / f) * f  # Python round: half to even (spec §2)


def _ceil_by(x: float, f: int) -> int:
    return math.ceil(x / f) * f


def _floor_by(x: float, f: int) -> int:
    return math.floor(x / f) * f


def linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps) in float32, evaluated the way ATen's CPU kernel does.

    The first half is `start + step*i`, the second half `end - step*(steps-1-i)`, with
    `step = (end-start)/(steps-1)` in float32; the multiply-add is fused (one rounding to float32, as
    the compiled kernel does). Emulated in float64, where `step*i` is exact. Only near-ties of the
    later half-even rounding depend on this, but there it decides which frame is picked (§6.4);
    tests compare the rounded indices with torch.linspace itself.
    """
    if steps <= 0:
        return np.zeros(0, dtype=np.float32)
    s = np.float32(start)
    e = np.float32(end)
    if steps == 1:
        return np.array([s], dtype=np.float32)
    step = np.float64(np.float32((e - s) / np.float32(steps - 1)))
    i = np.arange(steps, dtype=np.float64)
    half = steps // 2
    out = np.empty(steps, dtype=np.float32)
    out[:half] = (np.float64(s) + step * i[:half]).astype(np.float32)
    out[half:] = (np.float64(e) - step * (steps - 1 - i[half:])).astype(np.float32)
    return out


def frame_window(total_frames: int, video_fps: float, video_start: float | None = None,
                 video_end: float | None = None) -> tuple[int, int, int]:
    """Spec §6.2: the (start, end, count) frame window for optional video_start / video_end seconds."""
    if video_start is None and video_end is None:
        return 0, total_frames - 1, total_frames
    max_duration = total_frames / video_fps
    start = 0
    end = total_frames - 1
    if video_start is not None:
        start = math.ceil(max(0.0, min(float(video_start), max_duration)) * video_fps)
    if video_end is not None:
        end = min(math.floor(max(0.0, min(float(video_end), max_duration)) * video_fps), total_frames - 1)
    if start >= end:
        raise VideoTooShortError(
            f"video_start={video_start} / video_end={video_end} select no frames of a {total_frames}-frame "
            f"clip at {video_fps:.3f} fps (start frame {start} >= end frame {end}); widen the window"
        )
    return start, end, end - start + 1


def smart_nframes(total_frames: int, video_fps: float, *, fps: float | None = None,
                  nframes: int | None = None, min_frames: int = 4, max_frames: int | None = 768) -> int:
    """Spec §6.3: number of frames to sample (a multiple of 2, in [2, total_frames])."""
    if fps is not None and nframes is not None:
        raise ValueError("give either fps or nframes, not both")
    if nframes is not None:
        n = _round_by(nframes, FRAME_FACTOR)
    else:
        fps_t = 2.0 if fps is None else float(fps)
        lo = _ceil_by(min_frames if min_frames is not None else 4, FRAME_FACTOR)
        hi = _floor_by(max_frames if max_frames is not None else min(768, total_frames), FRAME_FACTOR)
        n = total_frames / video_fps * fps_t
        n = min(max(n, lo), hi, total_frames)
        n = _floor_by(n, FRAME_FACTOR)
    if not 2 <= n <= total_frames:
        raise VideoTooShortError(
            f"nframes should in interval [2, total_frames]: got {n} frames to sample from a clip (or window) "
            f"of {total_frames} frame(s); a video needs at least 2 frames"
            + (f", and nframes={nframes} must not exceed the frame count" if nframes is not None else "")
        )
    return int(n)


def sample_frame_indices(total_frames: int, video_fps: float, *, fps: float | None = None,
                         nframes: int | None = None, min_frames: int = 4, max_frames: int = 768,
                         video_start: float | None = None, video_end: float | None = None,
                         ) -> tuple[np.ndarray, float]:
    """Spec §6.2–6.4: (absolute frame indices int64, sample_fps) exactly as qwen-vl-utils 0.0.14."""
    if total_frames <= 0:
        raise VideoTooShortError(f"video has no frames (total_frames={total_frames})")
    if not video_fps or video_fps <= 0 or not math.isfinite(video_fps):
        raise ValueError(f"video_fps must be a positive number, got {video_fps!r}")
    start, end, count = frame_window(total_frames, video_fps, video_start, video_end)
    n = smart_nframes(count, video_fps, fps=fps, nframes=nframes, min_frames=min_frames, max_frames=max_frames)
    # np.rint is half-to-even like torch.round.
    idx = np.rint(linspace_f32(start, end, n)).astype(np.int64)
    sample_fps = n / max(count, 1e-6) * video_fps
    return idx, float(sample_fps)


def sample_by_time(frame_times: np.ndarray, *, fps: float | None = None, nframes: int | None = None,
                   min_frames: int = 4, max_frames: int = 768, video_start: float | None = None,
                   video_end: float | None = None) -> tuple[np.ndarray, float]:
    """Variable-frame-rate sampling: targets on a uniform time grid, nearest frame by presentation time.

    `frame_times` are the presentation times (seconds, increasing) of every frame. The frame count
    follows §6.3 with the clip's effective rate (frames / duration); target times are spread evenly
    from the first to the last frame of the window, and each picks the frame whose time is nearest
    (earlier one on a tie). sample_fps = n / window duration, which is the §6.4 formula on a
    constant-rate clip. Frames are never picked twice while unpicked ones lie between two targets.
    """
    t = np.asarray(frame_times, dtype=np.float64)
    total = len(t)
    if total <= 0:
        raise VideoTooShortError("video has no frames")
    return _pick_by_time(t, video_start, video_end,
                         lambda count, eff_fps: smart_nframes(count, eff_fps, fps=fps, nframes=nframes,
                                                              min_frames=min_frames, max_frames=max_frames))


def _pick_by_time(t: np.ndarray, video_start: float | None, video_end: float | None,
                  count_rule) -> tuple[np.ndarray, float]:
    """The time-grid pick both frame rules share: `count_rule(count, eff_fps) -> n` is the only part
    that differs between qwen-vl-utils (`smart_nframes`) and transformers (`tf_nframes`)."""
    lo_t = video_start if video_start is not None else -math.inf
    hi_t = video_end if video_end is not None else math.inf
    inside = np.nonzero((t >= lo_t - 1e-9) & (t <= hi_t + 1e-9))[0]
    if len(inside) < 2:
        raise VideoTooShortError(
            f"video_start={video_start} / video_end={video_end} select {len(inside)} frame(s) of a clip "
            f"spanning {t[0]:.3f}–{t[-1]:.3f} s; need at least 2"
        )
    first, last = int(inside[0]), int(inside[-1])
    count = last - first + 1
    # Duration covered by the window, the last frame's own display time (taken as the interval
    # before it) included, so that it equals count / fps on a constant-rate clip.
    window = (t[last] - t[first]) + (t[last] - t[last - 1])
    eff_fps = count / window if window > 0 else 1.0
    n = count_rule(count, eff_fps)
    targets = np.linspace(t[first], t[last], n)
    seg = t[first:last + 1]
    pos = np.searchsorted(seg, targets, side="left")
    pos = np.clip(pos, 1, len(seg) - 1)
    before, after = seg[pos - 1], seg[pos]
    pick = np.where(targets - before <= after - targets, pos - 1, pos)
    return (pick + first).astype(np.int64), float(n / window if window > 0 else eff_fps)


def video_frame_budget(nframes: int, *, min_pixels: int | None, max_pixels: int | None,
                       total_pixels: int | None, video_min_pixels: int, video_max_pixels: int,
                       video_total_pixels: int) -> tuple[int, float]:
    """Spec §6.5: (min_px, max_px) per frame for a clip of `nframes` sampled frames.

    max_px = max(min(VIDEO_MAX, total / n * 2), int(min_px * 1.05)), then capped by an explicit
    max_pixels (qwen-vl-utils only lowers it; a larger request is clamped, as there).
    """
    min_px = video_min_pixels if min_pixels is None else min_pixels
    total_px = video_total_pixels if total_pixels is None else total_pixels
    max_px = max(min(video_max_pixels, total_px / nframes * FRAME_FACTOR), int(min_px * 1.05))
    if max_pixels is not None:
        max_px = min(max_pixels, max_px)
    return min_px, max_px


def video_frame_size(height: int, width: int, nframes: int, *, factor: int = 28, min_pixels: int | None = None,
                     max_pixels: int | None = None, total_pixels: int | None = None,
                     video_min_pixels: int = 128 * 28 * 28, video_max_pixels: int = 768 * 28 * 28,
                     video_total_pixels: int = int(128000 * 28 * 28 * 0.9), resized_height: int | None = None,
                     resized_width: int | None = None) -> tuple[int, int]:
    """Spec §6.5: the (H, W) every sampled frame is resized to.

    An item carrying resized_height and resized_width gets qwen-vl-utils' requested size instead
    (`resized_size.requested_size`: the image band, no per-frame budget, min/max/total_pixels unused).
    """
    requested = requested_size(resized_height, resized_width, factor)
    if requested is not None:
        return requested
    min_px, max_px = video_frame_budget(
        nframes, min_pixels=min_pixels, max_pixels=max_pixels, total_pixels=total_pixels,
        video_min_pixels=video_min_pixels, video_max_pixels=video_max_pixels,
        video_total_pixels=video_total_pixels)
    return smart_resize(height, width, factor, min_px, max_px)


# ---------------------------------------------------------------- transformers' Qwen3VLVideoProcessor
# (preset.video_rule == "transformers"; docs/qwen3_vl.md). Pure numbers, like the rules above.


def tf_nframes(total_frames: int, video_fps: float, *, fps: float | None = 2.0, nframes: int | None = None,
               min_frames: int = 4, max_frames: int = 768) -> int:
    """Qwen3VLVideoProcessor.sample_frames' count: int(total / video_fps * fps) clamped to
    [min_frames, min(max_frames, total)]; an explicit `nframes` is taken as given (within the clip)."""
    if fps is not None and nframes is not None:
        raise ValueError("give either fps or nframes, not both")
    if nframes is not None:
        n = int(nframes)
    else:
        n = int(total_frames / video_fps * (2.0 if fps is None else float(fps)))
        n = min(max(n, min_frames), max_frames, total_frames)
    if not 2 <= n <= total_frames:
        raise VideoTooShortError(
            f"{n} frame(s) to sample from a clip (or window) of {total_frames} frame(s); a video needs at "
            f"least 2 frames" + (f", and nframes={nframes} must not exceed the frame count" if nframes is not None else ""))
    return n


def tf_frame_indices(total_frames: int, video_fps: float, *, fps: float | None = 2.0, nframes: int | None = None,
                     min_frames: int = 4, max_frames: int = 768, video_start: float | None = None,
                     video_end: float | None = None) -> tuple[np.ndarray, float]:
    """(absolute frame indices, sample_fps): `np.linspace(0, total - 1, n).round()` as
    Qwen3VLVideoProcessor.sample_frames (float64 linspace, half-to-even rounding). video_start /
    video_end (a qwen-vl-utils option the processor does not have) narrow the clip to spec §6.2's
    window first; the indices stay absolute, so timestamps are seconds from the clip's start."""
    if total_frames <= 0:
        raise VideoTooShortError(f"video has no frames (total_frames={total_frames})")
    if not video_fps or video_fps <= 0 or not math.isfinite(video_fps):
        raise ValueError(f"video_fps must be a positive number, got {video_fps!r}")
    start, end, count = frame_window(total_frames, video_fps, video_start, video_end)
    n = tf_nframes(count, video_fps, fps=fps, nframes=nframes, min_frames=min_frames, max_frames=max_frames)
    idx = start + np.linspace(0, count - 1, n).round().astype(np.int64)
    return idx, float(n / count * video_fps)


def tf_sample_by_time(frame_times: np.ndarray, *, fps: float | None = 2.0, nframes: int | None = None,
                      min_frames: int = 4, max_frames: int = 768, video_start: float | None = None,
                      video_end: float | None = None) -> tuple[np.ndarray, float]:
    """Variable-frame-rate clips under the transformers rule: the count from `tf_nframes` with the
    clip's effective rate, each target time on a uniform grid picking the nearest frame (as
    `sample_by_time` does for the qwen-vl-utils rule)."""
    t = np.asarray(frame_times, dtype=np.float64)
    if len(t) < 2:
        raise VideoTooShortError(f"video has {len(t)} frame(s); a video needs at least 2 frames")
    return _pick_by_time(t, video_start, video_end,
                         lambda count, eff_fps: tf_nframes(count, eff_fps, fps=fps, nframes=nframes,
                                                           min_frames=min_frames, max_frames=max_frames))


def tf_video_frame_size(height: int, width: int, nframes: int, *, factor: int = 32, temporal_factor: int = 2,
                        min_pixels: int = 4096, max_pixels: int = 25_165_824) -> tuple[int, int]:
    """Qwen3VLVideoProcessor's smart_resize: ONE band for the whole clip (t_bar * H * W), t_bar =
    round(nframes / 2) * 2 (half-even), the scale from the unpadded frame count; sides below `factor`
    are first scaled up (int()), aspect ratio above 200 is an error."""
    if nframes < temporal_factor:
        raise VideoTooShortError(f"{nframes} frame(s): a video needs at least {temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise AspectRatioError(f"aspect ratio {max(height, width) / min(height, width):.1f} of a {height}x{width} "
                               f"video is above {MAX_RATIO}; crop or pad it before preprocessing")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(nframes / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(nframes * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (nframes * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def group_timestamps(frame_seconds, temporal_patch_size: int = 2) -> list[float]:
    """Seconds written before each temporal group (Qwen3VLProcessor._calculate_timestamps): the frame
    times padded to a multiple of the temporal patch size by repeating the last, then the mean of
    each group's first and last time."""
    t = [float(x) for x in frame_seconds]
    if not t:
        return []
    t += [t[-1]] * (-len(t) % temporal_patch_size)
    return [(t[i] + t[i + temporal_patch_size - 1]) / 2 for i in range(0, len(t), temporal_patch_size)]
