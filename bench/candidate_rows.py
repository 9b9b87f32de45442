"""Benchmark: a batch's candidate continuations (Continuations.add_batch + sums) on the prefix-tree rows
and on the one-row-per-candidate path (FlashAttention-2, vision candidates; forced here on CPU), with
CPU seconds and the peak bytes the continuation calls hold on the CPU (torch profiler memory events).

    OMP_NUM_THREADS=1 python bench/candidate_rows.py --layers 2 6 --candidates 64
    OMP_NUM_THREADS=1 python bench/candidate_rows.py --lib /path/to/other/checkout   # its filters/ instead

A tiny random Qwen2-VL (hidden 64, `--layers` text layers, from tests/tiny_models.tiny_config) and four
image samples (`--side` px, prefixes of ~`side**2/784/4` tokens), each with `--candidates` short
answers (and a question as the head with `--heads`). Best of `--repeat` per row; the sums of both paths
and of every run are printed as a checksum (equal across checkouts when the values are).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, nargs="+", default=[2, 6])
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--heads", action="store_true", help="a question before the candidates (vlm_category's shape)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--lib", default=None, help="import filters/ from this checkout instead (an A/B)")
    a = p.parse_args()
    sys.path[:0] = [str(a.lib or ROOT), str(ROOT / "tests")]

    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import Qwen2VLForConditionalGeneration

    import filters.reward.candidates as cand
    from filters.reward.batching import HostBatch
    from filters.reward.grounding_scorer import GroundingScorer
    from processors.presets import IM_END_ID, get_preset
    from processors.tokenizer import get_tokenizer
    from test_reward_fixtures import encode_frames, photo
    from tiny_models import tiny_config

    family, preset = "qwen2-vl", get_preset("qwen2-vl")
    tok = get_tokenizer(preset=preset)
    samples = [{"id": e.id, **e.arrays(), "meta": e.meta} for e in
               [encode_frames(f"s{j}", "Describe the picture.", "A cat.", images=[photo(a.side, a.side + 28 * j, j)],
                              preset=family) for j in range(4)]]
    batch = HostBatch(samples, preset)
    prefixes = [cand.truncate(s, cand.first_answer(s)[0]) for s in samples]
    words = "cat dog sofa red table sleeping jumps onto the a".split()
    conts = [[tok.encode(" ".join(words[(j + c) % 10:(j + c) % 10 + 1 + c % 3])) + [IM_END_ID]
              for c in range(a.candidates)] for j in range(len(samples))]
    head = tok.encode("\n<|im_start|>user\nIs it a cat?<|im_end|>\n<|im_start|>assistant\n")
    heads = [head] * len(samples) if a.heads else None
    tree_ok = cand._tree_ok

    def peak(fn):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        mem = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                     key=lambda e: e.start_ns())
        return max(itertools.accumulate(e.nbytes() for e in mem))

    print(f"library: {a.lib or ROOT}; torch threads {torch.get_num_threads()}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| layers | path | cpu s (best of %d) | peak MB (continuation calls) | checksum |" % a.repeat)
    print("|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for layers in a.layers:
            torch.manual_seed(0)
            folder = Path(tmp) / str(layers)
            Qwen2VLForConditionalGeneration(tiny_config(family, layers)).eval().save_pretrained(folder)
            scorer = GroundingScorer(str(folder))
            scorer.setup(torch.device("cpu"))
            with torch.inference_mode():
                (group, pre), = list(cand.encode_batches(scorer.vlm, prefixes, batch, budget_tokens=1 << 20))
                for path in ("tree", "per-candidate"):
                    cand._tree_ok = tree_ok if path == "tree" else (lambda *_: False)
                    c = cand.Continuations(scorer.vlm, batch, budget_tokens=1 << 20)
                    pk = peak(lambda: c.add_batch(pre, [conts[i] for i in group], heads=heads))
                    best, sums = float("inf"), []
                    for _ in range(a.repeat):
                        t0 = time.process_time()
                        c = cand.Continuations(scorer.vlm, batch, budget_tokens=1 << 20)
                        c.add_batch(pre, [conts[i] for i in group], heads=heads)
                        s, _ = c.sums()
                        best = min(best, time.process_time() - t0)
                        sums.append(s)
                    assert all(np.array_equal(sums[0], x) for x in sums[1:])
                    print(f"| {layers} | {path} | {best:.3f} | {pk / 1e6:.1f} | {sums[0].sum():.9f} |")
            cand._tree_ok = tree_ok


if __name__ == "__main__":
    main()
