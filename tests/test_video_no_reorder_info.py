"""H.264 whose SPS carries no VUI `bitstream_restriction` (no max_num_reorder_frames), as some encoders
other than x264 write it: FFmpeg's decoder must learn the reorder depth from the stream.

In MP4, FFmpeg's reader takes the depth from the composition offsets and vlprep hands the probe's
value to every decoder (`VideoInfo.reorder_depth`), so every sampled frame equals the source clip's,
sequential and GOP-parallel. (Matroska is the known gap: a fresh decoder learns the depth only by
dropping a frame; tests/repro_h264_no_reorder_info_mkv.py reproduces it, docs/video.md says where.)"""
from __future__ import annotations

import av
import numpy as np
import pytest

from h264_sps import _Bits, _restriction_flag_pos, _unescape, strip_reorder_info
from processors.presets import QWEN25_VL
from processors.video import probe_video, select_frames
from processors.video_decode import decode_pyav, decode_runs
from video_factory import full_decode, make_clip

X264 = {"preset": "veryfast", "x264-params": "bframes=3:b-pyramid=normal"}


def _restriction_flag(path) -> int:
    with av.open(str(path)) as c:
        ed = c.streams.video[0].codec_context.extradata
    n = int.from_bytes(ed[6:8], "big")
    rbsp = _unescape(ed[9:8 + n])
    b = _Bits(rbsp)
    b.pos = _restriction_flag_pos(rbsp)
    return b.u(1)


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
    src, dst = stripped_mp4
    ref, _ = full_decode(src)
    info = probe_video(dst)
    idx, _ = select_frames(info, preset=QWEN25_VL, **density)
    assert len(decode_runs(info, idx)) > 1 or density == {"fps": 30}
    for workers in (1, 2, 3):
        out = list(decode_pyav(info, idx, workers=workers))
        assert [i for i, _ in out] == np.unique(idx).tolist(), workers
        for i, frame in out:
            assert np.array_equal(frame, ref[i]), (workers, i)
