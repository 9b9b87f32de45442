"""The float ("qwen-vl-utils") resize path, `video_resize._float_resize_into`, against torchvision v1's
steps done literally on the whole frame (uint8 → float32 → `interpolate(bicubic, antialias=True)` →
clamp → round → uint8; tests/test_video_resize_reference.py pins those steps to the real torchvision
on the golden files).

The fast path runs torch's two separable passes itself — the horizontal one on [rows·C, w] strips,
the vertical one on [h, C·W] — with every pass written straight into its buffer (`out=`). Each
value must be the reference's on every shape: 1-px rows and columns, up and down, odd sizes, an
axis left unchanged, every strip boundary, frames of any strides, a batch sharing buffers — and on
one-column outputs, where the planar buffers of before met a torch kernel bug (test_one_column_output).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import processors.video_resize as vr  # noqa: E402


def _frames(n, h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    x[:, h // 3:h // 2 + 1] = 255      # a hard bright band: bicubic overshoots past 255 next to it
    x[:, :, w // 2:w // 2 + 2] = 0     # and a dark one: undershoots below 0 (clamp matters)
    return x


def _v1(x, H, W, layout="qwen-vl-utils"):
    # qwen-vl-utils hands v1 `torch.tensor(nhwc).permute(0, 3, 1, 2)`: a channels-last uint8 TCHW
    # tensor, and `.to(float32)` keeps that layout. ("contiguous": the same steps on NCHW.)
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    if layout == "contiguous":
        t = t.contiguous()
    y = F.interpolate(t.to(torch.float32), size=(H, W), mode="bicubic", antialias=True, align_corners=False)
    return y.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _float64_formula(x, H, W):
    """The antialiased bicubic of torch/PIL written out (a = -0.5, support 2·scale when shrinking,
    normalised weights), in float64: an independent check where torch's layouts disagree."""
    def weights(n, m):
        scale = n / m
        support, inv = (2 * scale, 1 / scale) if scale >= 1 else (2.0, 1.0)
        M = np.zeros((m, n))
        for i in range(m):
            center = scale * (i + 0.5)
            lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n)
            d = np.abs((np.arange(lo, hi) - center + 0.5) * inv)
            w = np.where(d < 1, (1.5 * d - 2.5) * d * d + 1, np.where(d < 2, (((d - 5) * d + 8) * d - 4) * -0.5, 0))
            M[i, lo:hi] = w / w.sum()
        return M
    return np.einsum("Hh,nhwc,Ww->nHWc", weights(x.shape[1], H), x.astype(np.float64), weights(x.shape[2], W))


SHAPES = [
    ((1, 1), (2, 3)),            # one pixel, up
    ((2, 2), (1, 1)),            # down to one pixel
    ((1, 57), (28, 56)),         # one row in
    ((57, 1), (56, 28)),         # one column in
    ((64, 97), (1, 40)),         # one row out
    ((97, 64), (40, 1)),         # one column out (see test_one_column_output)
    ((3, 5), (100, 140)),        # large upscale
    ((97, 161), (140, 224)),     # odd, up
    ((301, 203), (84, 56)),      # odd, down
    ((1000, 31), (28, 28)),      # extreme aspect, 35x down vertically
    ((48, 80), (48, 56)),        # height unchanged: the horizontal pass only
    ((48, 80), (30, 80)),        # width unchanged: the vertical pass only
    ((45, 77), (90, 33)),        # up one axis, down the other
    ((720, 1280), (560, 1008)),  # the bench's 720p
]


@pytest.mark.parametrize("rows", [None, 1, 7])
@pytest.mark.parametrize("hw,HW", SHAPES)
def test_float_resize_equals_v1(hw, HW, rows, monkeypatch):
    if rows is not None:
        monkeypatch.setattr(vr, "_STRIP_ROWS", rows)
    x = _frames(2, *hw, seed=hw[0] * 7 + hw[1])
    assert np.array_equal(vr.resize_frames(x, *HW), _v1(x, *HW)), (hw, HW, rows)


@pytest.mark.parametrize("rows", [8, None])
def test_every_strip_boundary(rows, monkeypatch):
    # frames one row short of, exactly, one row past one and two strips; odd widths, up and down
    if rows is not None:
        monkeypatch.setattr(vr, "_STRIP_ROWS", rows)
    r = vr._STRIP_ROWS
    for h in (r - 1, r, r + 1, 2 * r, 2 * r + 1):
        for w, H, W in ((37, max(1, h // 2), 28), (37, h + 5, 70), (9, h, 4)):
            x = _frames(1, h, w, seed=h + w)
            assert np.array_equal(vr.resize_frames(x, H, W), _v1(x, H, W)), (rows, h, w, H, W)


def test_batch_of_views_into_strided_rows():
    # one call, buffers shared across frames: frames as the decoder hands them (views with padded
    # rows, one read-only), written into rows of a wider array (non-contiguous destinations)
    h, w, H, W = 203, 301, 98, 140
    x = _frames(4, h, w, seed=5)
    x[2] = 0  # a flat frame between busy ones: nothing of the previous frame may leak
    planes = np.zeros((4, h, w + 9, 3), dtype=np.uint8)
    planes[:, :, :w] = x
    views = [p[:, :w] for p in planes]
    views[1] = views[1].copy()
    views[1].flags.writeable = False
    wide = np.full((4, H, W + 3, 3), 7, dtype=np.uint8)
    rows = [wide[k, :, 2:W + 2] for k in range(4)]
    assert not rows[0].flags.c_contiguous
    vr.resize_frames(views, H, W, out=rows)
    assert np.array_equal(wide[:, :, 2:W + 2], _v1(x, H, W))
    assert (wide[:, :, :2] == 7).all() and (wide[:, :, W + 2:] == 7).all()  # nothing else written


def test_two_torch_threads_give_the_same_values():
    x = _frames(1, 331, 517, seed=9)
    want = _v1(x, 150, 224)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert np.array_equal(vr.resize_frames(x, 150, 224), want)
    finally:
        torch.set_num_threads(before)


def test_fast_path_never_falls_back_to_interpolate(monkeypatch):
    # The finding of the review: the strips were strided views of the planar buffer, so each one went
    # through `F.interpolate` + a copy. Every pass now writes its own contiguous block with the
    # kernel's out= overload (a 1080p frame: several strips, the last one short).
    h, w, H, W = 1088, 1936, 532, 952
    x = _frames(1, h, w, seed=3)
    want, want_h = _v1(x, H, W), _v1(x, h, W)

    def refuse(*a, **k):
        raise AssertionError("float resize fell back to F.interpolate + copy")

    monkeypatch.setattr(F, "interpolate", refuse)
    assert np.array_equal(vr.resize_frames(x, H, W), want)
    assert np.array_equal(vr.resize_frames(x, h, W), want_h)  # horizontal pass only


@pytest.mark.parametrize("hw,HW", [((97, 161), (140, 224)), ((301, 203), (84, 56)), ((48, 80), (30, 80))])
def test_fallback_without_the_out_overload(hw, HW, monkeypatch):
    # an older torch without `_upsample_bicubic2d_aa(..., out=)`: `F.interpolate` + copy, same values
    def no_out_overload(*a, **k):
        raise TypeError("no out= here")

    monkeypatch.setattr(vr, "_upsample_bicubic_aa", no_out_overload)
    monkeypatch.setattr(vr, "_STRIP_ROWS", 7)
    x = _frames(2, *hw, seed=11)
    assert np.array_equal(vr.resize_frames(x, *HW), _v1(x, *HW))


def test_one_column_output():
    # torch 2.13's antialias kernel on a *contiguous* NCHW float tensor is wrong when the output is one
    # column wide and taller than one row (the vertical pass over 1-wide planes: up to ~200 levels
    # off); on the channels-last tensor qwen-vl-utils passes it is right. vlprep's passes equal the
    # latter and the float64 formula; before, its planar buffers gave the wrong values. (No Qwen size
    # is 1 px wide: sizes are multiples of 28; this is about `resize_frames` itself.)
    x = _frames(2, 97, 64, seed=1)
    got = vr.resize_frames(x, 40, 1)
    assert np.array_equal(got, _v1(x, 40, 1))
    assert np.abs(got - np.clip(_float64_formula(x, 40, 1), 0, 255)).max() <= 0.5 + 1e-3
    wrong = _v1(x, 40, 1, layout="contiguous")
    assert np.abs(wrong.astype(int) - got).max() > 5, "torch fixed its 1-column kernel: drop this assert"
