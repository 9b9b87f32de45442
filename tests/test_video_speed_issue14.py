"""Issue #14, third round: the CPU beyond decode + resize, removed without changing a value.

- the uint8 ("transformers") resize writes straight into the channels-last output row with the
  kernel's out= overload; it equals `F.interpolate` (and the fallback path) on up/down/odd sizes;
- the float resize reuses its scratch buffers across the frames of a batch: every frame equals its
  own single-frame call (nothing of the previous frame leaks);
- batches the caller resizes after decoding run on one torch thread, like the worker's (no
  oversubscribed OpenMP team), and the caller's thread count is restored;
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

        def put(ks, frame):
            out[ks] = frame

        filled = video._decode_and_resize(iter(frames), 28, 56, put, {i: [i] for i in range(n)},
                                          resize="qwen-vl-utils")
        assert filled == n
        assert any(main for main, _ in seen), "the caller resized nothing: the test no longer covers it"
        assert all(k == 1 for _, k in seen), seen
        assert torch.get_num_threads() == 2  # the caller's count is back
        for i, f in frames:
            assert np.array_equal(out[i], real(f, 28, 56))
    finally:
        torch.set_num_threads(before)


def test_patch_array_is_an_ordinary_array():
    a = video._small_page_array((7, 1176))
    assert a.dtype == np.uint8 and a.shape == (7, 1176) and a.flags.c_contiguous and a.flags.writeable
    a[...] = 5
    b = pickle.loads(pickle.dumps(a, protocol=5))
    assert np.array_equal(a, b) and b.flags.writeable
    assert video._small_page_array((0, 1176)).shape == (0, 1176)


@pytest.mark.parametrize("mode", vr.RESIZE_MODES)
def test_caller_resizes_while_the_worker_is_behind_when_decoding_is_elsewhere(mode, monkeypatch):
    # GOP-parallel decode: the caller only takes frames off a queue, so when the resize worker is
    # behind it resizes the batch itself instead of waiting (the worker's first batch here waits
    # until the caller has done one); every frame still lands in its slot
    real = video.resize_frames
    caller_went = threading.Event()
    during_decode = []
    decoding = [True]

    def spy(*a, **k):
        if threading.current_thread() is threading.main_thread():
            during_decode.append(decoding[0])
            caller_went.set()
        else:
            caller_went.wait(10)
        return real(*a, **k)

    monkeypatch.setattr(video, "resize_frames", spy)
    n = 5 * video._RESIZE_BATCH + 3
    frames = [(i, _frame(40, 60, seed=i)) for i in range(n)]

    def decoded():
        yield from frames
        decoding[0] = False

    out = np.zeros((n, 28, 56, 3), dtype=np.uint8)

    def put(ks, frame):
        out[ks] = frame

    filled = video._decode_and_resize(decoded(), 28, 56, put, {i: [i] for i in range(n)}, resize=mode,
                                      decoded_elsewhere=True)
    assert filled == n
    assert any(during_decode), "the caller waited for the worker instead of resizing"
    for i, f in frames:
        assert np.array_equal(out[i], real(f, 28, 56, mode=mode))


def test_transformers_mode_keeps_few_decoded_frames_alive():
    # the uint8 resize takes small batches, so at most 3 batches of 2 decoded frames (+ the one just
    # decoded) are alive at once and the allocator can reuse their memory; the float mode keeps 8
    import weakref

    n = 30
    alive, peak = [0], [0]

    def gone():
        alive[0] -= 1

    def decoded():
        for i in range(n):
            f = _frame(40, 60, seed=i)
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            weakref.finalize(f, gone)
            yield i, f
            del f

    out = np.zeros((n, 28, 56, 3), dtype=np.uint8)

    def put(ks, frame):
        out[ks] = frame

    filled = video._decode_and_resize(decoded(), 28, 56, put, {i: [i] for i in range(n)}, resize="transformers")
    assert filled == n
    assert peak[0] <= 3 * video._RESIZE_BATCH_UINT8 + 1, peak[0]
    for i in range(n):
        assert np.array_equal(out[i], vr.resize_frames(_frame(40, 60, seed=i), 28, 56, mode="transformers"))
