"""Tiny Qwen2-VL / Qwen2.5-VL checkpoints (built by tests/tiny_models.py), saved to a folder, loaded by path.

Full vocabulary (the special-token ids sit at 151643+) but hidden sizes of 64 and two layers, so a
forward pass takes milliseconds on CPU. Imported by the other tests/test_reward_*.py modules.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tiny_models import VOCAB, build_tiny_model, tiny_config  # noqa: F401  (re-exported: the builders live there)


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tmp_path_factory) -> Path:
    return build_tiny_model("qwen2-vl", tmp_path_factory.mktemp("tiny_qwen2_vl"))


@pytest.fixture(scope="session")
def tiny_qwen25_vl(tmp_path_factory) -> Path:
    return build_tiny_model("qwen2.5-vl", tmp_path_factory.mktemp("tiny_qwen25_vl"))


def test_tiny_checkpoints_are_tiny_and_load_by_path(tiny_qwen2_vl, tiny_qwen25_vl):
    import transformers

    for path, model_type in ((tiny_qwen2_vl, "qwen2_vl"), (tiny_qwen25_vl, "qwen2_5_vl")):
        cfg = transformers.AutoConfig.from_pretrained(path)
        assert cfg.model_type == model_type
        assert cfg.text_config.hidden_size == 64 and cfg.text_config.num_hidden_layers == 2
        weights = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
        assert weights < 60_000_000, weights


# -- encoded samples and shards built from vlprep's own processors ----------------------------------

def encode_frames(sid: str, question: str, answer: str, *, images=(), videos=(), secs=(), preset="qwen2.5-vl"):
    """An EncodedSample from uint8 frames whose sides are already multiples of 28 (no resize step):
    images: [H, W, 3] arrays; videos: [T, H, W, 3] arrays. ChatML, labels and M-RoPE ids come from
    processors.chatml / processors.rope, patches from processors.patches."""
    import numpy as np

    from processors.chatml import build_chatml
    from processors.patches import patchify
    from processors.presets import get_preset
    from processors.rope import get_rope_index
    from processors.sample import EncodedSample, ImagePart, MediaRef, Message, Sample, TextPart, VideoPart
    from processors.tokenizer import get_tokenizer

    preset = get_preset(preset)
    img = [patchify(np.asarray(im)[None]) for im in images]
    vid = [patchify(np.asarray(v)) for v in videos]
    parts = [ImagePart(i) for i in range(len(img))] + [VideoPart(i) for i in range(len(vid))] + [TextPart(question)]
    sample = Sample(sid, [Message("user", parts), Message("assistant", [TextPart(answer)])],
                    images=[MediaRef("image") for _ in img], videos=[MediaRef("video") for _ in vid])
    chat = build_chatml(sample, preset, get_tokenizer(preset=preset),
                        image_tokens=[int(np.prod(g)) // 4 for _, g in img],
                        video_tokens=[int(np.prod(g)) // 4 for _, g in vid])
    ids = np.asarray(chat.input_ids, np.int32)
    ig = np.array([g for _, g in img], np.int32).reshape(-1, 3)
    vg = np.array([g for _, g in vid], np.int32).reshape(-1, 3)
    sec = np.array(secs, np.float32)
    pos, delta = get_rope_index(ids, ig, vg, sec if len(vid) else None, preset)
    pv = np.concatenate([p for p, _ in img + vid]) if img or vid else np.zeros((0, preset.patch_dim), np.uint8)
    return EncodedSample(sid, ids, np.asarray(chat.labels, np.int32), np.asarray(pos, np.int32), pv, ig, vg, sec,
                         int(delta), {"id": sid})


def write_shard(out_dir, unit: str, encoded: list) -> str:
    """A webdataset tar with the member names of docs/CONTRACTS.md; returns its path relative to out_dir."""
    import io
    import json
    import tarfile

    import numpy as np

    rel = f"shards/{unit}.tar"
    path = Path(out_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for e in encoded:
            members = []
            for name, arr in e.arrays().items():
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=False)
                members.append((f"{e.id}.{name}.npy", buf.getvalue()))
            members.append((f"{e.id}.meta.json", json.dumps(e.meta).encode()))
            for name, data in sorted(members):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return rel


def photo(h: int, w: int, seed: int = 0):
    """A photo-like uint8 image: smooth shapes and edges plus mild sensor noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    img[..., 0] = 120 + 80 * np.sin(x / 9.0 + seed)
    img[..., 1] = 100 + 60 * np.cos(y / 7.0)
    img[..., 2] = 90 + 50 * np.sin((x + y) / 11.0)
    for _ in range(6):  # hard-edged objects
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(6, max(7, min(h, w) // 3))
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
