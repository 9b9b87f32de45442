"""Golden files for the two video resize modes (issue #14), from the real references.

    make reference        # builds .venv-ref, runs every tests/reference/gen_*.py

Writes tests/golden/video_resize.npz (+ the two small clips it decodes, tests/golden/clip_*.{mp4,webm}):

* synthetic cases — hard edges, 1-px checkerboards, noise, smooth and stepped gradients, saturated
  colour blocks, thin lines, odd sizes, up- and downscales, an extreme aspect ratio — and frames
  decoded from a real H.264 encode; for each, the input frames and
  - `qwen-vl-utils` mode: `torchvision.transforms.functional.resize` (v1 API) on the frames as
    qwen-vl-utils 0.0.14 passes them (`torch.tensor(nhwc).permute(0, 3, 1, 2)`, uint8), BICUBIC,
    antialias=True — the float32 path (uint8 → float32 → interpolate → clamp → round);
  - `transformers` mode: transformers' video processor resize (`Qwen2VLVideoProcessor`, i.e.
    `torchvision.transforms.v2.functional.resize` on the contiguous uint8 TCHW tensor its
    `_prepare_input_videos` builds) on CPU — torch's native uint8 bicubic+antialias kernel.
* end to end, per clip: `qwen_vl_utils.fetch_video` itself (decord reader, as installed) — its frame
  indices, sample fps and float output — and the transformers processor's resize of the same decoded
  frames, for `process_video(clip, "qwen2.5-vl", resize=...)` to equal.

Deterministic: the clips are encoded once and kept (re-encoding is not bit-stable across encoder
builds); delete them to re-encode.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))          # tests/: video_factory, media_factory
sys.path.insert(0, str(HERE.parent.parent))   # the repo: processors

from _torchvision import BICUBIC, F_v1, F_v2, torch, versions  # noqa: E402

GOLDEN = HERE.parent / "golden"
OUT = GOLDEN / "video_resize.npz"
CLIPS = {  # name: (file, codec, width, height, frames, fps, encoder options)
    "h264": ("clip_h264.mp4", "libx264", 360, 200, 90, 30, {"preset": "veryfast", "bf": "3"}),
    "vp9": ("clip_vp9.webm", "libvpx-vp9", 224, 128, 60, 24, {"deadline": "realtime", "cpu-used": "8"}),
}


def qwen_vl_utils_resize(frames: np.ndarray, H: int, W: int) -> np.ndarray:
    """qwen-vl-utils 0.0.14 fetch_video: TCHW permuted view of the decoded NHWC uint8 → v1 resize."""
    x = torch.tensor(frames).permute(0, 3, 1, 2)
    y = F_v1.resize(x, [H, W], interpolation=BICUBIC, antialias=True)
    assert y.dtype == torch.uint8
    contiguous = F_v1.resize(x.contiguous(), [H, W], interpolation=BICUBIC, antialias=True)
    assert torch.equal(y, contiguous), "v1 resize depends on the memory layout"
    return y.permute(0, 2, 3, 1).numpy().copy()


def _video_processor():
    from transformers import Qwen2VLVideoProcessor

    return Qwen2VLVideoProcessor()


def transformers_resize(frames: np.ndarray, H: int, W: int, proc=None) -> np.ndarray:
    """transformers' video processor on CPU: `_prepare_input_videos` (numpy → contiguous TCHW uint8),
    then the backend resize the Qwen2-VL processor's `resize` calls with the size it computed."""
    from transformers.image_processing_backends import TorchvisionBackend
    from transformers.image_utils import SizeDict

    proc = proc or _video_processor()
    video = proc._prepare_input_videos([frames])[0]
    assert video.dtype == torch.uint8 and video.is_contiguous() and video.shape[1] == 3, video.shape
    y = TorchvisionBackend.resize(proc, video, SizeDict(height=H, width=W), resample=proc.resample)
    direct = F_v2.resize(video, [H, W], interpolation=BICUBIC, antialias=True)
    assert torch.equal(y, direct), "the processor's resize is not v2 resize"
    assert y.dtype == torch.uint8
    return y.permute(0, 2, 3, 1).numpy().copy()


def synthetic_cases() -> dict[str, tuple[np.ndarray, tuple[int, int]]]:
    rng = np.random.default_rng(14)
    cases: dict[str, tuple[np.ndarray, tuple[int, int]]] = {}

    def edge(h, w):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, w // 2:] = 255
        f[h // 4:3 * h // 4, w // 6:w // 3] = 255
        f[h // 3:h // 2, 2 * w // 3:5 * w // 6] = 0
        return f

    cases["edges_up"] = (np.stack([edge(40, 60), 255 - edge(40, 60)]), (112, 168))
    cases["edges_down_odd"] = (edge(157, 233)[None], (56, 84))
    cb = ((np.indices((64, 96)).sum(0) % 2) * 255).astype(np.uint8)
    cases["checker_1px_down"] = (np.repeat(cb[None, :, :, None], 3, axis=3), (28, 56))
    cb2 = ((np.indices((75, 131)) // 3).sum(0) % 2 * 255).astype(np.uint8)
    cases["checker_3px_up_odd"] = (np.stack([cb2] * 3, axis=-1)[None], (140, 252))
    cases["noise_down"] = (rng.integers(0, 256, (3, 97, 161, 3), dtype=np.uint8), (84, 168))
    cases["noise_up_odd"] = (rng.integers(0, 256, (1, 61, 45, 3), dtype=np.uint8), (196, 140))
    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    smooth = np.stack([xx / 159 * 255, yy / 119 * 255, (xx + yy) / 278 * 255], -1)
    cases["gradient_smooth_up"] = (np.round(np.stack([smooth, smooth[::-1]])).astype(np.uint8), (168, 224))
    steps = (np.floor(xx / 8) * 16 % 256).astype(np.uint8)
    cases["gradient_steps_down"] = (np.stack([steps, 255 - steps, steps[::-1]], -1)[None], (56, 84))
    sat = np.zeros((90, 120, 3), np.uint8)
    sat[:, :40] = (255, 0, 0)
    sat[:, 40:80] = (0, 255, 0)
    sat[:, 80:] = (0, 0, 255)
    sat[::9] = 255  # 1-px white lines
    sat[:, ::13] = 0  # 1-px black lines
    cases["saturated_lines_up"] = (sat[None], (196, 252))
    text = np.full((200, 300, 3), 255, np.uint8)
    for _ in range(40):  # glyph-like dark strokes
        y0, x0 = rng.integers(0, 190), rng.integers(0, 290)
        text[y0:y0 + rng.integers(1, 10), x0:x0 + rng.integers(1, 10)] = rng.integers(0, 60)
    cases["text_like_down"] = (text[None], (112, 168))
    cases["extreme_aspect"] = (rng.integers(0, 256, (1, 30, 600, 3), dtype=np.uint8), (28, 588))
    big = np.round(smooth[None]).astype(np.uint8)
    big = np.ascontiguousarray(np.tile(big, (1, 3, 3, 1))[:, :331, :467])  # 331x467: odd both ways
    big[:, 100:300:2, 200:400] = 0  # interlace-like hard lines
    cases["lines_down_big_odd"] = (big, (168, 224))
    return cases


def clip_frame(i: int, w: int, h: int) -> np.ndarray:
    """Camera-like content: smooth shading, soft texture, a moving hard-edged block."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 128 + 70 * np.sin((xx + 3 * i) / 17) * np.cos(yy / 23) + 40 * np.sin((xx + yy - 2 * i) / 41)
    f = np.stack([base, 0.8 * base + 25, 255 - base], -1)
    s = max(8, min(w, h) // 5)
    x0, y0 = (i * 5) % (w - s), (i * 2) % (h - s)
    f[y0:y0 + s, x0:x0 + s] = (250, 30, 40)
    return np.clip(np.round(f), 0, 255).astype(np.uint8)


def digest(a: np.ndarray) -> str:
    """What the tests compare big outputs by: sha256 of dtype, shape and bytes (bit for bit)."""
    import hashlib

    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()


def ensure_clips() -> dict[str, Path]:
    from video_factory import make_clip

    GOLDEN.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (fn, codec, w, h, n, fps, opts) in CLIPS.items():
        p = GOLDEN / fn
        if not p.exists():
            make_clip(p, codec=codec, width=w, height=h, num_frames=n, fps=fps, gop=n, options=opts,
                      frame_fn=clip_frame)
        paths[name] = p
    return paths


def main() -> None:
    os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
    clip_paths = ensure_clips()  # before decord is imported: its bundled FFmpeg breaks PyAV's libvpx
    proc = _video_processor()
    data: dict[str, np.ndarray] = {}
    names = []
    for name, (frames, (H, W)) in synthetic_cases().items():
        names.append(name)
        data[f"{name}/input"] = frames
        data[f"{name}/qwen-vl-utils"] = qwen_vl_utils_resize(frames, H, W)
        data[f"{name}/transformers"] = transformers_resize(frames, H, W, proc)

    import decord
    from qwen_vl_utils import fetch_video

    clips = []
    report = []
    for name, path in clip_paths.items():
        (video, meta), sample_fps = fetch_video({"video": str(path)}, return_video_sample_fps=True,
                                                 return_video_metadata=True)
        idx = np.asarray(meta["frames_indices"], dtype=np.int64)
        H, W = video.shape[-2:]
        qvu = video.permute(0, 2, 3, 1).numpy()
        assert np.array_equal(qvu, np.round(qvu)) and qvu.min() >= 0 and qvu.max() <= 255
        qvu = qvu.astype(np.uint8)
        frames = decord.VideoReader(str(path), ctx=decord.cpu(0)).get_batch(idx.tolist()).asnumpy()
        assert np.array_equal(qwen_vl_utils_resize(frames, H, W), qvu)  # fetch_video = v1 on these frames
        tf = transformers_resize(frames, H, W, proc)
        clips.append(name)
        data[f"clip_{name}/indices"] = idx
        data[f"clip_{name}/sample_fps"] = np.float64(sample_fps)
        data[f"clip_{name}/size"] = np.array([H, W])
        data[f"clip_{name}/decoded_sha256"] = np.array(digest(frames))
        data[f"clip_{name}/qwen-vl-utils_sha256"] = np.array(digest(qvu))
        data[f"clip_{name}/transformers_sha256"] = np.array(digest(tf))
        data[f"clip_{name}/qwen-vl-utils_crop"] = qvu[:, :32, :32]   # to see what differs, if it does
        data[f"clip_{name}/transformers_crop"] = tf[:, :32, :32]
        report.append((f"clip_{name}", frames.shape, qvu, tf))
        print(f"{name}: {len(idx)} frames {idx.tolist()} -> {H}x{W}, sample_fps {sample_fps}")

    v = versions()
    from importlib.metadata import version

    v["qwen_vl_utils"] = version("qwen-vl-utils")
    v["decord"] = decord.__version__
    data["cases"] = np.array(names)
    data["clips"] = np.array(clips)
    data["versions"] = np.array([f"{k}={val}" for k, val in sorted(v.items())])
    np.savez_compressed(OUT, **data)
    report = [(n, data[f"{n}/input"].shape, data[f"{n}/qwen-vl-utils"], data[f"{n}/transformers"]) for n in names] + report
    for name, shape, a, b in report:
        print(f"{name:24s} {str(shape):20s} -> {a.shape[1]}x{a.shape[2]}: the modes differ on "
              f"{(a != b).mean() * 100:5.2f} % of values, max {np.abs(a.astype(int) - b).max()}")
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB); {v}")


if __name__ == "__main__":
    main()
