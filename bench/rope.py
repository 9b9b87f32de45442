"""M-RoPE position ids: vlprep (numpy) beside transformers' get_rope_index (torch), same inputs, same run.

    python bench/rope.py [--repeat 5]

Cases: the T-I1 image prompt (2.7k tokens), the T-V1 video (7.2k) and the 10-minute T-V10 video
(106k tokens). transformers 5.x differs from vlprep's 4.x reference after long videos (spec §11.4
item 3), so the table also says whether the outputs are equal.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from processors.presets import IMAGE_PAD_ID, VIDEO_PAD_ID, VISION_END_ID  # noqa: E402
from processors.rope import get_rope_index  # noqa: E402

PREFIX15 = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652]
CASES = [
    ("T-I1 image 39x69", IMAGE_PAD_ID, (1, 78, 138), None),
    ("T-V1 video 10x20x36", VIDEO_PAD_ID, (10, 40, 72), 1.0),
    ("T-V10 video 384x12x23", VIDEO_PAD_ID, (384, 24, 46), 1.5640641),
]


def hf_model():
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=64, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                  tokens_per_second=2, fullatt_block_indexes=[0])
    return Qwen2_5_VLModel(Qwen2_5_VLConfig(text_config=text, vision_config=vision)).eval()


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import torch

    model = hf_model()
    print(f"{'case':24} {'tokens':>8} {'vlprep ms':>10} {'transformers ms':>16} {'equal':>6}")
    for name, pad, grid, s in CASES:
        n = grid[0] * grid[1] * grid[2] // 4
        ids = np.array(PREFIX15 + [pad] * n + [VISION_END_ID, 1, 2, 3])
        is_video = pad == VIDEO_PAD_ID
        kw = dict(video_grid_thw=[grid], second_per_grid_ts=[s]) if is_video else dict(image_grid_thw=[grid])
        ours = lambda: get_rope_index(ids, **kw)  # noqa: E731

        ids_t = torch.tensor(ids)[None]
        types = torch.zeros_like(ids_t, dtype=torch.int32)
        types[ids_t == pad] = 2 if is_video else 1
        hf_kw = {"video_grid_thw": torch.tensor([grid])} if is_video else {"image_grid_thw": torch.tensor([grid])}
        if is_video:
            hf_kw["second_per_grid_ts"] = torch.tensor([s], dtype=torch.float32)

        def ref():
            with torch.no_grad():
                return model.get_rope_index(ids_t, types, **hf_kw)

        equal = np.array_equal(ours()[0], ref()[0][:, 0].numpy())
        print(f"{name:24} {len(ids):>8} {best_of(ours, args.repeat) * 1e3:>10.2f} "
              f"{best_of(ref, args.repeat) * 1e3:>16.2f} {str(equal):>6}")


if __name__ == "__main__":
    main()
