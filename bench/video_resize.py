"""Video frame resize micro-benchmark: CPU ms per frame, one torch thread, this checkout vs a git revision.

    python bench/video_resize.py                          # float (default) mode, this checkout vs main
    python bench/video_resize.py --against HEAD~3 --rounds 30 --mode transformers
    python bench/video_resize.py --against '' --strip-rows 128,192,256   # tune video_resize._STRIP_ROWS

What vlprep does per decoded frame: `resize_frames` on a batch of 8 frames of the clip's size (each
its own buffer, written into rows of the output; the float buffers are allocated once per batch),
on one torch thread (the resize worker's). The sizes are the bench clips' (§6.5 budget of
qwen2.5-vl): 240p → 252×420 (10-min clip, 768 frames), 720p / 1080p / 4K → 560×1008.

The versions run interleaved, in alternating order, for many rounds (the machine is shared: load
drifts); the table shows the median and the best CPU ms per frame of each and the ratio of medians.
CPU time is this thread's (user + system, page faults included). Both versions' outputs are compared
first: a speed-up that changes a value is not one.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = [("240p", (240, 424), (252, 420)), ("720p", (720, 1280), (560, 1008)),
          ("1080p", (1080, 1920), (560, 1008)), ("4K", (2160, 3840), (560, 1008))]
BATCH = 8


def load_revision(rev: str):
    """processors/video_resize.py as of git revision `rev`, imported as its own module."""
    src = subprocess.run(["git", "show", f"{rev}:processors/video_resize.py"], cwd=ROOT, capture_output=True,
                         text=True)
    if src.returncode:
        raise SystemExit(f"--against {rev}: {src.stderr.strip()}")
    path = Path(tempfile.mkdtemp()) / f"video_resize_{rev.replace('/', '_').replace('~', '_')}.py"
    path.write_text(src.stdout)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _frames(h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (BATCH, h, w, 3), dtype=np.uint8)
    x[:, h // 3:h // 2] = 255
    return [np.ascontiguousarray(f) for f in x]  # each frame its own buffer, as decoded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default="main", help="git revision to compare with ('' = none)")
    ap.add_argument("--mode", default="qwen-vl-utils", choices=["qwen-vl-utils", "transformers"])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (4K: a third of them)")
    ap.add_argument("--shapes", default="", help="comma-separated subset of " + ",".join(s[0] for s in SHAPES))
    ap.add_argument("--strip-rows", default="", help="also run this checkout with video_resize._STRIP_ROWS = "
                    "each of these (comma-separated)")
    args = ap.parse_args()

    import torch

    import processors.video_resize as this

    torch.set_num_threads(1)
    versions = {"this": (this, None)}
    for r in filter(None, args.strip_rows.split(",")):
        versions[f"rows={int(r)}"] = (this, int(r))
    if args.against:
        versions[args.against] = (load_revision(args.against), None)

    def run(name, frames, out, H, W):
        mod, rows = versions[name]
        saved = mod._STRIP_ROWS if rows is not None else None
        if rows is not None:
            mod._STRIP_ROWS = rows
        try:
            c = time.thread_time()
            mod.resize_frames(frames, H, W, mode=args.mode, out=out)
            return (time.thread_time() - c) / len(frames) * 1e3
        finally:
            if rows is not None:
                mod._STRIP_ROWS = saved

    load0 = os.getloadavg()
    names = list(versions)
    shapes = [s for s in SHAPES if not args.shapes or s[0] in args.shapes.split(",")]
    rows_out = []
    for label, (h, w), (H, W) in shapes:
        frames = _frames(h, w, seed=h)
        outs = {n: np.empty((BATCH, H, W, 3), np.uint8) for n in names}
        for n in names:  # warm-up, and the values must agree
            run(n, frames, outs[n], H, W)
        for n in names[1:]:
            assert np.array_equal(outs[n], outs[names[0]]), f"{label}: {n} gives other values than {names[0]}"
        times = {n: [] for n in names}
        rounds = max(2, args.rounds // 3) if h * w > 4_000_000 else args.rounds
        for k in range(rounds):
            for n in (names if k % 2 == 0 else names[::-1]):
                times[n].append(run(n, frames, outs[n], H, W))
        stats = {n: (np.median(t), min(t)) for n, t in times.items()}
        rows_out.append((label, f"{h}×{w} → {H}×{W}", rounds, stats))
    load1 = os.getloadavg()
    print(f"{args.mode} resize, CPU ms per frame (batches of {BATCH}, one torch thread); load average "
          f"{load0[0]:.2f} at the start, {load1[0]:.2f} at the end; cpu cores {os.cpu_count()}; "
          f"torch {torch.__version__}")
    head = " | ".join(f"{n} median (best)" for n in names)
    ratios = " | ".join(f"{names[0]} / {n}" for n in names[1:])
    print(f"| frame | size | rounds | {head} |" + (f" {ratios} |" if ratios else ""))
    print("|---|---|---|" + "---|" * (2 * len(names) - 1))
    for label, size, rounds, r in rows_out:
        cells = " | ".join(f"{r[n][0]:.2f} ({r[n][1]:.2f})" for n in names)
        rat = " | ".join(f"{r[names[0]][0] / r[n][0]:.2f}×" for n in names[1:])
        print(f"| {label} | {size} | {rounds} | {cells} |" + (f" {rat} |" if rat else ""))


if __name__ == "__main__":
    main()
