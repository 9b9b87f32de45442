"""Issue #14: both video resize modes equal their reference bit for bit, on golden files written by
the real references (`make reference`: torchvision 0.28, transformers 5.24, qwen-vl-utils 0.0.14 in
a separate venv; tests/reference/gen_video_resize.py). torchvision is not needed here.

* "qwen-vl-utils" mode  == torchvision.transforms.functional.resize (v1) == qwen_vl_utils.fetch_video
* "transformers" mode   == torchvision.transforms.v2.functional.resize on CPU == transformers'
                           Qwen2VLVideoProcessor resize
"""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from processors.patches import patchify
from processors.video import process_video, probe_video
from processors.video_decode import decode_pyav
from processors.video_resize import RESIZE_MODES, resize_frames, resize_mode

GOLDEN = Path(__file__).parent / "golden"
G = np.load(GOLDEN / "video_resize.npz")
CASES = [str(c) for c in G["cases"]]
CLIPS = [str(c) for c in G["clips"]]
FILES = {"h264": "clip_h264.mp4", "vp9": "clip_vp9.webm"}


def digest(a: np.ndarray) -> str:  # the generator's rule: sha256 of dtype, shape and bytes
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()


def _explain(got: np.ndarray, want: np.ndarray) -> str:
    d = np.abs(got.astype(np.int16) - want.astype(np.int16))
    return f"{(d > 0).mean() * 100:.3f} % of values differ, max {d.max()}"


def test_goldens_cover_what_the_issue_asks():
    assert {"edges_up", "checker_1px_down", "noise_down", "noise_up_odd", "gradient_smooth_up",
            "text_like_down", "extreme_aspect", "lines_down_big_odd"} <= set(CASES)
    shapes = [G[f"{c}/input"].shape for c in CASES]
    outs = [G[f"{c}/qwen-vl-utils"].shape for c in CASES]
    assert any(o[1] * o[2] > s[1] * s[2] for s, o in zip(shapes, outs))  # upscales
    assert any(o[1] * o[2] < s[1] * s[2] for s, o in zip(shapes, outs))  # downscales
    assert any(s[1] % 2 and s[2] % 2 for s in shapes)                     # odd sizes
    assert set(CLIPS) == {"h264", "vp9"}
    versions = " ".join(str(v) for v in G["versions"])
    assert "torchvision=0.28" in versions and "transformers=5.24" in versions


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("case", CASES)
def test_mode_equals_its_reference(case, mode):
    frames, want = G[f"{case}/input"], G[f"{case}/{mode}"]
    got = resize_frames(frames, want.shape[1], want.shape[2], mode=mode)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.array_equal(got, want), f"{case}, {mode}: {_explain(got, want)}"


@pytest.mark.parametrize("case", CASES)
def test_the_references_differ(case):
    # Why the mode matters: the two references are different functions (pinned so the docs stay true;
    # on a stepped gradient with exact sub-sampling they happen to agree).
    a, b = G[f"{case}/qwen-vl-utils"], G[f"{case}/transformers"]
    if case == "gradient_steps_down":
        assert np.array_equal(a, b)
    else:
        assert not np.array_equal(a, b)


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_single_frame_and_layout(mode):
    # [h, w, 3] input, and a non-contiguous (sliced) stack: same values as the stacked golden.
    case = "edges_up"
    frames, want = G[f"{case}/input"], G[f"{case}/{mode}"]
    H, W = want.shape[1:3]
    assert np.array_equal(resize_frames(frames[1], H, W, mode=mode), want[1])
    wide = np.concatenate([frames, frames], axis=2)[:, :, : frames.shape[2]]
    assert not wide.flags.c_contiguous
    assert np.array_equal(resize_frames(wide, H, W, mode=mode), want)


@pytest.mark.parametrize("clip", ["h264", "vp9"])
@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_process_video_equals_the_reference_pipeline(clip, mode):
    """End to end on a real encode: qwen_vl_utils.fetch_video's frames (qwen-vl-utils mode) and
    transformers' video processor resize of the same decoded frames (transformers mode)."""
    path = GOLDEN / FILES[clip]
    idx, (H, W) = G[f"clip_{clip}/indices"], tuple(int(v) for v in G[f"clip_{clip}/size"])
    # 1. same frames decoded (vlprep's PyAV decode vs the reference's decord)
    info = probe_video(path)
    decoded = np.stack([f for _, f in decode_pyav(info, idx)])
    assert digest(decoded) == str(G[f"clip_{clip}/decoded_sha256"]), "decoded frames differ from decord's"
    # 2. the resize of those frames
    resized = resize_frames(decoded, H, W, mode=mode)
    crop = G[f"clip_{clip}/{mode}_crop"]
    assert np.array_equal(resized[:, :32, :32], crop), _explain(resized[:, :32, :32], crop)
    assert digest(resized) == str(G[f"clip_{clip}/{mode}_sha256"])
    # 3. the public API: same indices, rate, size, and patches of exactly those frames
    r = process_video(path, "qwen2.5-vl", resize=mode)
    assert r.frame_indices == idx.tolist() and r.resized_size == (H, W)
    assert r.sample_fps == pytest.approx(float(G[f"clip_{clip}/sample_fps"]), rel=1e-9)
    assert np.array_equal(r.patches, patchify(resized, 14, 2, 2)[0])


def test_mode_names_and_the_deprecated_flag():
    assert resize_mode() == "qwen-vl-utils"
    assert resize_mode(fast=True) == "transformers" and resize_mode(fast=False) == "qwen-vl-utils"
    assert resize_mode("transformers", fast=True) == "transformers"
    with pytest.raises(ValueError, match="contradicts"):
        resize_mode("qwen-vl-utils", fast=True)
    with pytest.raises(ValueError, match=r"one of \['qwen-vl-utils', 'transformers'\]"):
        resize_mode("fast")
    f = G["noise_down/input"]
    assert np.array_equal(resize_frames(f, 84, 168, fast=True), G["noise_down/transformers"])
    with pytest.raises(ValueError, match="must be one of"):
        resize_frames(f, 84, 168, mode="bicubic")


# --- the job option and what the report records ------------------------------------------------

def _cfg(tmp_path, overrides):
    from pipeline.config import JobConfig

    p = tmp_path / "job.yaml"
    p.write_text("sources: [a.jsonl]\n")
    return JobConfig.from_yaml(p, overrides)


@pytest.mark.parametrize("overrides,want", [
    ([], "qwen-vl-utils"),
    (["video.resize=transformers"], "transformers"),
    (["video.resize=qwen-vl-utils"], "qwen-vl-utils"),
    (["video.fast=true"], "transformers"),                     # deprecated alias
    (["video.fast=true", "video.resize=transformers"], "transformers"),
    (["preset=qwen3-vl"], "transformers"),                          # the preset's reference
    (["preset=qwen3-vl", "video.resize=qwen-vl-utils"], "qwen-vl-utils"),
])
def test_job_option_video_resize(tmp_path, overrides, want):
    from processors.encode import EncodeOptions

    cfg = _cfg(tmp_path, overrides)
    assert cfg.video_resize() == want
    assert EncodeOptions.from_dict(cfg.encode_options()).video_resize == want


@pytest.mark.parametrize("overrides,msg", [
    (["video.resize=fast"], r"video.resize 'fast' is not one of \['qwen-vl-utils', 'transformers'\]"),
    (["video.fast=true", "video.resize=qwen-vl-utils"], r"video.resize: .*contradicts.*drop `fast`"),
])
def test_job_option_video_resize_errors(tmp_path, overrides, msg):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=msg):
        _cfg(tmp_path, overrides)


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_encode_sample_uses_the_job_mode(mode):
    from processors.encode import EncodeOptions, encode_sample
    from processors.sample import MediaRef, Message, Sample, TextPart, VideoPart

    sample = Sample(id="v", messages=[Message("user", [VideoPart(0), TextPart("what happens?")]),
                                      Message("assistant", [TextPart("a block moves")])],
                    videos=[MediaRef("video", FILES["h264"])])
    enc = encode_sample(sample, "qwen2.5-vl", media_root=GOLDEN, options=EncodeOptions(video_resize=mode))
    want = process_video(GOLDEN / FILES["h264"], "qwen2.5-vl", resize=mode).patches
    assert np.array_equal(enc.pixel_values, want)  # no images: pixel_values are the video's patches


@pytest.mark.parametrize("overrides,want", [([], "qwen-vl-utils"), (["video.fast=true"], "transformers"),
                                            (["video.resize=transformers"], "transformers"),
                                            (["preset=qwen3-vl"], "transformers")])
def test_report_records_the_reference(tmp_path, overrides, want):
    from pipeline.report.prepared import video_resize_reference

    (tmp_path / "job.json").write_text(_cfg(tmp_path, overrides).to_json())
    assert video_resize_reference(tmp_path) == want
    assert video_resize_reference(tmp_path / "missing") is None


# --- MPEG-4 Part 2 B-VOPs are skipped like H.264 non-reference frames (issue #14 scope 3) ---------

def test_mpeg4_avi_bframes_skipped_and_exact(tmp_path, monkeypatch):
    import av
    from video_factory import full_decode, make_clip

    from processors import video_decode
    from processors.video import select_frames

    path = make_clip(tmp_path / "bf.avi", codec="mpeg4", num_frames=150, gop=60, width=160, height=96,
                     options={"bf": "2"})
    info = probe_video(path)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert video_decode._nonref_skip_safe(s, info)
        s.codec_context.skip_frame = "NONREF"
        assert sum(1 for _ in c.decode(s)) <= 100  # about 2 of 3 frames are B-VOPs: really skipped
    full, _ = full_decode(path)
    monkeypatch.setattr(video_decode, "_stop_skipping", lambda o: pytest.fail("fell back to plain decoding"))
    for req in [{"fps": 2}, {"fps": 7}, {"nframes": 4}, {"nframes": 120},
                {"video_start": 1.1, "video_end": 3.3}, {"fps": 5, "video_start": 2.5}]:
        idx, _ = select_frames(info, preset="qwen2.5-vl", **req)
        got = dict(decode_pyav(info, idx))
        assert sorted(got) == sorted(set(idx.tolist()))
        for i, f in got.items():
            assert np.array_equal(f, full[i]), (req, i)


@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("case", CASES)
def test_float_mode_strip_path_equals_the_reference(monkeypatch, case, rows):
    # The float mode runs its horizontal pass on row strips; strips of any height on every golden
    # case must still equal torchvision v1.
    import processors.video_resize as vr

    monkeypatch.setattr(vr, "_STRIP_ROWS", rows)
    frames, want = G[f"{case}/input"], G[f"{case}/qwen-vl-utils"]
    got = resize_frames(frames, want.shape[1], want.shape[2], mode="qwen-vl-utils")
    assert np.array_equal(got, want), f"{case}, strips of {rows}: {_explain(got, want)}"


def test_float_mode_strip_path_on_large_frames():
    # 4K and 1080p frames (the sizes the strip path is for) against the literal v1 steps
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(14)
    for (h, w), (H, W) in [((2160, 3840), (560, 1008)), ((1080, 1920), (532, 952)), ((721, 1283), (728, 1288))]:
        x = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        x[:, h // 3:h // 2, :] = 255  # a hard edge too
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        want = F.interpolate(t.to(torch.float32), size=(H, W), mode="bicubic", antialias=True,
                             align_corners=False).clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(resize_frames(x, H, W), want), (h, w)


def test_decoder_threads_per_resolution():
    import dataclasses

    from processors.video_decode import decoder_threads

    info = probe_video(GOLDEN / FILES["h264"])  # 360x200: one thread
    assert decoder_threads(info) == 1
    assert decoder_threads(dataclasses.replace(info, width=1280, height=720)) == 0
    assert decoder_threads(dataclasses.replace(info, width=3840, height=2160)) == 0
    idx = G["clip_h264/indices"]
    one = dict(decode_pyav(info, idx))              # the rule: 1 thread here
    auto = dict(decode_pyav(info, idx, threads=0))  # FFmpeg's count
    assert sorted(one) == sorted(auto) and all(np.array_equal(one[i], auto[i]) for i in one)
