"""Benchmark: a persistent DataLoader worker's start of an epoch, before and after the training process
sends it its quota (pipeline.dataset ShardDataset._worker_state; issue 12 review).

    python bench/persistent_plan.py                 # ~2 min on 2 idle cores
    python bench/persistent_plan.py --no-loader     # the in-process table only

With `persistent_workers=True` and equalize (several ranks), a kept worker used to recompute the whole
EpochPlan every epoch after the first — with online packing, a replay of the shuffle and the packer
over every reader of every rank — although it only needs its own reader's quota. Now the training
process computes the plan once per epoch (as before, `_announce`) and writes its readers' quotas into
the loader's shared state, with who reads each shard (`balanced_split`, over every shard and rank).

1) In process, at scale (a manifest of n_tokens and empty shard files: the plan never reads a shard):
   process-CPU of one kept worker's epoch start, old (the whole plan, then its shards) vs new (the
   shared state: its quota, and its shards from the reader of every shard, O(shards)), best of N; and
   the training process's plan + state, paid once per epoch either way.
2) Through a real DataLoader: tiny samples, rank 0 of 8, 2 persistent workers, packed online, 3 epochs;
   the workers' CPU (RUSAGE_CHILDREN, counted when the loader goes and its workers are joined), old
   (each worker's own epoch_plan(), the code before; the shards it reads still from the shared state)
   vs new, interleaved, best of N.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pipeline.dataset import ShardDataset  # noqa: E402


def old_quota(self, worker: int, num_workers: int):
    """The code before: every worker reads its quota off its own epoch_plan() (recomputed per epoch)."""
    return self.epoch_plan(num_workers).quotas[self.rank][worker] if self.equalize else None


def fake_out(root: Path, n: int, shards: int, seed: int = 0) -> Path:
    """OUT with a manifest of n samples (n_tokens 50 … 3000) over `shards` empty shard files."""
    from pipeline.io import MANIFEST_SCHEMA, rows_to_table, write_table

    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True)
    for k in range(shards):
        (root / "shards" / f"u{k:05d}.tar").touch()
    ntok = rng.integers(50, 3000, n)
    shard = rng.integers(0, shards, n)
    rows = [dict(id=f"s{i:07d}", source="gen.jsonl", record_index=i, unit=f"u{s:05d}", shard=f"shards/u{s:05d}.tar",
                 key=f"s{i:07d}", preset="qwen2.5-vl", n_tokens=int(t), n_text_tokens=int(t), n_image_tokens=0,
                 n_video_tokens=0, n_supervised_tokens=int(t) // 2, n_images=0, n_videos=0, n_boxes=0, pixel_rows=0)
            for i, (s, t) in enumerate(zip(shard.tolist(), ntok.tolist()))]
    write_table(rows_to_table(rows, MANIFEST_SCHEMA), root / "manifest.parquet")
    return root


def cpu() -> float:
    return time.process_time()


def in_process(root: Path, world: int, workers: int, rounds: int) -> dict:
    kw = dict(seed=0, max_tokens=16384, rank=0, world_size=world, buffer_size=256)
    main, worker = ShardDataset(root, **kw), ShardDataset(root, **kw)
    for ds in (main, worker):
        ds.num_workers, ds._consumed = workers, [0] * workers
        ds._units_of()                                   # read once per process, not per epoch
    G = world * workers
    best = {"main": 1e9, "old": 1e9, "new": 1e9}
    for r in range(rounds):
        epoch = r + 1
        main.set_epoch(epoch)
        c = cpu()
        main._announce()
        state = main._worker_state()
        best["main"] = min(best["main"], cpu() - c)
        worker.epoch = epoch
        worker._epoch_plans, worker._split = {}, (None, None)
        c = cpu()
        quota = old_quota(worker, 0, workers)
        worker._my_shards(0, G)
        best["old"] = min(best["old"], cpu() - c)
        worker._epoch_plans, worker._split = {}, (None, None)
        c = cpu()
        worker._take_worker_state(state, workers)
        assert worker._quota(0, workers) == quota
        worker._my_shards(0, G)
        best["new"] = min(best["new"], cpu() - c)
    return best


def through_loader(out: Path, world: int, workers: int, epochs: int, rounds: int) -> dict:
    new_quota = ShardDataset._quota
    best: dict[str, tuple] = {}
    for _ in range(rounds):
        for name, quota in (("old", old_quota), ("new", new_quota)):
            ShardDataset._quota = quota                  # forked workers inherit it
            try:
                gc.collect()
                k0, s0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
                ds = ShardDataset(out, seed=0, max_tokens=4096, rank=0, world_size=world, buffer_size=64)
                dl = ds.loader(num_workers=workers, persistent_workers=True)
                n = sum(len(b.ids) for _ in range(epochs) for b in dl)
                del dl
                gc.collect()
                k1, s1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
            finally:
                ShardDataset._quota = new_quota
            kids = k1.ru_utime + k1.ru_stime - k0.ru_utime - k0.ru_stime
            me = s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime
            if name not in best or kids < best[name][0]:
                best[name] = (kids, me, n)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-loader", action="store_true", help="skip the DataLoader run (2)")
    args = ap.parse_args(argv)
    logging.getLogger("vlprep.dataset").setLevel(logging.ERROR)      # the ranks' drop warnings
    print(f"load: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        print("1) one kept worker's epoch start, in process, packed online ≤16384, best of", args.rounds)
        print(f"  {'samples':>9} {'shards':>6} {'ranks×workers':>13} {'old ms':>9} {'new ms':>8} {'main ms':>8}")
        for i, (n, shards, world, workers) in enumerate([(50_000, 200, 8, 2), (500_000, 2_000, 64, 8)]):
            root = fake_out(Path(tmp) / f"fake{i}", n, shards)
            b = in_process(root, world, workers, args.rounds)
            print(f"  {n:>9} {shards:>6} {f'{world}×{workers}':>13} {b['old'] * 1e3:>9.1f} {b['new'] * 1e3:>8.1f} "
                  f"{b['main'] * 1e3:>8.1f}")
        if not args.no_loader:
            from dataset_factory import make_out

            out = make_out(Path(tmp) / "real", 20_000, per_shard=100, lengths=(8, 200))
            world, workers, epochs = 8, 2, 3
            best = through_loader(out, world, workers, epochs, args.rounds)
            print(f"2) through a DataLoader: 20 000 tiny samples, rank 0 of {world}, {workers} persistent workers, "
                  f"packed online ≤4096, {epochs} epochs, best of {args.rounds} (interleaved)")
            print(f"  {'':4} {'workers CPU s':>13} {'main CPU s':>10} {'samples':>8}")
            for name in ("old", "new"):
                kids, me, n = best[name]
                print(f"  {name:4} {kids:>13.2f} {me:>10.2f} {n:>8}")
            saved = (best["old"][0] - best["new"][0]) / (workers * (epochs - 1))
            print(f"  saved per kept worker per epoch after the first: {saved * 1e3:.0f} ms")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
