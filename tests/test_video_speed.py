"""Issue #14 speed work: each shortcut must give exactly what the plain path gives.

- `resize_frames` on a list of frames (any strides, read-only too) writing into `out` equals the
  stacked-array call, in both modes, on one strip and on several;
- `_PatchRows` (each resized frame written straight into its patch rows, from any thread, in any
  order, a frame in several slots) equals one `patchify` of the whole clip, padding included;
- the shared swscale context (`video_decode._RGB`) gives the pixels of `frame.to_ndarray("rgb24")`.
"""
import random
import threading

import numpy as np
import pytest

from processors.patches import patchify
from processors.presets import QWEN2_VL, QWEN25_VL, QWEN3_VL
from processors.video import _PatchRows, process_video
from processors.video_resize import RESIZE_MODES, resize_frames

pytest.importorskip("torch")


def _frames(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    x[:, h // 3:h // 2] = 255  # a hard edge: where the two references differ most
    return x


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("hw,HW", [((64, 96), (56, 84)), ((97, 161), (112, 168)), ((300, 200), (84, 56))])
def test_list_into_out_equals_stacked_call(mode, hw, HW):
    x = _frames(3, *hw)
    want = resize_frames(x, *HW, mode=mode)
    # frames as the decoder hands them: views with padded rows (a wider plane), one read-only
    planes = [np.zeros((hw[0], hw[1] + 7, 3), dtype=np.uint8) for _ in range(3)]
    views = []
    for p, f in zip(planes, x):
        p[:, :hw[1]] = f
        views.append(p[:, :hw[1]])
    views[1] = views[1].copy()
    views[1].flags.writeable = False
    out = np.full((5, *HW, 3), 7, dtype=np.uint8)
    got = resize_frames(views, *HW, mode=mode, out=[out[4], out[0], out[2]])
    assert len(got) == 3
    assert np.array_equal(out[[4, 0, 2]], want)
    assert (out[[1, 3]] == 7).all()  # nothing else written
    assert np.array_equal(resize_frames(x[1], *HW, mode=mode), want[1])  # one [h, w, 3] frame


def test_float_mode_on_several_strips_equals_one_interpolate():
    import torch
    import torch.nn.functional as F

    import processors.video_resize as vr

    h, w, H, W = 1088, 1936, 532, 952  # several strips (the last one short), one frame at a time
    assert h > vr._STRIP_ROWS and h % vr._STRIP_ROWS
    x = _frames(2, h, w, seed=3)
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    want = F.interpolate(t.to(torch.float32), size=(H, W), mode="bicubic", antialias=True,
                         align_corners=False).clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(resize_frames(list(x), H, W), want)
    # only the horizontal axis changes: the strip result is the output itself (scratch reused)
    want_h = F.interpolate(t.to(torch.float32), size=(h, W), mode="bicubic", antialias=True,
                           align_corners=False).clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(resize_frames(x, h, W), want_h)


def test_resize_frames_refuses_mixed_sizes_and_wrong_out():
    a, b = _frames(1, 64, 96)[0], _frames(1, 64, 98)[0]
    with pytest.raises(ValueError, match="of one size"):
        resize_frames([a, b], 56, 84)
    with pytest.raises(ValueError, match="out holds 1 frames for 2 inputs"):
        resize_frames([a, a], 56, 84, out=np.empty((1, 56, 84, 3), np.uint8))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10])
@pytest.mark.parametrize("preset", [QWEN2_VL, QWEN25_VL, QWEN3_VL])
def test_patch_rows_in_any_order_from_threads_equal_one_patchify(n, preset):
    # each frame written straight into its patch rows (`_PatchRows`, via `patches.frame_slot`), in any
    # order, from several threads, equals one `patchify` of the whole clip, padding included; odd
    # numbers of merged blocks each way (Qwen3-VL: patch 16)
    pm = preset.patch_size * preset.merge_size
    H, W = 3 * pm, 5 * pm
    out = _frames(n, H, W, seed=n)
    want, grid = patchify(out, preset.patch_size, preset.merge_size, preset.temporal_patch_size)
    rows = list(range(n))
    random.Random(n).shuffle(rows)
    pr = _PatchRows(n, H, W, preset)
    pr.patches[...] = 7  # nothing may be left unwritten

    def fill(chunk):
        for k in chunk:
            pr([k], out[k].copy())  # a scratch frame, as the resize thread hands it

    chunks = [rows[i:i + 3] for i in range(0, n, 3)]
    threads = [threading.Thread(target=fill, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got, got_grid = pr.result()
    assert got_grid == tuple(grid) and np.array_equal(got, want)


def test_patch_rows_one_frame_in_several_slots():
    # a frame sampled twice (short clips) is put once with both slots; the last slot pads the group
    preset = QWEN25_VL
    x = _frames(3, 56, 84, seed=5)
    slots = {0: [0, 1], 1: [2, 3], 2: [4]}  # 5 slots from 3 decoded frames
    want, grid = patchify(x[[0, 0, 1, 1, 2]])
    pr = _PatchRows(5, 56, 84, preset)
    for i in (2, 0, 1):
        pr(slots[i], x[i])
    got, got_grid = pr.result()
    assert got_grid == tuple(grid) and np.array_equal(got, want)


@pytest.mark.parametrize("k", [0, 1, 4, 5])
def test_frame_slot_reads_what_patchify_wrote(k):
    from processors.patches import frame_slot

    x = _frames(5, 56, 84, seed=k)
    rows, grid = patchify(x)
    got = np.empty_like(x[0])
    got.reshape(2, 2, 14, 3, 2, 14, 3)[...] = frame_slot(rows, grid, k)
    assert np.array_equal(got, x[min(k, 4)])  # slot 5 is the padding: the last frame again


def test_shared_swscale_context_gives_to_ndarray_pixels(tmp_path):
    import av

    from processors.video_decode import _RGB
    from video_factory import make_clip

    for name, kw in [("odd.mp4", dict(width=161, height=97, pix_fmt="yuv444p")), ("pad.mp4", dict(width=170, height=98)), ("v.webm", dict(codec="libvpx-vp9")),
                     ("b.avi", dict(codec="mpeg4", options={"bf": "2"}))]:
        path = make_clip(tmp_path / name, num_frames=12, gop=5, **kw)
        to_rgb = _RGB()
        with av.open(str(path)) as c:
            for f in c.decode(video=0):
                assert np.array_equal(to_rgb(f), f.to_ndarray(format="rgb24")), name


@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_process_video_patches_equal_patchify_of_the_resized_full_decode(tmp_path, resize):
    # the patches built frame by frame while decoding equal one patchify of the frames a plain full
    # decode + resize gives (odd counts: the last group padded)
    from video_factory import full_decode, make_clip

    path = make_clip(tmp_path / "c.mp4", num_frames=45, gop=10, bframes=2, width=128, height=72)
    full, _ = full_decode(path)
    for req in [{"nframes": 7}, {"fps": 11}, {"nframes": 45}]:
        r = process_video(path, QWEN25_VL, resize=resize, **req)
        frames = resize_frames(full[r.frame_indices], *r.resized_size, mode=resize)
        want, grid = patchify(frames)
        assert tuple(grid) == r.grid_thw and np.array_equal(r.patches, want), req


def test_vp9_decodes_with_frame_threads_and_the_same_frames(tmp_path):
    import dataclasses

    from processors import video_decode
    from processors.video import probe_video, select_frames
    from video_factory import full_decode, make_clip

    path = make_clip(tmp_path / "v.webm", codec="libvpx-vp9", num_frames=40, gop=12, width=320, height=180)
    info = probe_video(path)
    assert video_decode.decoder_thread_type(info) == "AUTO"
    assert video_decode.decoder_thread_type(dataclasses.replace(info, codec="h264")) == "SLICE"
    full, _ = full_decode(path)
    idx, _ = select_frames(info, preset="qwen2.5-vl", fps=7)
    for threads in (1, 2, 0):
        got = dict(video_decode.decode_pyav(info, idx, threads=threads))
        assert sorted(got) == sorted(set(idx.tolist()))
        assert all(np.array_equal(f, full[i]) for i, f in got.items()), threads


@pytest.mark.parametrize("resize", RESIZE_MODES)
@pytest.mark.parametrize("preset", [QWEN2_VL, QWEN25_VL, QWEN3_VL])
@pytest.mark.parametrize("workers", [1, 2])
def test_patches_equal_for_every_preset_and_decode_worker_count(tmp_path_factory, resize, preset, workers):
    # several keyframe runs, so 2 workers decode GOP-parallel and the caller resizes batches too
    # (`decoded_elsewhere`); Qwen3-VL's own sampling and size rule and patch 16
    from video_factory import full_decode, make_clip

    d = tmp_path_factory.getbasetemp() / "patch_presets"
    d.mkdir(exist_ok=True)
    path = d / "c.mp4"
    if not path.exists():
        make_clip(path, num_frames=90, gop=10, bframes=2, width=200, height=112)
    full, _ = full_decode(path)
    r = process_video(path, preset, resize=resize, fps=11, decode_workers=workers)
    frames = resize_frames(full[r.frame_indices], *r.resized_size, mode=resize)
    want, grid = patchify(frames, preset.patch_size, preset.merge_size, preset.temporal_patch_size)
    assert tuple(grid) == r.grid_thw and np.array_equal(r.patches, want)
