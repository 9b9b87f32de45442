"""A small corpus of records that exercises what the sample plan decides (sizes, per-item options,
frames, boxes, system turns), for tests/test_plan_refactor.py and its generator
tests/reference/once_encode_digests.py. Only public APIs that existed before the plan refactor
(`parse_record`, `encode_sample`, `EncodeOptions`) are used, so the generator can run on old code."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

CLIP = Path(__file__).parent / "golden" / "qwen3_vl_clip.mp4"
PRESETS = ("qwen2.5-vl", "qwen2-vl", "qwen-vl")


def make_media(root: Path) -> Path:
    from media_factory import gradient_rgb

    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gradient_rgb(640, 480, seed=1)).save(root / "a.png")
    Image.fromarray(gradient_rgb(1000, 200, seed=2)).save(root / "b.png")
    Image.fromarray(gradient_rgb(50, 40, seed=3)).save(root / "c.png")
    for i in range(5):
        Image.fromarray(gradient_rgb(120, 90, seed=10 + i)).save(root / f"f{i}.png")
    (root / "clip.mp4").write_bytes(CLIP.read_bytes())
    return root


def _rec(user, answer, system=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": msgs}


Q2_BOX = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(100,200),(500,900)<|box_end|>"
Q25_BOX = '```json\n[{"bbox_2d": [30, 40, 200, 300], "label": "cat"}]\n```'

RECORDS = {
    "image_box_q2": (_rec([{"type": "image", "image": "a.png"}, {"type": "text", "text": "Where?"}], Q2_BOX), "qwen2-vl"),
    "image_box_q25": (_rec([{"type": "image", "image": "a.png"}, {"type": "text", "text": "Where?"}], Q25_BOX),
                      "qwen2.5-vl"),
    "two_images_item_band": (_rec([{"type": "image", "image": "a.png", "max_pixels": 28 * 28 * 64},
                                   {"type": "image", "image": "b.png"}, {"type": "text", "text": "Compare."}],
                                  "The first is square-ish."), None),
    "resized_request": (_rec([{"type": "image", "image": "b.png", "resized_height": 300, "resized_width": 500},
                              {"type": "text", "text": "Describe."}], "A band."), None),
    "tiny_image": (_rec([{"type": "image", "image": "c.png"}, {"type": "text", "text": "Small?"}], "Yes.",
                        system="Be brief."), None),
    "video_fps": (_rec([{"type": "video", "video": "clip.mp4", "fps": 4.0}, {"type": "text", "text": "What?"}],
                       "A bar."), None),
    "video_nframes": (_rec([{"type": "video", "video": "clip.mp4", "nframes": 6, "max_pixels": 28 * 28 * 8},
                            {"type": "text", "text": "What?"}], "A bar."), None),
    "frame_list": (_rec([{"type": "video", "video": [f"f{i}.png" for i in range(5)], "sample_fps": 1.0},
                         {"type": "text", "text": "Changes?"}], "Colours."), None),
    "image_and_video": (_rec([{"type": "image", "image": "a.png"}, {"type": "video", "video": "clip.mp4"},
                              {"type": "text", "text": "Both?"}], Q2_BOX), "qwen2-vl"),
    "text_only": (_rec("Say hi.", "Hi."), None),
}


def digest(name: str, preset: str, root: Path) -> str:
    """sha256 over every array (dtype, shape, bytes) and the meta json of one encoded record; for a
    record the preset refuses, the error type."""
    from processors import EncodeOptions, encode_sample, parse_record
    from processors.errors import VlprepError

    record, fmt = RECORDS[name]
    sample = parse_record(json.loads(json.dumps(record)), source="cases", index=0)
    opts = EncodeOptions(grounding_format=fmt)
    try:
        enc = encode_sample(sample, preset, media_root=root, options=opts)
    except VlprepError as exc:
        return f"error:{type(exc).__name__}"
    h = hashlib.sha256()
    for k, v in enc.arrays().items():
        v = np.ascontiguousarray(v)
        h.update(f"{k}:{v.dtype.str}:{v.shape}".encode())
        h.update(v.tobytes())
    h.update(str(enc.rope_delta).encode())
    h.update(json.dumps(enc.meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    return h.hexdigest()
