"""Frame sampling and per-frame size: spec §6.2–6.5 and the §6.8 vectors, on the pure functions."""
import math

import numpy as np
import pytest

from processors.errors import VideoTooShortError
from processors.presets import QWEN25_VL
from processors.video_sampling import (
    frame_window, linspace_f32, sample_by_time, sample_frame_indices, smart_nframes, video_frame_budget,
    video_frame_size,
)

# id, (total, fps, h, w), request, n, indices (None: check head/tail), sample_fps, max_px, (H, W), grid, tokens, spgt
VECTORS = [
    ("T-V1", (300, 30.0, 1080, 1920), {}, 20,
     [0, 16, 31, 47, 63, 79, 94, 110, 126, 142, 157, 173, 189, 205, 220, 236, 252, 268, 283, 299],
     2.0, 602112, (560, 1008), (10, 40, 72), 7200, 1.0),
    ("T-V2", (300, 30.0, 1080, 1920), {"fps": 1}, 10, [0, 33, 66, 100, 133, 166, 199, 233, 266, 299],
     1.0, 602112, (560, 1008), (5, 40, 72), 3600, 2.0),
    ("T-V3", (300, 30.0, 1080, 1920), {"fps": 4}, 40, None, 4.0, 602112, (560, 1008), (20, 40, 72), 14400, 0.5),
    ("T-V4", (300, 30.0, 1080, 1920), {"nframes": 7}, 8, [0, 43, 85, 128, 171, 214, 256, 299],
     0.8, 602112, (560, 1008), (4, 40, 72), 2880, 2.5),
    ("T-V5", (300, 30.0, 1080, 1920), {"nframes": 5}, 4, [0, 100, 199, 299],
     0.4, 602112, (560, 1008), (2, 40, 72), 1440, 5.0),
    ("T-V6", (48, 24.0, 480, 640), {}, 4, [0, 16, 31, 47], 2.0, 602112, (476, 644), (2, 34, 46), 782, 1.0),
    ("T-V7", (5, 25.0, 480, 640), {}, 4, [0, 1, 3, 4], 20.0, 602112, (476, 644), (2, 34, 46), 782, 0.1),
    ("T-V8", (3, 30.0, 480, 640), {}, 2, [0, 2], 20.0, None, (476, 644), (1, 34, 46), 391, 0.1),
    ("T-V10", (18000, 29.97, 720, 1280), {}, 768, None, 1.27872, 235200, (336, 644), (384, 24, 46), 105984,
     1.5640641),
]


@pytest.mark.parametrize("vid,clip,req,n,indices,sfps,max_px,hw,grid,tokens,spgt", VECTORS, ids=[v[0] for v in VECTORS])
def test_spec_vectors(vid, clip, req, n, indices, sfps, max_px, hw, grid, tokens, spgt):
    total, fps, h, w = clip
    idx, sample_fps = sample_frame_indices(total, fps, **req)
    assert idx.dtype == np.int64
    assert len(idx) == n
    if indices is not None:
        assert idx.tolist() == indices
    assert sample_fps == pytest.approx(sfps, rel=1e-9)
    _, mp = video_frame_budget(n, min_pixels=None, max_pixels=None, total_pixels=None,
                               video_min_pixels=QWEN25_VL.video_min_pixels,
                               video_max_pixels=QWEN25_VL.video_max_pixels,
                               video_total_pixels=QWEN25_VL.video_total_pixels)
    if max_px is not None:
        assert mp == max_px
    H, W = video_frame_size(h, w, n)
    assert (H, W) == hw
    g = (math.ceil(n / 2), H // 14, W // 14)
    assert g == grid
    assert g[0] * g[1] * g[2] // 4 == tokens
    assert 2 / sample_fps == pytest.approx(spgt, rel=1e-7)


def test_tv3_and_tv10_index_details():
    idx, _ = sample_frame_indices(300, 30.0, fps=4)
    assert idx[:6].tolist() == [0, 8, 15, 23, 31, 38] and idx[-2:].tolist() == [291, 299]
    idx, sfps = sample_frame_indices(18000, 29.97)
    assert idx[:5].tolist() == [0, 23, 47, 70, 94] and idx[-2:].tolist() == [17976, 17999]
    # temporal ids of T-V10 / T-R5 follow from second_per_grid_ts = 2 / sample_fps (not truncated)
    s = 2 / sfps
    assert [math.floor(k * s * 2) for k in range(9)] == [0, 3, 6, 9, 12, 15, 18, 21, 25]


def test_tv9_single_frame_is_an_error():
    with pytest.raises(VideoTooShortError, match=r"nframes should in interval \[2, total_frames\]"):
        sample_frame_indices(1, 30.0)


def test_half_even_ties():
    assert np.rint(linspace_f32(0, 5, 3)).tolist() == [0, 2, 5]
    assert np.rint(linspace_f32(0, 9, 7)).tolist() == [0, 2, 3, 4, 6, 8, 9]
    assert smart_nframes(300, 30, nframes=5) == 4 and smart_nframes(300, 30, nframes=7) == 8
    assert smart_nframes(300, 30, nframes=3) == 4


def test_rounded_linspace_equals_torch():
    torch = pytest.importorskip("torch")
    cases = [(s, e, n) for s in (0, 3, 17) for e in range(s + 1, 30000, 613) for n in (2, 4, 6, 8, 20, 64, 768)
             if n <= e - s + 1]
    for total in range(2, 300):
        cases += [(0, total - 1, n) for n in range(2, min(total, 40) + 1, 2)]
    for s, e, n in cases:
        ref = torch.linspace(s, e, n).round().long().numpy()
        assert np.array_equal(np.rint(linspace_f32(s, e, n)).astype(np.int64), ref), (s, e, n)


def test_window():
    assert frame_window(300, 30.0) == (0, 299, 300)
    assert frame_window(300, 30.0, 1.0, 2.0) == (30, 60, 31)
    assert frame_window(300, 30.0, 2.01, None) == (61, 299, 239)      # ceil on the start
    assert frame_window(300, 30.0, None, 99.0) == (0, 299, 300)       # clamped to the clip
    with pytest.raises(VideoTooShortError):
        frame_window(300, 30.0, 5.0, 5.0)
    idx, sfps = sample_frame_indices(300, 30.0, video_start=1.0, video_end=2.0)
    assert idx.tolist() == [30, 40, 50, 60]          # 31 frames at fps 2 → 2.07 → min 4 frames
    assert sfps == pytest.approx(4 / 31 * 30)


def test_argument_errors():
    with pytest.raises(ValueError, match="either fps or nframes"):
        sample_frame_indices(300, 30.0, fps=2, nframes=8)
    with pytest.raises(VideoTooShortError, match="must not exceed"):
        sample_frame_indices(10, 30.0, nframes=12)
    with pytest.raises(ValueError, match="video_fps"):
        sample_frame_indices(10, 0.0)


def test_pixel_overrides():
    # explicit max_pixels only lowers the budget; total_pixels scales the per-frame cap
    assert video_frame_budget(20, min_pixels=None, max_pixels=200704, total_pixels=None, video_min_pixels=100352,
                              video_max_pixels=602112, video_total_pixels=90316800)[1] == 200704
    assert video_frame_budget(20, min_pixels=None, max_pixels=10**9, total_pixels=None, video_min_pixels=100352,
                              video_max_pixels=602112, video_total_pixels=90316800)[1] == 602112
    assert video_frame_budget(100, min_pixels=None, max_pixels=None, total_pixels=100 * 784 * 10,
                              video_min_pixels=100352, video_max_pixels=602112,
                              video_total_pixels=90316800)[1] == int(100352 * 1.05)
    assert video_frame_size(1080, 1920, 20, max_pixels=200704) == (336, 588)


def test_sample_by_time_uniform_grid():
    # 10 frames at 30 fps, then 10 at 10 fps: targets are evenly spaced in time, not in index
    t = np.concatenate([np.arange(10) / 30, 9 / 30 + np.arange(1, 11) / 10])
    idx, sfps = sample_by_time(t, nframes=4)
    span = t[-1] - t[0]
    targets = t[0] + span * np.arange(4) / 3
    assert idx.tolist() == [int(np.argmin(np.abs(t - x))) for x in targets]
    assert sfps == pytest.approx(4 / (span + 1 / 10))


def test_sample_by_time_on_constant_rate_matches_reference_away_from_ties():
    # on a uniform grid, picking by time agrees with the reference wherever the reference's
    # position is not a rounding tie (there the time path picks the earlier frame)
    for total, fps in [(300, 30.0), (243, 25.0), (146, 24000 / 1001), (1000, 60.0)]:
        t = np.arange(total) / fps
        ref, ref_fps = sample_frame_indices(total, fps)
        got, got_fps = sample_by_time(t)
        pos = linspace_f32(0, total - 1, len(ref))
        far = np.abs(pos - np.floor(pos) - 0.5) > 1e-3
        assert np.array_equal(got[far], ref[far])
        assert got_fps == pytest.approx(ref_fps)
