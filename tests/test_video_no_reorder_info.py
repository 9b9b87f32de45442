"""H.264 whose SPS carries no VUI `bitstream_restriction` (no max_num_reorder_frames), as some encoders
other than x264 write it: FFmpeg's decoder must learn the reorder depth from the stream.

In MP4, FFmpeg's reader takes the depth from the composition offsets and vlprep hands the probe's
value to every decoder (`VideoInfo.reorder_depth`). In Matroska a fresh decoder starts at depth 1 and
drops the first picture that needs more (FFmpeg's own full decode of the B-pyramid clip gives 119 of
120 frames); the probe marks such streams (`VideoInfo.h264_no_reorder_info`, from the extradata's SPS)
and every decoder is opened with strict=strict, which takes the depth from the level's DPB size. So
every sampled frame equals the source clip's, sequential and GOP-parallel, in both containers."""
from __future__ import annotations

import av
import numpy as np
import pytest

from h264_sps import strip_reorder_info
from processors.h264_sps import extradata_sps, lacks_reorder_info, restriction_flag
from processors.presets import QWEN25_VL
from processors.video import process_video, probe_video, select_frames
from processors.video_decode import decode_pyav, decode_runs
from video_factory import full_decode, make_clip

X264 = {"preset": "veryfast", "x264-params": "bframes=3:b-pyramid=normal"}


def _restriction_flag(path) -> int:
    with av.open(str(path)) as c:
        (sps,) = extradata_sps(c.streams.video[0].codec_context.extradata)
    return restriction_flag(sps)


@pytest.fixture(scope="module")
def stripped_mp4(tmp_path_factory):
    d = tmp_path_factory.mktemp("novui")
    src = make_clip(d / "src.mp4", num_frames=120, gop=15, options=X264)
    dst = strip_reorder_info(src, d / "novui.mp4")
    return src, dst


def test_the_rewriter_removes_only_the_reorder_info(stripped_mp4):
    src, dst = stripped_mp4
    assert _restriction_flag(src) == 1 and _restriction_flag(dst) == 0
    ref, ref_pts = full_decode(src)
    got, got_pts = full_decode(dst)
    assert got_pts == ref_pts and all(np.array_equal(a, b) for a, b in zip(ref, got))


@pytest.mark.parametrize("density", [{"fps": 2}, {"fps": 6}, {"fps": 9}, {"nframes": 24}, {"fps": 30}])
def test_mp4_without_reorder_info_every_path_gives_the_source_frames(stripped_mp4, density):
    _every_path_gives_the_source_frames(*stripped_mp4, density)


def _every_path_gives_the_source_frames(src, dst, density):
    ref, _ = full_decode(src)
    info = probe_video(dst)
    idx, _ = select_frames(info, preset=QWEN25_VL, **density)
    assert len(decode_runs(info, idx)) > 1 or density == {"fps": 30}
    for workers in (1, 2, 3):
        out = list(decode_pyav(info, idx, workers=workers))
        assert [i for i, _ in out] == np.unique(idx).tolist(), workers
        for i, frame in out:
            assert np.array_equal(frame, ref[i]), (workers, i)


MKV_CLIPS = {"bpyramid_gop15": dict(gop=15, options=X264),
             "open_gop20": dict(gop=20, options={"preset": "veryfast",
                                                 "x264-params": "bframes=3:b-pyramid=normal:open-gop=1"})}


@pytest.fixture(scope="module", params=sorted(MKV_CLIPS))
def stripped_mkv(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("novui_mkv")
    src = make_clip(d / "src.mkv", num_frames=120, **MKV_CLIPS[request.param])
    return src, strip_reorder_info(src, d / "novui.mkv")


def test_the_probe_marks_only_the_stream_without_reorder_info(stripped_mkv):
    src, dst = stripped_mkv
    assert _restriction_flag(src) == 1 and _restriction_flag(dst) == 0
    a, b = probe_video(src), probe_video(dst)
    assert not a.h264_no_reorder_info and b.h264_no_reorder_info
    assert b.num_frames == a.num_frames == 120
    assert np.array_equal(b.frame_pts, a.frame_pts) and np.array_equal(b.key_indices, a.key_indices)


@pytest.mark.parametrize("targets", [[16, 26, 31]])
def test_mkv_without_reorder_info_targets_give_the_source_frames(stripped_mkv, targets):
    src, dst = stripped_mkv
    ref, _ = full_decode(src)
    info = probe_video(dst)
    for workers in (1, 2, 3):
        out = list(decode_pyav(info, np.asarray(targets), workers=workers))
        assert [i for i, _ in out] == targets, workers
        assert all(np.array_equal(frame, ref[i]) for i, frame in out), workers


@pytest.mark.parametrize("density", [{"fps": 2}, {"fps": 6}, {"fps": 9}, {"nframes": 24}, {"fps": 30}])
def test_mkv_without_reorder_info_every_path_gives_the_source_frames(stripped_mkv, density):
    src, dst = stripped_mkv
    _every_path_gives_the_source_frames(src, dst, density)
    want = process_video(str(src), QWEN25_VL, **density)
    for workers in (1, 2):
        got = process_video(str(dst), QWEN25_VL, decode_workers=workers, **density)
        assert got.frame_indices == want.frame_indices
        assert np.array_equal(got.patches, want.patches), workers


def test_a_normal_x264_clip_is_not_marked(stripped_mp4, tmp_path):
    src, _ = stripped_mp4
    plain = make_clip(tmp_path / "plain.mkv", num_frames=30, gop=10)
    for p in (src, plain):
        assert _restriction_flag(p) == 1
        assert not probe_video(p).h264_no_reorder_info
    assert not probe_video(make_clip(tmp_path / "vp9.webm", codec="libvpx-vp9", num_frames=10)).h264_no_reorder_info


def test_sps_reader_on_annex_b_and_truncated_extradata(stripped_mp4):
    for path, lacks in zip(stripped_mp4, (False, True)):
        with av.open(str(path)) as c:
            avcc = bytes(c.streams.video[0].codec_context.extradata)
        (sps,) = extradata_sps(avcc)
        assert lacks_reorder_info(avcc) is lacks
        annex_b = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x01\x68\xeb\xe3\xcb\x22\xc0"  # SPS, a PPS
        assert extradata_sps(annex_b) == [sps] and lacks_reorder_info(annex_b) is lacks
        assert lacks_reorder_info(b"\x00\x00\x01" + sps[:4]) is False  # truncated: not claimed
    assert lacks_reorder_info(None) is False and lacks_reorder_info(b"") is False


def test_baseline_profile_without_reorder_info_is_not_marked(tmp_path):
    # Baseline has no B slices, so a missing reorder depth loses nothing; strict=strict would only
    # delay every output by the level's DPB size (more decoding for sparse sampling).
    src = make_clip(tmp_path / "base.mkv", num_frames=30, gop=10, options={"preset": "veryfast", "profile": "baseline"})
    dst = strip_reorder_info(src, tmp_path / "base_novui.mkv")
    assert _restriction_flag(src) == 1 and _restriction_flag(dst) == 0
    info = probe_video(dst)
    assert not info.h264_no_reorder_info
    ref, _ = full_decode(src)
    idx, _ = select_frames(info, preset=QWEN25_VL, fps=9)
    for workers in (1, 2):
        out = list(decode_pyav(info, idx, workers=workers))
        assert [i for i, _ in out] == np.unique(idx).tolist()
        assert all(np.array_equal(f, ref[i]) for i, f in out)
