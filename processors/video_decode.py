"""Decode only the frames that were sampled.

PyAV backend: frames are addressed by presentation index (position in pts order, as probed). Before
each target the decoder either keeps decoding forward (the target is in the GOP being decoded) or
seeks to the keyframe at or before the target (a keyframe lies between the last decoded frame and
the target, so seeking strictly saves work). A seek is checked on the packet it lands on and, if that
is not a keyframe at/before the one sought, redone by dts (MPEG-TS bisects by dts) or byte position
(`_seek_to_key`); MPEG-PS is never sought (`entry_keys`). Only kept frames are converted to RGB; frames the
decoder must pass over stay in YUV and are dropped.

decord backend: `get_batch` on the indices, as qwen-vl-utils does, in chunks so the time limit is
checked between them.

Non-reference frames (PyAV, H.264, MPEG-4 Part 2 and single-layer HEVC): while the packets being fed belong to no
target, the decoder runs with `skip_frame=NONREF`, so B-frames nothing else predicts from are not
decoded at all; packets whose pts is a target's are decoded with `DEFAULT`. The choice is per packet:
FFmpeg's frame threads copy `skip_frame` from the user context when each packet is submitted
(`update_context_from_user` in pthread_frame.c), so frame threading applies it to exactly that
packet. Reference frames are decoded exactly as in a plain decode, so every output frame is bit for
bit the same; frames are still identified by pts, never by counting outputs. If a target is not
produced while skipping (e.g. a reorder-depth guess that differs without the skipped frames), the
span is decoded again from its keyframe without skipping.

GOP-parallel (PyAV): the seek rule above splits the targets into runs (`decode_runs`), each an
independent decode from a keyframe. With several runs and several usable cores, worker threads
(`decode_workers`: one per core this process may use, at most one per run; `workers=` overrides)
each open their own container and take the next run from a shared counter; each run is decoded by the
same sequential code (`_decode_targets`, RGB conversion on the worker) into that run's queue, and
the caller reads runs 0, 1, 2 … in order. FFmpeg and swscale release the GIL, so the workers decode
on separate cores. Memory is bounded by a lookahead window of runs and a byte budget of queued frames
(`_decode_parallel`); the worker that takes the last run decodes it with FFmpeg's threads, as the
others' cores fall idle. One run, files without pts, or one worker: the sequential path, unchanged.

Opening: MP4/MOV decoder containers are opened without the decode FFmpeg's stream probe does
(`_open_container`: 0.19 CPU s per open at 4K), checked against the probe.

Both yield `(presentation_index, rgb uint8 [H, W, 3])` in increasing index order, rotation applied.
"""
from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator

import numpy as np

from .errors import VideoDecodeError, VideoTimeoutError
from .video_probe import VideoInfo


def rotate_frame(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a frame counter-clockwise by `rotation` degrees (the display-matrix convention)."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


class _Deadline:
    def __init__(self, path: str, timeout_s: float | None, total: int):
        self.path, self.timeout_s, self.total = path, timeout_s, total
        self.end = None if not timeout_s else time.monotonic() + float(timeout_s)

    def check(self, done: int) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise VideoTimeoutError(
                f"{self.path}: decoding took longer than timeout_s={self.timeout_s} s "
                f"({done} of {self.total} sampled frames done); raise timeout_s or drop this file")


def decode_pyav(info: VideoInfo, indices: np.ndarray, *, timeout_s: float | None = 120,
                threads: int | None = None, workers: int | None = None, convert=None) -> Iterator[tuple[int, object]]:
    """Yield the frames at `indices` (presentation order, unique, increasing).

    `threads`: decoder threads of each container (0: FFmpeg's choice); None: `decoder_threads(info,
    workers)`. `workers`: how many threads decode independent runs (`decode_runs`) at once, each on its
    own container; None: `decode_workers(runs)` (the cores this process may use); capped at the
    number of runs, and 1 decodes on the calling thread exactly as before.

    `convert(index, rgb) -> value`: run on the thread that decoded the frame (a GOP-parallel worker,
    else the caller), and `(index, value)` is yielded instead of the frame; no reference to the RGB
    frame is kept after it returns (`process_video` resizes it into its patch rows there)."""
    targets = np.unique(np.asarray(indices, dtype=np.int64))
    if len(targets) == 0:
        return
    if targets[0] < 0 or targets[-1] >= info.num_frames:
        raise ValueError(f"frame indices {targets[0]}..{targets[-1]} outside 0..{info.num_frames - 1}")
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers must be at least 1 (or None: one per usable core), got {workers}")
    deadline = _Deadline(info.path, timeout_s, len(targets))
    runs = decode_runs(info, targets)
    n = decode_workers(len(runs), workers)
    if n > 1:
        yield from _decode_parallel(info, runs, n, threads, deadline, targets, convert)
        return
    with _Opened(info, threads, targets, workers=1) as o:
        if not info.has_pts:
            yield from _decode_sequential(o.container, o.stream, info, targets, deadline, convert)
            return
        yield from _decode_targets(o, info, targets, deadline, convert=convert)


def decode_runs(info: VideoInfo, targets: np.ndarray) -> list[np.ndarray]:
    """`targets` split where `_decode_targets` seeks: a new run starts at a target whose keyframe
    (at/before it) lies after the previous target, so each run is an independent decode that starts
    at a keyframe. Files without timestamps never seek: one run."""
    targets = np.asarray(targets, dtype=np.int64)
    if not info.has_pts or len(targets) < 2:
        return [targets]
    keys = entry_keys(info)
    key_of = keys[np.searchsorted(keys, targets, side="right") - 1]
    starts = np.flatnonzero(key_of[1:] > targets[:-1]) + 1
    return np.split(targets, starts)


def decode_parallelism(info: VideoInfo, indices: np.ndarray, workers: int | None = None) -> int:
    """How many threads `decode_pyav(info, indices, workers=workers)` decodes on (1: the caller's own)."""
    targets = np.unique(np.asarray(indices, dtype=np.int64))
    return decode_workers(len(decode_runs(info, targets)), workers) if len(targets) else 1


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; the CPU count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # (no sched_getaffinity: macOS, Windows)
        return os.cpu_count() or 1


def decode_workers(num_runs: int, requested: int | None = None) -> int:
    """Decode threads for a clip of `num_runs` runs: `requested` (None: `usable_cores()`), at most one
    per run."""
    want = usable_cores() if requested is None else int(requested)
    return max(1, min(want, num_runs))


class _Stopped(Exception):
    """The consumer of a GOP-parallel decode went away: a worker ends quietly."""


class _Opened:
    """One container opened and configured for decoding, and the decode state that carries over from
    one run to the next on it (the keyframes a failed seek ruled out, whether non-reference frames may
    still be skipped, the skip mode the decoder is in), as in one sequential pass."""

    def __init__(self, info: VideoInfo, threads: int | None, targets: np.ndarray, *, workers: int):
        self.container, self.probe_skipped = _open_container(info)
        try:
            self.stream = self.container.streams.video[0]
            self.cc = cc = self.stream.codec_context
            if info.h264_no_reorder_info:
                # No reorder depth in the SPS: FFmpeg's h264 decoder would start from a guess and drop
                # the first picture needing a deeper one; strict=strict makes it take the depth from
                # the level's DPB size (h264_select_output_frame). Set before the first decode opens it.
                cc.options = {**cc.options, "strict": "strict"}
            cc.thread_type = decoder_thread_type(info)
            cc.thread_count = decoder_threads(info, workers) if threads is None else threads
            if info.has_pts:
                self.to_rgb = _RGB()
                self.index_by_pts = _index_by_pts(info.frame_pts)
                self.keys = entry_keys(info)
                self.key_set = frozenset(info.key_indices.tolist())
                self.fresh = True  # nothing read yet: the container is at the start
                self.seek_modes = _seek_modes(info)
                self.skip_ok = _nonref_skip_safe(self.stream, info)
                self.target_pts = frozenset(int(p) for p in info.frame_pts[targets]) if self.skip_ok else frozenset()
                self.mode = "DEFAULT"
        except BaseException:
            self.container.close()
            raise

    def close(self) -> None:
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Containers whose header holds everything the decoder is set up from, and whose packets carry pts
# and dts from the file's index, so FFmpeg's stream probe adds nothing there (`_open_container`).
# Not Matroska/WebM: it stores no dts, the demuxer derives them from the probe's reorder guess (an
# H.264 MKV opened without the probe's decode demuxed other dts and got reorder depth 1, not 2); and
# on the 720p VP9 WebM clip the open cost the same 0.024 CPU s with or without it.
_HEADER_FORMATS = ("mov", "mp4")
# FFmpeg's stream probe (avformat_find_stream_info) decodes the first frame(s) on a decoder of its own
# (per open, CPU: 4K H.264 0.19 s, 1080p60 0.028 s, 720p 0.016 s); with skip_frame=all that decoder
# decodes nothing (0.006 / 0.002 / 0.001 s). The option reaches the probe's decoder only: the
# stream's codec context is made afresh from the stream parameters (its skip_frame stays DEFAULT).
_NO_PROBE_DECODE = {"skip_frame": "all"}


def _open_container(info: VideoInfo):
    """Open `info.path` for decoding: (container, whether the stream probe's decode was skipped).

    Where the container's header holds the codec parameters (`_HEADER_FORMATS`), open it without the
    stream probe's decode, and keep that only if its video stream is the probe's (same index, codec
    and coded size); its decoder then gets the reorder depth a plain open leaves
    (`VideoInfo.reorder_depth`: MP4's own guess from the composition offsets can be lower, e.g. 1
    instead of 2 for x264 with 2 B-frames). So the decoder starts from a plain open's parameters and
    the demuxer gives the same packets (tested), hence the same frames. Anything else: a plain open."""
    import av

    if info.reorder_depth is not None and any(f in _HEADER_FORMATS for f in info.container.split(",")):
        try:
            container = av.open(info.path, mode="r", options=_NO_PROBE_DECODE)
        except (av.FFmpegError, OSError, ValueError):
            container = None
        if container is not None:
            if _same_stream(container, info):
                container.streams.video[0].codec_context.reorder_depth = info.reorder_depth
                return container, True
            container.close()
    try:
        return av.open(info.path, mode="r"), False
    except (av.FFmpegError, OSError) as e:
        raise VideoDecodeError(f"{info.path}: cannot reopen for decoding ({e})") from e


def _same_stream(container, info: VideoInfo) -> bool:
    """Whether `container`'s first video stream is the probed one (`_open_container`)."""
    if not container.streams.video or container.format is None or container.format.name != info.container:
        return False
    stream = container.streams.video[0]
    cc = stream.codec_context
    return (cc is not None and stream.index == info.stream_index and cc.name == info.codec
            and (cc.width, cc.height) == (info.width, info.height))


def _decode_targets(o: _Opened, info: VideoInfo, targets: np.ndarray, deadline, done0: int = 0, convert=None
                    ) -> Iterator[tuple[int, np.ndarray]]:
    """Decode `targets` (increasing presentation indices) on the open container `o`: the sequential
    algorithm (module docstring). `done0`: targets of the clip finished before these (for the
    time-limit message)."""
    pts, index_by_pts, to_rgb = info.frame_pts, o.index_by_pts, o.to_rgb
    ti = 0
    retries = 0
    while ti < len(targets):
        # Every pass starts at a keyframe: the one at/before the first target, or after a break out
        # of the packet loop below, which each lead here (a keyframe lies between the last output and
        # the next target; the seek landed after the target; a target was lost while skipping).
        target = int(targets[ti])
        k = int(o.keys[np.searchsorted(o.keys, target, side="right") - 1])  # keyframe at/before target
        packets = _seek_to_key(o, info, k)
        pos = -1          # presentation index of the last frame the decoder output
        first_after_seek = True
        restart = False
        for packet in packets:
            deadline.check(done0 + ti)
            if o.skip_ok:
                want = _SKIP_MODE if packet.pts is not None and packet.pts not in o.target_pts else "DEFAULT"
                if want != o.mode:
                    o.cc.skip_frame = o.mode = want
            for frame in _decode_packet(packet, info):
                idx = _index_of(frame, index_by_pts)
                if idx is None:
                    continue
                if first_after_seek and idx > target:
                    # Landed after the target: the container's index is coarser than its
                    # keyframe flags. Seek one keyframe further back and try again.
                    retries += 1
                    if retries > 8:
                        raise VideoDecodeError(
                            f"{info.path}: seeking cannot reach frame {target}; the container index is broken")
                    o.keys = o.keys[o.keys < k] if np.any(o.keys < k) else o.keys[:1]
                    restart = True
                    break
                first_after_seek = False
                pos = idx
                if idx < target:
                    continue
                if idx > target:
                    if o.skip_ok:
                        _stop_skipping(o)
                        restart = True  # decode the span again from its keyframe
                        break
                    raise VideoDecodeError(
                        f"{info.path}: frame {target} (pts {int(pts[target])}) was never produced by the "
                        f"{info.codec} decoder (corrupt packet?)")
                if convert is None:
                    yield target, rotate_frame(to_rgb(frame), info.rotation)
                else:  # no reference kept: the next frame's conversion reuses this one's memory
                    yield target, convert(target, rotate_frame(to_rgb(frame), info.rotation))
                ti += 1
                if ti >= len(targets):
                    return
                target = int(targets[ti])
                next_key = int(o.keys[np.searchsorted(o.keys, target, side="right") - 1])
                if next_key > pos:
                    restart = True  # a keyframe is between here and the next target: seek
                    break
            if restart:
                break
        else:
            if o.skip_ok:
                _stop_skipping(o)
                continue  # decode the span again from its keyframe
            raise VideoDecodeError(
                f"{info.path}: the stream ended before frame {target} of {info.num_frames} "
                f"(last decoded frame {pos}); the file is truncated or its frame count is wrong")


def _seek_modes(info: VideoInfo) -> dict[str, dict[int, int]]:
    """How a keyframe (presentation index) can be sought, in the order `_seek_to_key` tries them:
    by its pts (demuxers with an index: MP4, Matroska, ...), by its dts (demuxers that bisect the
    file by decode timestamp: MPEG-TS, MPEG-PS), by its byte position (where the probe saw one)."""
    keys = info.key_indices.tolist()
    modes = {"pts": {k: int(info.frame_pts[k]) for k in keys}}
    if info.key_dts is not None:
        modes["dts"] = dict(zip(keys, info.key_dts.tolist()))
    if info.key_pos is not None:
        modes["byte"] = {k: p for k, p in zip(keys, info.key_pos.tolist()) if p >= 0}
    return modes


def _seek_to_key(o: _Opened, info: VideoInfo, k: int):
    """Seek `o` so that decoding starts at keyframe `k` (or a keyframe before it) and return the
    packet iterator from there.

    Each way of seeking (`_seek_modes`) is checked on the first packet it lands on: that packet must
    be a keyframe at or before `k`. FFmpeg's timestamp seek on MPEG-TS/PS bisects by dts, so a pts
    target lands on the packet whose dts is just below it, after the keyframe (a non-key frame the
    decoder cannot start from). The way that worked is tried first next time. If none lands right,
    the pts seek is used as before (the caller steps back a keyframe when it overshoots)."""
    import av
    from itertools import chain

    container, stream = o.container, o.stream
    if o.fresh:
        o.fresh = False
        if k == int(info.key_indices[0]):
            return container.demux(stream)  # just opened: decode from the start, as a full decode
    for mode in list(o.seek_modes):
        target = o.seek_modes[mode].get(k)
        if target is None:
            continue
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False,
                           unsupported_byte_offset=mode == "byte")
            packets = container.demux(stream)
            first = next((p for p in packets if p.size), None)
        except av.FFmpegError:
            continue
        if first is not None and _starts_at_key(first, o, k):
            if mode != next(iter(o.seek_modes)):
                o.seek_modes = {mode: o.seek_modes[mode], **o.seek_modes}
            return chain([first], packets)
    try:
        container.seek(int(info.frame_pts[k]), stream=stream, backward=True, any_frame=False)
    except av.FFmpegError as e:
        raise VideoDecodeError(f"{info.path}: seek to frame {k} failed ({e})") from e
    return container.demux(stream)


def _starts_at_key(packet, o: _Opened, k: int) -> bool:
    """Whether decoding can start at `packet`: a keyframe at or before keyframe `k` (the first frame
    also where its packet carries no keyframe flag, as the probe treats it)."""
    ts = packet.pts if packet.pts is not None else packet.dts
    idx = o.index_by_pts.get(ts) if ts is not None else None
    return idx is not None and idx <= k and idx in o.key_set and (packet.is_keyframe or idx == 0)


# Demuxers whose packets get other timestamps after a seek than in a sequential read: MPEG-PS/VOB
# (packets whose PES header has no timestamp get guessed ones; measured after a seek: +1500 ticks of
# 90 kHz, keyframe flags missing), so frames could not be found by pts. Decoded from the start.
_NO_SEEK_FORMATS = ("mpeg", "vob", "svcd", "dvd")


def entry_keys(info: VideoInfo) -> np.ndarray:
    """The keyframes (presentation indices) decoding may start at: all of them, or only the first
    frame where the container's seek cannot be trusted (`_NO_SEEK_FORMATS`)."""
    if any(f in _NO_SEEK_FORMATS for f in info.container.split(",")):
        return info.key_indices[:1]
    return info.key_indices


_LOOKAHEAD_BYTES = 64 << 20  # decoded frames the workers may hold ahead of the consumer (≥ 1 frame each)
_LOOKAHEAD_RUNS = 2           # a worker starts a run only within this many runs per worker of the consumer's
_JOIN_S = 10.0               # how long a stopped worker may take to leave an FFmpeg call
# The last run decodes with FFmpeg's thread count (`_decode_parallel`) when that needs no open or a
# cheap one (`_open_container` skipped the probe's decode): 2 cores at load 2.4-2.9, decode alone,
# 7 rounds, median wall 4K H.264 1.27 -> 1.16 s, 1080p60 0.239 -> 0.222 s, CPU +1 %. Not after a
# plain open: 720p VP9 WebM gained no wall time and cost 9 % CPU (its open plus frame threads).
_LAST_RUN_ALL_THREADS = True


class _WorkerDeadline:
    """The clip's deadline, plus the consumer's stop signal, checked between packets."""

    def __init__(self, deadline: _Deadline, stop):
        self.deadline, self.stop = deadline, stop

    def check(self, done: int) -> None:
        if self.stop.is_set():
            raise _Stopped
        self.deadline.check(done)


def _decode_parallel(info: VideoInfo, runs: list[np.ndarray], n_workers: int, threads: int | None,
                     deadline: _Deadline, targets: np.ndarray, convert=None) -> Iterator[tuple[int, np.ndarray]]:
    """GOP-parallel decode: `n_workers` threads, each with its own container (opened at its first
    run, reused for the next; the last run gets a fresh one with FFmpeg's threads where opening is
    cheap, `_LAST_RUN_ALL_THREADS`), take the next run from a shared counter and decode it with
    `_decode_targets` (RGB conversion included) into that run's queue; this generator yields run 0,
    1, 2 … in order, so frames come out in increasing index order as from the sequential path.

    Memory: a worker starts run r only while r < (the consumer's run) + `_LOOKAHEAD_RUNS` × n_workers,
    and waits before queueing a frame while the queued frames and it would exceed `_LOOKAHEAD_BYTES` —
    except the worker of the consumer's run when its queue is empty, so the consumer always gets its
    next frame.
    A worker's exception is queued in place of its run's next frame and raised here when the
    consumer reaches it (the frames before it are yielded first, as sequentially). When this
    generator ends early (closed, error, timeout) the workers stop at their next packet, close their
    containers, and are joined."""
    import threading

    cond = threading.Condition()
    stop = threading.Event()
    queues: list[deque] = [deque() for _ in runs]
    st = {"next": 0, "current": 0, "queued": 0}
    offsets = np.cumsum([0] + [len(r) for r in runs]).tolist()
    wd = _WorkerDeadline(deadline, stop)
    # The last run: the other workers finish theirs and leave their cores idle, so it decodes with
    # FFmpeg's threads, on a fresh decoder (the thread count is fixed once a decoder is open) where
    # that changes the count and opening one is cheap (`_LAST_RUN_ALL_THREADS`).
    last_run_reopens = (_LAST_RUN_ALL_THREADS and threads is None
                        and decoder_threads(info, 1) != decoder_threads(info, n_workers))

    def worker() -> None:
        o = None
        try:
            while True:
                with cond:
                    while not stop.is_set() and st["next"] < len(runs) and st["next"] >= st["current"] + _LOOKAHEAD_RUNS * n_workers:
                        cond.wait()
                    if stop.is_set() or st["next"] >= len(runs):
                        return
                    r = st["next"]
                    st["next"] += 1
                try:
                    if r == len(runs) - 1 and last_run_reopens and (o is None or o.probe_skipped):
                        if o is not None:
                            o.close()
                            o = None  # (closed once, even if the new open fails)
                        o = _Opened(info, None, targets, workers=1)
                    elif o is None:
                        o = _Opened(info, threads, targets, workers=n_workers)
                    for item in _decode_targets(o, info, runs[r], wd, done0=offsets[r], convert=convert):
                        nbytes = getattr(item[1], "nbytes", 0)
                        with cond:
                            while not stop.is_set() and st["queued"] + nbytes > _LOOKAHEAD_BYTES and not (
                                    r == st["current"] and not queues[r]):
                                cond.wait()
                            if stop.is_set():
                                return
                            queues[r].append(item)
                            st["queued"] += nbytes
                            cond.notify_all()
                    end = _END
                except _Stopped:
                    return
                except BaseException as e:  # noqa: BLE001 - raised again by the consumer (any error, so
                    end = e                     # it never waits for a frame that will not come)
                with cond:
                    queues[r].append(end)
                    cond.notify_all()
                if end is not _END:
                    return
        finally:
            if o is not None:
                o.close()

    pool = [threading.Thread(target=worker, name=f"vlprep-decode-{k}", daemon=True) for k in range(n_workers)]
    for t in pool:
        t.start()
    done = 0
    try:
        for r in range(len(runs)):
            while True:
                with cond:
                    while not queues[r]:
                        deadline.check(done)  # a worker stuck in one FFmpeg call cannot check it
                        cond.wait(timeout=_wait_s(deadline))
                    item = queues[r].popleft()
                    if type(item) is tuple:
                        st["queued"] -= getattr(item[1], "nbytes", 0)
                        cond.notify_all()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
                done += 1
            with cond:
                st["current"] = r + 1
                cond.notify_all()
    finally:
        stop.set()
        with cond:
            cond.notify_all()
        for t in pool:
            t.join(_JOIN_S)


_END = object()  # a run's queue: no more frames


def _wait_s(deadline: _Deadline) -> float:
    if deadline.end is None:
        return 1.0
    return min(1.0, max(0.001, deadline.end - time.monotonic() + 0.001))


_THREAD_TYPE = "SLICE"  # see docs/video.md: frame threads cost more than they save on small frames
_FRAME_THREAD_CODECS = ("vp9",)  # frame + tile threads: less wall and no more CPU (issue #14)


def decoder_thread_type(info: VideoInfo) -> str:
    """FFmpeg's thread_type for this clip: "AUTO" (frame and slice/tile threads) for VP9, else
    "SLICE". VP9 cannot skip frames (see `_nonref_skip_safe`), so every frame is decoded and frame
    threads have whole frames to overlap: 720p VP9, process_video wall 1.55 -> 1.24 s (default mode),
    1.02 -> 0.89 s (transformers), CPU unchanged; its decode alone 0.91 -> 0.83 CPU s. For H.264/HEVC
    at 720p-1080p AUTO also measured faster in wall, but on a machine at load 4-5, where a process with
    more threads simply gets more of the cores, and 4K H.264 was slower (4.2 -> 5.2 s): not adopted
    until an idle machine confirms it (docs/video.md). The thread type never changes the frames
    (tested)."""
    return "AUTO" if info.codec in _FRAME_THREAD_CODECS else _THREAD_TYPE
_ONE_THREAD_BELOW_PIXELS = 400_000  # frames smaller than this (≈ below 720p) decode on one thread


def decoder_threads(info: VideoInfo, workers: int = 1) -> int:
    """Decoder threads of each container for this clip when `workers` containers decode at once.

    One worker (the sequential path): 1 for small frames, else 0 (FFmpeg's count). Slice threads
    only split a frame that has several slices (VP9 tiles, HEVC WPP rows, multi-slice H.264); on
    small frames the per-frame hand-off to the thread pool costs more than it saves (10-min 240p
    H.264: 2.7 vs 3.2 CPU s, 3 000 vs 31 000 context switches, and less wall time; 480p MPEG-4 and
    720p H.264: equal; 720p VP9: 1 thread saves CPU but tile threads save wall).

    Several workers (GOP-parallel): the cores are shared out, `usable_cores() // workers` each, at
    least 1 — so 1 where the workers already fill the cores: FFmpeg's own threads then only add CPU
    (decode alone, 2 workers on 2 cores, median CPU s with 1 vs FFmpeg's threads per worker: 720p
    HEVC 0.20 vs 0.26, VP9 0.73 vs 0.77, 240p 2.27 vs 2.40; docs/video.md). Small frames stay on one.
    The thread count never changes the decoded frames (tested)."""
    if info.width * info.height < _ONE_THREAD_BELOW_PIXELS:
        return 1
    if workers > 1:
        return max(1, usable_cores() // workers)
    return 0
_SKIP_MODE = "NONREF"  # what non-target packets are decoded with


def _stop_skipping(o: _Opened) -> None:
    """A target was not produced while non-reference frames were skipped: decode plainly from now on
    on this container."""
    o.skip_ok, o.mode = False, "DEFAULT"
    o.cc.skip_frame = "DEFAULT"


def _nonref_skip_safe(stream, info: VideoInfo) -> bool:
    """Whether `skip_frame=NONREF` drops only frames that no other frame predicts from.

    H.264: a NAL with nal_ref_idc 0 is never a reference. HEVC: FFmpeg drops the "sub-layer
    non-reference" NAL types, which pictures of *higher* temporal sub-layers may still reference, so
    only streams with one temporal layer (hvcC numTemporalLayers == 1) qualify. MPEG-4 Part 2: FFmpeg
    drops B-VOPs, which the standard never uses as references. VP9: not enabled — libvpx streams
    have (almost) no frames that refresh no reference slot, and FFmpeg's decoder drops none under
    NONREF (measured: 150 of 150 decoded with alt-ref frames on), so there is nothing to gain. Other
    codecs: no (their decoders' notion of NONREF is not checked here). Needs packet pts to tell
    targets apart.
    """
    if not info.has_pts:
        return False
    if info.codec in ("h264", "mpeg4"):
        return True
    if info.codec == "hevc":
        extra = stream.codec_context.extradata or b""
        return len(extra) >= 23 and extra[0] == 1 and (extra[21] >> 3) & 7 == 1
    return False


class _RGB:
    """Decoded frame -> rgb24 array [h, w, 3] (a view of the converted frame's plane), with one
    swscale context for the whole clip on the calling thread.

    `frame.to_ndarray(format="rgb24")` makes a new reformatter, hence a new SwsContext, for every
    frame, with swscale's automatic thread count: on a 2-core machine each conversion set up its
    context and handed slices to other threads that the resize thread wanted (issue #14: 10-min 240p,
    0.39 -> 0.16 CPU ms per frame). Same function, same parameters, so the same pixels (tested)."""

    def __init__(self):
        from av.video.reformatter import VideoReformatter

        self._r = VideoReformatter()

    def __call__(self, frame) -> np.ndarray:
        return self._r.reformat(frame, format="rgb24", threads=1).to_ndarray()


def _decode_packet(packet, info: VideoInfo):
    import av

    try:
        return packet.decode()
    except av.FFmpegError as e:
        raise VideoDecodeError(f"{info.path}: {info.codec} decoder error at pts {packet.pts} ({e})") from e


def _index_by_pts(pts: np.ndarray) -> dict[int, int]:
    """Presentation index of each pts (the first, if a broken file repeats one): a dict lookup per
    decoded frame instead of a numpy searchsorted call (issue #14: 0.4 of 2.8 CPU s on the 10-min
    240p clip's 11 000 decoded frames)."""
    vals = pts.tolist()
    return dict(zip(reversed(vals), range(len(vals) - 1, -1, -1)))


def _index_of(frame, index_by_pts: dict[int, int]) -> int | None:
    return None if frame.pts is None else index_by_pts.get(frame.pts)


def _decode_sequential(container, stream, info: VideoInfo, targets: np.ndarray, deadline: _Deadline, convert=None):
    """Files without usable timestamps: count frames in output order, never seek."""
    ti, idx = 0, -1
    to_rgb = _RGB()
    for packet in container.demux(stream):
        deadline.check(ti)
        for frame in _decode_packet(packet, info):
            idx += 1
            if idx == targets[ti]:
                rgb = rotate_frame(to_rgb(frame), info.rotation)
                yield idx, rgb if convert is None else convert(idx, rgb)
                del rgb
                ti += 1
                if ti >= len(targets):
                    return
    raise VideoDecodeError(f"{info.path}: the stream ended after {idx + 1} frames, before frame {int(targets[ti])}")


# Where decord's seek lands on the wrong frame, read sequentially instead (dmlc/decord#91). Seen here:
# AVI (after a seek past the first keyframe it returns frames from the start again), HEVC with
# open GOPs (x265's default: after a seek to a CRA frame every frame is off by the dropped leading
# pictures), MPEG-PS and MPEG-1/2 and MPEG-4 Part 2 with B-frames in any container (MKV, MOV: frames
# a few before or after the one asked for). qwen-vl-utils' decord path returns those wrong frames.
_DECORD_SEQUENTIAL_FORMATS = ("avi", "mpeg")
_DECORD_SEQUENTIAL_CODECS = ("hevc", "mpeg1video", "mpeg2video", "mpeg4")
# Where decord is wrong even reading in order: MPEG-TS (its seek to the start lands after the first
# keyframe, so frame i is frame i + GOP, the last repeated; with one keyframe it fails).
_DECORD_REFUSED_FORMATS = ("mpegts",)


def decode_decord(info: VideoInfo, indices: np.ndarray, *, timeout_s: float | None = 120,
                  chunk: int = 16, threads: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Yield the frames at `indices` with decord (`get_batch`, as qwen-vl-utils)."""
    try:
        import decord
    except ImportError as e:
        raise VideoDecodeError("backend='decord' needs the decord package (pip install decord)") from e
    targets = np.unique(np.asarray(indices, dtype=np.int64))
    deadline = _Deadline(info.path, timeout_s, len(targets))
    if any(f in info.container.split(",") for f in _DECORD_REFUSED_FORMATS):
        raise VideoDecodeError(
            f"{info.path}: decord returns the wrong frames from {info.container} files (its seek to the start "
            f"lands after the first keyframe); use backend='pyav'")
    try:
        vr = decord.VideoReader(info.path, ctx=decord.cpu(0), num_threads=threads)
    except Exception as e:  # decord raises its own DECORDError (a RuntimeError subclass)
        raise VideoDecodeError(f"{info.path}: decord cannot open the file ({e})") from e
    if len(vr) != info.num_frames:
        raise VideoDecodeError(
            f"{info.path}: decord counts {len(vr)} frames, the demuxer {info.num_frames}; "
            f"indices would not address the same frames — use backend='pyav'")
    if info.codec in _DECORD_SEQUENTIAL_CODECS or any(
            f in info.container.split(",") for f in _DECORD_SEQUENTIAL_FORMATS):
        # vr.skip_frames seeks too (and lands wrong the same way), so step with next().
        pos = 0
        for done, t in enumerate(targets):
            while pos < t:
                deadline.check(done)
                vr.next()
                pos += 1
            rgb = vr.next().asnumpy()
            pos += 1
            yield int(t), _decord_upright(rgb, info)
        return
    for s in range(0, len(targets), chunk):
        deadline.check(s)
        part = targets[s:s + chunk]
        try:
            batch = vr.get_batch(part.tolist()).asnumpy()
        except Exception as e:
            raise VideoDecodeError(f"{info.path}: decord get_batch failed on frames {part[0]}..{part[-1]} ({e})") from e
        for t, rgb in zip(part, batch):
            yield int(t), _decord_upright(rgb, info)


def _decord_upright(rgb: np.ndarray, info: VideoInfo) -> np.ndarray:
    """decord applies the display rotation itself when it turns the frame by 90/270 degrees (its
    output already has the display size); otherwise rotate like the PyAV path."""
    if info.rotation in (90, 270) and rgb.shape[:2] == info.display_size:
        return rgb
    return rotate_frame(rgb, info.rotation)
