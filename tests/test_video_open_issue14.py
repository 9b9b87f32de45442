"""Decoder containers opened without FFmpeg's stream-probe decode (issue #14): on MP4/MOV, whose header
holds the codec parameters, `video_decode._open_container` skips the decode inside
avformat_find_stream_info (≈ 0.19 CPU s per open at 4K). The demuxer must give the same packets and the
decoder the same frames as after a plain `av.open`; everything else (Matroska, AVI, elementary
streams, a stream that does not match the probe) is opened plainly."""
from __future__ import annotations

import dataclasses

import av
import numpy as np
import pytest

from processors import video_decode
from processors.video import probe_video
from processors.video_decode import decode_pyav, rotate_frame
from video_factory import full_decode, make_clip


def _remux(src, dst, **options):
    """Copy the video stream's packets into a new container (muxer `options`)."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options=options) as o:
        s = i.streams.video[0]
        t = o.add_stream_from_template(s)
        for p in i.demux(s):
            if p.dts is not None:
                p.stream = t
                o.mux(p)
    return dst


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("open")
    x264 = lambda params: {"preset": "veryfast", "x264-params": params}  # noqa: E731
    bf = make_clip(d / "bf.mp4", num_frames=90, gop=15, options=x264("bframes=3:b-pyramid=normal"))
    return {
        "h264_mp4": bf,
        # fragmented MP4 (DASH/streaming style: an empty moov, samples in moof fragments)
        "h264_fmp4": _remux(bf, d / "frag.mp4", movflags="frag_keyframe+empty_moov+default_base_moof"),
        "h264_mp4_open_gop": make_clip(d / "open.mp4", num_frames=90, gop=20, options=x264("bframes=3:open-gop=1")),
        "hevc_mp4": make_clip(d / "hevc.mp4", codec="libx265", num_frames=60, gop=15,
                              options={"preset": "medium", "x265-params": "log-level=error:bframes=4"}),
        "mpeg4_mov": make_clip(d / "m4.mov", codec="mpeg4", num_frames=60, gop=10, bframes=2),
        "rot90_mp4": make_clip(d / "rot90.mp4", rotation=90, num_frames=40, gop=8, bframes=2),
        "h264_mkv": make_clip(d / "bf.mkv", num_frames=60, gop=15, options=x264("bframes=3:b-pyramid=normal")),
        "vp9_webm": make_clip(d / "vp9.webm", codec="libvpx-vp9", num_frames=40, gop=12, width=160, height=96),
        "mpeg4_avi": make_clip(d / "m4.avi", codec="mpeg4", num_frames=60, gop=10, bframes=2),
        "mpeg2_es": make_clip(d / "m2.m2v", codec="mpeg2video", num_frames=60, gop=12, bframes=2),
    }


# MP4/MOV. On rot90_mp4 (x264, 2 B-frames) MP4's own reorder guess is 1, the plain open's 2: the
# decoder is given the probe's.
CHEAP = ["h264_mp4", "h264_fmp4", "h264_mp4_open_gop", "hevc_mp4", "mpeg4_mov", "rot90_mp4"]
DEPTH_DIFFERS = ["rot90_mp4"]
PLAIN = ["h264_mkv", "vp9_webm", "mpeg4_avi", "mpeg2_es"]


def _packets(container):
    s = container.streams.video[0]
    return [(p.pts, p.dts, p.is_keyframe, p.pos, p.size, bytes(p)) for p in container.demux(s)]


@pytest.mark.parametrize("name", CHEAP + PLAIN)
def test_open_container_skips_the_probe_decode_only_where_the_header_suffices(clips, name):
    info = probe_video(clips[name])
    c, skipped = video_decode._open_container(info)
    with c, av.open(str(clips[name])) as plain:
        assert skipped == (name in CHEAP)
        if name in DEPTH_DIFFERS:
            with av.open(str(clips[name]), options=video_decode._NO_PROBE_DECODE) as bare:
                assert bare.streams.video[0].codec_context.reorder_depth != info.reorder_depth
        if name.startswith("h264_mp4"):  # only a decode tells its stream the pixel format
            assert plain.streams.video[0].codec_context.pix_fmt is not None
            assert c.streams.video[0].codec_context.pix_fmt is None
        cc, pc = c.streams.video[0].codec_context, plain.streams.video[0].codec_context
        assert cc.skip_frame == "DEFAULT"  # the option reached the probe's decoder only
        assert (cc.name, cc.width, cc.height, cc.reorder_depth, cc.extradata) == (
            pc.name, pc.width, pc.height, pc.reorder_depth, pc.extradata)
        assert _packets(c) == _packets(plain)


@pytest.mark.parametrize("name", CHEAP)
def test_frames_equal_a_plain_open(clips, name, monkeypatch):
    """Every frame, sequential and GOP-parallel, equals a full decode of a plain open (and the decoder
    forced onto plain opens), byte for byte."""
    info = probe_video(clips[name])
    frames, _ = full_decode(clips[name])
    ref = [rotate_frame(f, info.rotation) for f in frames]
    everything = np.arange(info.num_frames)
    sparse = everything[::7]
    got = [list(decode_pyav(info, everything, workers=w)) for w in (1, 2)]
    got_sparse = list(decode_pyav(info, sparse, workers=2))
    monkeypatch.setattr(video_decode, "_HEADER_FORMATS", ())
    plain_sparse = list(decode_pyav(info, sparse, workers=2))
    for run in got:
        assert [i for i, _ in run] == everything.tolist()
        for i, rgb in run:
            assert np.array_equal(rgb, ref[i]), i
    assert [i for i, _ in got_sparse] == [i for i, _ in plain_sparse] == sparse.tolist()
    for (i, a), (_, b) in zip(got_sparse, plain_sparse):
        assert np.array_equal(a, b) and np.array_equal(a, ref[i]), i


@pytest.mark.parametrize("change", [{"reorder_depth": None}, {"width": "+2"},
                                    {"codec": "hevc"}, {"stream_index": "+1"}])
def test_a_stream_unlike_the_probe_opens_plainly(clips, change):
    info = probe_video(clips["h264_mp4"])
    (field, value), = change.items()
    if isinstance(value, str) and value.startswith("+"):
        value = getattr(info, field) + int(value)
    odd = dataclasses.replace(info, **{field: value})
    c, skipped = video_decode._open_container(odd)
    c.close()
    assert not skipped
    c, skipped = video_decode._open_container(info)
    c.close()
    assert skipped


@pytest.mark.parametrize("cheap_open", [True, False])
def test_last_run_decodes_with_ffmpeg_threads(tmp_path, monkeypatch, cheap_open):
    """GOP-parallel: the run no other worker can take any more gets a decoder with FFmpeg's thread
    count (the other workers' cores fall idle as they finish) where opening one skips the stream
    probe's decode; after plain opens no extra container is opened. Frames equal the sequential
    decoder's and a full decode."""
    path = make_clip(tmp_path / "big.mp4", width=800, height=512, num_frames=36, gop=12, bframes=2)
    info = probe_video(path)
    idx = np.array([1, 5, 14, 20, 26, 33])
    assert len(video_decode.decode_runs(info, idx)) == 3
    assert video_decode.decoder_threads(info, 1) != video_decode.decoder_threads(info, 2)
    if not cheap_open:
        monkeypatch.setattr(video_decode, "_HEADER_FORMATS", ())
    opened = []
    real_init = video_decode._Opened.__init__

    def init(o, info_, threads, targets, *, workers):
        real_init(o, info_, threads, targets, workers=workers)
        opened.append((workers, o.cc.thread_count))

    monkeypatch.setattr(video_decode._Opened, "__init__", init)
    got = list(decode_pyav(info, idx, workers=2))
    all_threads, shared = (1, video_decode.decoder_threads(info, 1)), (2, video_decode.decoder_threads(info, 2))
    if cheap_open:
        # one worker may take runs 0 and 1 on one container before the other starts: 2 or 3 opens
        assert opened.count(all_threads) == 1 and opened.count(shared) in (1, 2) and len(opened) in (2, 3)
    else:
        # the last run gets FFmpeg's threads only where it is its worker's first (no extra open)
        assert set(opened) <= {all_threads, shared} and len(opened) in (1, 2)
    seq = list(decode_pyav(info, idx, workers=1))
    frames, _ = full_decode(path)
    assert [i for i, _ in got] == [i for i, _ in seq] == idx.tolist()
    for (i, a), (_, b) in zip(got, seq):
        assert np.array_equal(a, b) and np.array_equal(a, frames[i]), i
