"""Benchmark: the prepare job on Ray vs a plain single-process loop over the same processors.

    python bench/pipeline.py                 # 2 000 samples (+2% video); 20 000 for the memory line
    python bench/pipeline.py --n 500 --big 0 # quick

Each mode runs in a fresh subprocess over the same generated corpus; the parent samples the RSS of
the whole process tree (driver + Ray's workers, raylet and GCS) every 0.1 s from /proc. Throughput
counts records over the job's processing time (planning + index pass + encode + merge); the Ray
cluster's start-up is reported apart, since it is paid once per job, not per record.

modes: loop     run_job(executor="local"): the same stage code, one process, no Ray
       ray-N    run_job on an embedded local Ray with N CPUs
       pool-N   run_job(executor="process"): a plain process pool with N workers
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def tree_rss(pid: int) -> tuple[int, int]:
    """(total RSS bytes of pid and its descendants, largest single-process RSS)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    total = biggest = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                        total += rss
                        biggest = max(biggest, rss)
        except OSError:
            pass
    return total, biggest


def child(args) -> None:
    """Run one mode in this process and print its timings as JSON."""
    from pipeline.config import JobConfig
    from pipeline.runner import run_job

    cfg = JobConfig.from_yaml(args.config)
    kind, _, n = args.mode.partition("-")
    t_start = 0.0
    if kind == "ray":
        import ray

        os.environ["PYTHONPATH"] = str(ROOT)
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=int(n), include_dashboard=False, logging_level="ERROR")
        t_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = run_job(cfg, out=args.out, overwrite=True, progress=False,
                     executor={"loop": "local", "ray": "ray", "pool": "process"}[kind],
                     workers=int(n) if n else None)
    seconds = time.perf_counter() - t0
    print(json.dumps({"mode": args.mode, "seconds": seconds, "startup": t_start, "inputs": result.accounting.inputs,
                      "kept": result.accounting.kept, "ok": result.ok}))


def measure(mode: str, config: Path, out: Path) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, "--config", str(config), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    peak = peak_one = 0
    while proc.poll() is None:
        total, one = tree_rss(proc.pid)
        peak, peak_one = max(peak, total), max(peak_one, one)
        time.sleep(0.1)
    res = json.loads(proc.stdout.read().strip().splitlines()[-1])
    res.update(peak_mb=peak / 2**20, peak_one_mb=peak_one / 2**20)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--big", type=int, default=20000, help="corpus size of the memory-flatness line (0: skip)")
    ap.add_argument("--dir", default="/tmp/vlprep-bench-pipeline")
    ap.add_argument("--modes", default="loop,ray-1,ray-2,pool-2")
    ap.add_argument("--child")
    ap.add_argument("--config")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        args.mode = args.child
        return child(args)

    from corpus_factory import make_bench_corpus

    base = Path(args.dir)
    rows = []
    cfg = make_bench_corpus(base / f"c{args.n}", args.n, video_share=0.02)
    for mode in args.modes.split(","):
        rows.append((args.n, measure(mode, cfg, base / f"out-{args.n}-{mode}")))
    if args.big:
        cfg_big = make_bench_corpus(base / f"c{args.big}", args.big, video_share=0.02)
        rows.append((args.big, measure("ray-2", cfg_big, base / f"out-{args.big}-ray-2")))

    loop = next((r for n, r in rows if r["mode"] == "loop" and n == args.n), None)
    print(f"cores: {os.cpu_count()}; corpus: 320x240..416x288 JPEGs, 2% 160x120 clips; unit_size 64\n")
    print("| samples | mode | processing s | samples/s | vs loop (same cores) | Ray start s | peak RSS tree MB | peak RSS one process MB | ok |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for n, r in rows:
        rate = r["inputs"] / r["seconds"]
        rel = ""
        if loop and n == args.n:
            cores = int(r["mode"].partition("-")[2] or 1)
            rel = f"{rate / (loop['inputs'] / loop['seconds']) / cores:.2f}x per core"
        print(f"| {n} | {r['mode']} | {r['seconds']:.1f} | {rate:.1f} | {rel} | {r['startup']:.1f} | "
              f"{r['peak_mb']:.0f} | {r['peak_one_mb']:.0f} | {r['ok']} |")


if __name__ == "__main__":
    main()
