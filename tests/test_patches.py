"""patchify / unpatchify / normalize_patches: spec §4 steps 5 and 8 (T-P1)."""
from __future__ import annotations

import numpy as np
import pytest

from processors.patches import normalize_patches, patchify, unpatchify
from processors.presets import CLIP_MEAN, CLIP_STD


def t_p1_frame() -> np.ndarray:
    y, x = np.mgrid[0:56, 0:56]
    return np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8)


def test_t_p1_layout_and_values():
    patches, grid = patchify(t_p1_frame()[None])
    assert grid == (1, 4, 4)
    assert patches.shape == (16, 1176) and patches.dtype == np.uint8
    # top-left pixel (y, x) of rows 0..7: R holds x, G holds y
    corners = [(0, 0), (0, 14), (14, 0), (14, 14), (0, 28), (0, 42), (14, 28), (14, 42)]
    for row, (y, x) in enumerate(corners):
        assert (patches[row, 392], patches[row, 0]) == (y, x), row
    pv = normalize_patches(patches, CLIP_MEAN, CLIP_STD)
    assert pv.dtype == np.float32 and pv.shape == (16, 1176)
    assert pv[5, 0] == pytest.approx(-1.17912862, abs=1e-6)
    assert pv[5, 196] == pytest.approx(-1.17912862, abs=1e-6)  # temporal copy 1
    assert pv[5, 392 + 3 * 14 + 7] == pytest.approx(-1.70707382, abs=1e-6)  # G, dy=3, dx=7
    assert np.array_equal(patches[:, :196], patches[:, 196:392])  # an image is 2 identical frames


def test_closed_form_row_and_column_index():
    """spec §4 step 8: r = ((t*(gh/2)+bh)*(gw/2)+bw)*4 + mh*2 + mw, c = ((ch*2+k)*14+dy)*14+dx."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 56, 84, 3), dtype=np.uint8)
    patches, (gt, gh, gw) = patchify(frames)
    assert (gt, gh, gw) == (2, 4, 6)
    padded = np.concatenate([frames, frames[-1:]])  # T=3 -> 4 by repeating the last frame
    for _ in range(500):
        t, bh, bw, mh, mw, ch, k, dy, dx = (int(rng.integers(n)) for n in (gt, gh // 2, gw // 2, 2, 2, 3, 2, 14, 14))
        r = ((t * (gh // 2) + bh) * (gw // 2) + bw) * 4 + mh * 2 + mw
        c = ((ch * 2 + k) * 14 + dy) * 14 + dx
        assert patches[r, c] == padded[t * 2 + k, (bh * 2 + mh) * 14 + dy, (bw * 2 + mw) * 14 + dx, ch]


@pytest.mark.parametrize("t", [1, 2, 3, 4])
def test_round_trip(t):
    rng = np.random.default_rng(t)
    frames = rng.integers(0, 256, size=(t, 84, 112, 3), dtype=np.uint8)
    patches, grid = patchify(frames)
    assert grid == (-(-t // 2), 6, 8)
    back = unpatchify(patches, grid)
    assert back.shape[0] == 2 * grid[0]
    assert np.array_equal(back[:t], frames)
    assert np.array_equal(back[t:], np.repeat(frames[-1:], back.shape[0] - t, axis=0))


def test_single_frame_fast_path_equals_generic_path():
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, size=(1, 112, 168, 3), dtype=np.uint8)
    one, grid = patchify(frame)
    two, grid2 = patchify(np.concatenate([frame, frame]))  # generic path, explicit duplicate
    assert grid == grid2 and np.array_equal(one, two)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of 28"):
        patchify(np.zeros((1, 30, 28, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        patchify(np.zeros((28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="does not match grid"):
        unpatchify(np.zeros((4, 1176), np.uint8), (1, 4, 4))


def test_normalize_reference_values():
    """spec §4 step 5: 255, 0 and 128 per channel (exact to float64; float32 here)."""
    expected = {
        255: [1.93033625, 2.07488384, 2.14589699],
        0: [-1.79226253, -1.75209713, -1.48021977],
        128: [0.07633607, 0.16889724, 0.33994864],
    }
    for value, per_channel in expected.items():
        pv = normalize_patches(np.full((2, 1176), value, np.uint8), CLIP_MEAN, CLIP_STD)
        for ch in range(3):
            block = pv[:, ch * 392:(ch + 1) * 392]
            assert np.allclose(block, per_channel[ch], atol=1e-6, rtol=0), (value, ch)


def test_normalize_matches_two_step_float_formula():
    rng = np.random.default_rng(3)
    patches = rng.integers(0, 256, size=(64, 1176), dtype=np.uint8)
    mean = np.repeat(np.asarray(CLIP_MEAN), 392)
    std = np.repeat(np.asarray(CLIP_STD), 392)
    reference = (patches.astype(np.float64) / 255 - mean) / std
    assert np.abs(normalize_patches(patches, CLIP_MEAN, CLIP_STD) - reference).max() < 1e-6
    with pytest.raises(ValueError, match="uint8"):
        normalize_patches(patches.astype(np.float32), CLIP_MEAN, CLIP_STD)
