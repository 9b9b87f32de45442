"""Pre-flight speed: `vlprep stats` on a raw corpus (media headers only) vs decoding every image.

    python bench/stats.py [--records 50000] [--images 300] [--reference-records 10000] [--workers 8]
                          [--executors threads,ray]

Generates bench/_data/ (git-ignored): a few hundred distinct small JPEG/PNG files and a jsonl of
LLaMA-Factory records referencing them repeatedly (1–2 images each). The reference uses the thread
count of vlprep's thread pool. The reference opens and fully decodes every referenced image (Pillow
load + RGB), then does the smart_resize token arithmetic — what a script without header-only reads
would do. vlprep runs the whole pre-flight: parse, clean, filters, media header checks, ChatML
tokenization, statistics; once per executor: `threads` (--workers threads in one process) and `ray`
(what `vlprep stats` runs: work units as tasks on an embedded local Ray with one worker per CPU;
its seconds include starting and stopping Ray; the start-up is also shown on its own).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

DATA = ROOT / "bench" / "_data" / "stats"


def make_corpus(n_records: int, n_images: int) -> Path:
    import numpy as np

    from media_factory import make_image

    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n_images):
        w, h = int(rng.integers(160, 900)), int(rng.integers(120, 700))
        name = f"img{i:04d}.{'jpg' if i % 3 else 'png'}"
        if not (DATA / name).exists():
            make_image(DATA / name, w, h, seed=i)
        names.append(name)
    path = DATA / f"corpus_{n_records}.jsonl"
    if not path.exists():
        with open(path, "w") as f:
            for i in range(n_records):
                k = 1 + (i % 2)
                imgs = [names[int(j)] for j in rng.integers(0, n_images, k)]
                user = "".join("<image>" for _ in imgs) + f"Question {i}: what is shown here?"
                f.write(json.dumps({"messages": [{"role": "user", "content": user},
                                                 {"role": "assistant", "content": f"Answer number {i}, a gradient."}],
                                    "images": imgs}) + "\n")
    return path


def reference(path: Path, limit: int, workers: int) -> tuple[int, float, int]:
    """Decode every referenced image of the first `limit` records; returns (records, seconds, tokens)."""
    from PIL import Image

    from processors.sizing import smart_resize

    recs = []
    with open(path) as f:
        for line, _ in zip(f, range(limit)):
            recs.append(json.loads(line))

    def one(rec) -> int:
        tokens = 0
        for name in rec["images"]:
            with Image.open(DATA / name) as im:
                im = im.convert("RGB")          # full decode
                h, w = im.height, im.width
            H, W = smart_resize(h, w, 28, 3136, 12845056)
            tokens += (H // 28) * (W // 28)
        return tokens

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(one, recs, chunksize=64))
    return len(recs), time.perf_counter() - t0, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--reference-records", type=int, default=10_000,
                    help="records the decoding reference processes (it is slow; records/s is what compares)")
    ap.add_argument("--stages-records", type=int, default=10_000,
                    help="records for the default (job stages + filters) mode, which re-reads headers per reference")
    ap.add_argument("--workers", type=int, default=8, help="threads of the thread pool and of the reference")
    ap.add_argument("--executors", default="threads,ray",
                    help="comma-separated: threads, ray (embedded local Ray, one worker per CPU), local")
    args = ap.parse_args()

    from pipeline.report.preflight import build_preflight_report

    path = make_corpus(args.records, args.images)
    modes = (("--fast (header cache per file; parse, clean, ChatML tokens)", dict(use_stages=False), args.records),
             ("(job stages: clean, filters, header check per reference; ChatML tokens)", {},
              min(args.stages_records, args.records)))
    runs = []   # (mode label, executor, report)
    for label, kw, n in modes:
        for ex in args.executors.split(","):
            workers = args.workers if ex == "threads" else None
            runs.append((label, ex, build_preflight_report(path, workers=workers, limit=n, executor=ex, **kw)))
    n_ref, s_ref, tok_ref = reference(path, min(args.reference_records, args.records), args.workers)

    print(f"corpus: {args.records} records, {args.images} distinct images (2/3 JPEG, 1/3 PNG), "
          f"{args.workers} threads, {os.cpu_count()} CPUs")
    print("| pre-flight | executor | records | seconds (of which start-up) | records/s | image tokens = reference |")
    print("|---|---|---:|---:|---:|---|")
    same = {}
    for label, ex, r in runs:
        t = r.stats["timing"]
        # Same images, same arithmetic: the sides must agree on the image tokens of the shared records.
        man = sorted(r.series["manifest"].to_pylist(), key=lambda x: x["record_index"])[:n_ref]
        ours = sum(x["n_image_tokens"] for x in man)
        agree = "yes" if ours == tok_ref else f"NO ({ours} vs {tok_ref} over {len(man)} records)"
        start = f" ({t['startup_seconds']:.1f})" if "startup_seconds" in t else ""
        print(f"| vlprep stats {label} | {ex} | {t['records']} | {t['seconds']:.1f}{start} | "
              f"{t['records_per_s']:,.0f} | {agree} |")
        doc = {k: v for k, v in r.stats.items() if k != "timing"}
        same.setdefault(label, set()).add(json.dumps(doc, sort_keys=True, default=str))
    print(f"| reference: decode every image + smart_resize | threads | {n_ref} | {s_ref:.1f} | "
          f"{n_ref / s_ref:,.0f} | |")
    best = max(r.stats["timing"]["records_per_s"] for label, _, r in runs if label == modes[0][0])
    print(f"--fast (best executor) vs reference {best / (n_ref / s_ref):.1f}x; stats.json (all but timing) "
          f"identical across executors: {'yes' if all(len(v) == 1 for v in same.values()) else 'NO'}")


if __name__ == "__main__":
    main()
