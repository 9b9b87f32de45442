"""Read what a video file holds without decoding it: sizes, rates, frame timestamps, keyframes.

One demux pass over the packets (no pixel decoding) gives the exact frame count and every frame's
presentation time, which the sampler needs for variable-frame-rate clips and the decoder needs to
decide between decoding forward and seeking. One frame is decoded to check that the stream really
decodes, to read the display-matrix rotation, which PyAV only exposes on decoded frames, and to see
where a plain decode starts: a file cut mid-GOP (a TS capture) begins with frames no decoder outputs,
which are not counted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .errors import VideoDecodeError
from .h264_sps import lacks_reorder_info


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds. `width`/`height` are the stored (coded) size; `display_size` is after
    the rotation metadata is applied, which is the size vlprep samples and resizes from."""

    path: str
    duration: float          # seconds spanned by the frames (first pts .. last pts + one frame)
    num_frames: int          # frames a plain decode yields (demuxed packets, less discarded ones and
                             # those before the first frame it outputs: a file cut mid-GOP)
    avg_fps: float           # the container's average rate (what decord and qwen-vl-utils use)
    width: int
    height: int
    rotation: int            # 0, 90, 180 or 270: counter-clockwise degrees to turn for display
    codec: str
    start_time: float        # pts of the first frame, seconds
    is_vfr: bool             # frame spacing is not constant (see _is_variable_rate)
    container: str = ""
    # Internals used by the decoder; not part of the public record.
    stream_index: int = field(default=0, repr=False)
    time_base: Fraction = field(default=Fraction(1, 1), repr=False)
    frame_pts: np.ndarray = field(default=None, repr=False, compare=False)    # presentation order
    key_indices: np.ndarray = field(default=None, repr=False, compare=False)  # presentation indices of keyframes
    # Per keyframe (aligned with key_indices): its decode timestamp (the pts where the packet has none)
    # and its byte position (-1: unknown). Demuxers without an index (MPEG-TS, MPEG-PS) seek by dts.
    key_dts: np.ndarray = field(default=None, repr=False, compare=False)
    key_pos: np.ndarray = field(default=None, repr=False, compare=False)
    has_pts: bool = field(default=True, repr=False)
    # The decoder's reorder depth (FFmpeg's has_b_frames) as a plain open leaves it: after the stream
    # probe, before any frame is decoded. The decoder checks a cheaper open against it
    # (`video_decode._open_container`). None: unknown.
    reorder_depth: int | None = field(default=None, repr=False, compare=False)
    # H.264 whose SPS (in the extradata) has no VUI bitstream_restriction, i.e. no reorder depth:
    # its decoders are opened with strict=strict (`video_decode._Opened`), see `h264_sps`.
    h264_no_reorder_info: bool = field(default=False, repr=False, compare=False)

    @property
    def display_size(self) -> tuple[int, int]:
        """(height, width) as displayed, rotation applied."""
        if self.rotation in (90, 270):
            return self.width, self.height
        return self.height, self.width

    @property
    def frame_times(self) -> np.ndarray:
        """Presentation time of every frame in seconds, from the first frame (= 0.0)."""
        if not self.has_pts:
            return np.arange(self.num_frames, dtype=np.float64) / self.avg_fps
        return (self.frame_pts - self.frame_pts[0]).astype(np.float64) * float(self.time_base)


def _is_variable_rate(pts: np.ndarray) -> bool:
    """True when some frame interval differs from the typical one by more than rounding can explain
    (measured in time-base ticks, so the time base itself is not needed).

    Containers with a coarse time base (WebM: 1 ms) store 30 fps as 33/34 ms steps; that jitter of
    one tick is constant-rate. A gap of 2 intervals (dropped frame) or a mix of rates is variable.
    """
    if len(pts) < 3:
        return False
    d = np.diff(pts).astype(np.float64)
    med = float(np.median(d))
    if med <= 0:
        return True
    tol = max(1.5, 0.02 * med)
    return bool(np.any(np.abs(d - med) > tol))


def _normalize_rotation(deg: float | int | None) -> int:
    if deg is None:
        return 0
    return int(round(float(deg) / 90.0)) % 4 * 90


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Probe a video file. Raises VideoDecodeError naming the file and what is wrong with it."""
    import av

    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoDecodeError(f"{path}: video file not found")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"{path}: video file is empty (0 bytes)")
    try:
        container = av.open(path, mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoDecodeError(f"{path}: not a readable video container ({e}); re-encode or drop it") from e
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoDecodeError(f"{path}: no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        codec = stream.codec_context.name if stream.codec_context else "unknown"
        reorder_depth = int(stream.codec_context.reorder_depth) if stream.codec_context else None
        no_reorder_info = codec == "h264" and lacks_reorder_info(stream.codec_context.extradata)
        tb = stream.time_base or Fraction(1, 1)
        pts_list, key_pts, has_pts = [], [], True
        key_at = {}  # keyframe pts -> (dts, byte position); the first packet's under None
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    has_pts = False
                    ts = len(pts_list)
                pts_list.append(ts)
                at = (packet.dts if packet.dts is not None else ts,
                      packet.pos if packet.pos is not None and packet.pos >= 0 else -1)
                key_at.setdefault(None, at)
                if packet.is_keyframe:
                    key_pts.append(ts)
                    key_at.setdefault(ts, at)
        except av.FFmpegError as e:
            raise VideoDecodeError(f"{path}: demuxing failed after {len(pts_list)} packets ({e}); file is "
                                   f"truncated or corrupt") from e
        if not pts_list:
            raise VideoDecodeError(f"{path}: the {codec} video stream holds no frames")
        if has_pts and len(set(pts_list)) != len(pts_list):
            has_pts = False  # duplicate timestamps: frames can only be told apart by decode order
        # Decode from the start until one frame comes out: proves the stream decodes, carries the
        # display matrix, and tells where a plain decode starts. The seek goes to the first packet's
        # dts (<= every pts): demuxers that seek by dts (MPEG-TS) land on it, those that seek by pts
        # land at the start.
        rotation, first_out = None, None
        try:
            container.seek(min(min(pts_list), key_at[None][0]) if has_pts else 0, stream=stream,
                           backward=True, any_frame=False)
            for packet in container.demux(stream):
                for frame in packet.decode():
                    rotation, first_out = _normalize_rotation(getattr(frame, "rotation", 0)), frame.pts
                    break
                if rotation is not None:
                    break
        except av.FFmpegError as e:
            raise VideoDecodeError(f"{path}: the {codec} stream does not decode ({e})") from e
        if rotation is None:
            raise VideoDecodeError(f"{path}: the {codec} stream has {len(pts_list)} packets but no frame decodes")
        if has_pts and first_out is not None and first_out in set(pts_list):
            # A file cut mid-GOP (a TS capture, a split segment) starts with frames whose references
            # are missing: no decoder outputs them, so they are not frames of this file.
            pts_list = [t for t in pts_list if t >= first_out]
            key_pts = [t for t in key_pts if t >= first_out]
        frame_pts = np.sort(np.asarray(pts_list, dtype=np.int64))
        if not has_pts:
            frame_pts = np.arange(len(pts_list), dtype=np.int64)
        num_frames = len(frame_pts)
        tbf = float(tb)
        step = float(np.median(np.diff(frame_pts))) if num_frames > 1 else 0.0
        rate = stream.average_rate or stream.guessed_rate
        span = (frame_pts[-1] - frame_pts[0] + step) * tbf if has_pts else 0.0
        if rate and float(rate) > 0:
            avg_fps = float(rate)
        elif span > 0:
            avg_fps = num_frames / span
        else:
            raise VideoDecodeError(f"{path}: no frame rate in the container and no usable timestamps")
        duration = span if span > 0 else num_frames / avg_fps
        key_sorted = sorted(set(key_pts)) if has_pts else []
        key_indices = np.searchsorted(frame_pts, np.asarray(key_sorted, dtype=np.int64))
        key_meta = [key_at[t] for t in key_sorted]
        if len(key_indices) == 0 or key_indices[0] != 0:
            # No keyframe flag on the first frame (some AVI/MPEG-4 files): the start is still a
            # decoder entry point, so treat it as one (entered where the first packet is).
            key_indices = np.concatenate([[0], key_indices]).astype(np.int64)
            key_meta = [key_at[None]] + key_meta
        key_dts = np.asarray([m[0] for m in key_meta], dtype=np.int64)
        key_pos = np.asarray([m[1] for m in key_meta], dtype=np.int64)
        return VideoInfo(
            path=path, duration=float(duration), num_frames=num_frames, avg_fps=avg_fps,
            width=int(stream.codec_context.width), height=int(stream.codec_context.height),
            rotation=rotation, codec=codec,
            start_time=float(frame_pts[0] * tbf) if has_pts else 0.0,
            is_vfr=_is_variable_rate(frame_pts) if has_pts else False,
            container=container.format.name if container.format else "",
            stream_index=stream.index, time_base=tb, frame_pts=frame_pts, key_indices=key_indices,
            key_dts=key_dts, key_pos=key_pos,
            has_pts=has_pts, reorder_depth=reorder_depth, h264_no_reorder_info=no_reorder_info,
        )
