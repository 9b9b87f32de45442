"""Issue #14, third round: the CPU beyond decode + resize, removed without changing a value.

- the uint8 ("transformers") resize writes straight into the channels-last output row with the
  kernel's out= overload; it equals `F.interpolate` (and the fallback path) on up/down/odd sizes;
- the float resize reuses its scratch buffers across the frames of a batch: every frame equals its
  own single-frame call (nothing of the previous frame leaks);
- batches the caller resizes after decoding run on one torch thread, like the worker's (no
  oversubscribed OpenMP team), and the caller's thread count is restored;
- `_GroupPatches` reuses a patchified group's frame buffer instead of allocating one per group;
- the clip's patch array (`_small_page_array`) is an ordinary writable, picklable uint8 array.
"""
import pickle
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import processors.video as video  # noqa: E402
import processors.video_resize as vr  # noqa: E402
from processors.presets import QWEN25_VL  # noqa: E402


def _frame(h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    x[h // 3:h // 2] = 255  # a hard edge
    return x


def _want_uint8(x, H, W):
    import torch.nn.functional as F

    t = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()  # torchvision v2's TCHW input
    return F.interpolate(t, size=(H, W), mode="bicubic", antialias=True, align_corners=False)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("hw,HW", [((72, 128), (56, 112)), ((97, 161), (140, 224)), ((300, 203), (84, 56)),
                                   ((64, 64), (64, 28))])
def test_uint8_resize_into_rows_equals_interpolate_and_the_fallback(hw, HW, monkeypatch):
    x = _frame(*hw, seed=1)
    want = _want_uint8(x, *HW)
    got = vr.resize_frames([x], *HW, mode="transformers")[0]
    assert np.array_equal(got, want)

    def no_out_overload(*a, **k):
        raise TypeError("no out= here")

    monkeypatch.setattr(vr, "_upsample_bicubic_aa", no_out_overload)
    assert np.array_equal(vr.resize_frames([x], *HW, mode="transformers")[0], want)


@pytest.mark.parametrize("mode", vr.RESIZE_MODES)
def test_scratch_buffers_do_not_leak_between_frames(mode):
    frames = [_frame(90, 150, seed=s) for s in range(3)]
    frames[1][:] = 0  # a flat frame between two busy ones
    batch = vr.resize_frames(frames, 84, 140, mode=mode)
    for f, got in zip(frames, batch):
        assert np.array_equal(got, vr.resize_frames(f, 84, 140, mode=mode))


def test_leftover_batches_are_resized_on_one_torch_thread(monkeypatch):
    seen = []
    real = video.resize_frames

    def spy(*a, **k):
        seen.append((threading.current_thread() is threading.main_thread(), torch.get_num_threads()))
        return real(*a, **k)

    monkeypatch.setattr(video, "resize_frames", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        n = 2 * video._RESIZE_BATCH + 3  # two batches for the worker, 3 frames left for the caller
        frames = [(i, _frame(40, 60, seed=i)) for i in range(n)]
        out = np.empty((n, 28, 56, 3), dtype=np.uint8)
        filled = video._decode_and_resize(iter(frames), 28, 56, out, {i: [i] for i in range(n)},
                                          resize="qwen-vl-utils")
        assert filled == n
        assert any(main for main, _ in seen), "the caller resized nothing: the test no longer covers it"
        assert all(k == 1 for _, k in seen), seen
        assert torch.get_num_threads() == 2  # the caller's count is back
        for i, f in frames:
            assert np.array_equal(out[i], real(f, 28, 56))
    finally:
        torch.set_num_threads(before)


def test_group_buffers_are_reused():
    n, H, W = 10, 28, 56
    g = video._GroupPatches(n, H, W, QWEN25_VL)
    frames = [_frame(H, W, seed=i) for i in range(n)]
    buffers = set()
    for k in range(n):  # in order, as a single decoder produces them
        row = g[k]
        buffers.add(row.base.__array_interface__["data"][0] if row.base is not None else id(row))
        row[...] = frames[k]
        g([k])
    assert len(buffers) == 1, "each temporal group got a fresh buffer"
    from processors.patches import patchify

    want, grid = patchify(np.stack(frames))
    got, got_grid = g.result()
    assert got_grid == grid and np.array_equal(got, want)


def test_patch_array_is_an_ordinary_array():
    a = video._small_page_array((7, 1176))
    assert a.dtype == np.uint8 and a.shape == (7, 1176) and a.flags.c_contiguous and a.flags.writeable
    a[...] = 5
    b = pickle.loads(pickle.dumps(a, protocol=5))
    assert np.array_equal(a, b) and b.flags.writeable
    assert video._small_page_array((0, 1176)).shape == (0, 1176)
