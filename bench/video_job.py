"""A/B of a real prepare job over a corpus of the bench clips: two code trees (e.g. main vs a branch),
interleaved rounds, a fresh Ray cluster per run; reports the CPU s of the whole process tree (driver,
raylet, GCS, Ray workers), of the Ray workers alone, inside process_video (summed over the videos), and
the job's wall time.

    python bench/video_job.py --old /tmp/old-tree --new . [--rounds 3] [--copies 6] [--cpus 2]
        [--clips 10s_720p_vp9.webm,10s_720p_hevc.mp4,5s_1080p60_bf.mp4,20s_720p_gop600_bf.mp4]
    python bench/video_job.py --trees old=/tmp/old-tree,new=.,x=/tmp/other   # any number of trees

The corpus: `--copies` copies of each clip (distinct files, distinct text, one video per record),
unit_size 2, so the runner keeps all `--cpus` task slots busy with video tasks (`ray.num_cpus: 1`,
the default). CPU s is read from /proc for every descendant of the run's process just before Ray
shuts down (the workers are still alive then). On a shared machine trust CPU s and the interleaved
ratio, not absolute walls; the load average is printed per run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIPS = "10s_720p_vp9.webm,10s_720p_hevc.mp4,5s_1080p60_bf.mp4,20s_720p_gop600_bf.mp4"
_TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu(pid: int) -> tuple[float, float]:
    """(CPU s of pid and every descendant, CPU s of the Ray workers among them), from /proc."""
    procs: dict[int, tuple[int, float, bool]] = {}  # pid: (parent, utime+stime+cutime+cstime s, a Ray worker)
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm, rest = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        f = rest.split()  # f[0] state, f[1] ppid; utime, stime, cutime, cstime are stat fields 14-17
        worker = comm.split("(", 1)[1].startswith("ray::") or b"default_worker.py" in cmd
        procs[int(d)] = (int(f[1]), sum(int(x) for x in f[11:15]) / _TICK, worker)
    tree, grew = {pid}, True
    while grew:
        more = {p for p, (parent, _, _) in procs.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return (sum(procs[p][1] for p in tree if p in procs),
            sum(procs[p][1] for p in tree if p in procs and procs[p][2]))


def make_corpus(base: Path, clips: list[str], copies: int) -> Path:
    media = base / "media"
    media.mkdir(parents=True, exist_ok=True)
    lines = []
    for c in range(copies):
        for name in clips:
            dst = media / f"{c:02d}_{name}"
            if not dst.exists():
                shutil.copyfile(ROOT / "bench" / "_data" / name, dst)
            lines.append(json.dumps({"messages": [
                {"role": "user", "content": f"<video>What happens in {name}, copy {c}?"},
                {"role": "assistant", "content": f"Something moves in copy {c} of {name}."}],
                "videos": [f"media/{dst.name}"]}))
    (base / "videos.jsonl").write_text("\n".join(lines) + "\n")
    import yaml

    cfg = base / "videos.yaml"
    cfg.write_text(yaml.safe_dump({"sources": [{"path": "videos.jsonl", "format": "llamafactory"}],
                                   "unit_size": 2, "out": "out"}))
    return cfg


def _time_process_video() -> None:
    """Ray worker setup hook (pickled by value from this script): append the CPU s (the whole worker
    process: FFmpeg's threads, the resize thread) and wall s of every process_video call in the worker
    to $VLPREP_BENCH_VIDEO_LOG. A worker runs one task at a time, so the delta is that video's."""
    import resource as _r

    from processors import video

    real, log = video.process_video, os.environ["VLPREP_BENCH_VIDEO_LOG"]

    def timed(src, *a, **kw):
        ru0, t0 = _r.getrusage(_r.RUSAGE_SELF), time.perf_counter()
        try:
            return real(src, *a, **kw)
        finally:
            ru1 = _r.getrusage(_r.RUSAGE_SELF)
            cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
            with open(log, "a") as f:
                f.write(json.dumps({"path": str(src), "cpu": cpu, "wall": time.perf_counter() - t0}) + "\n")

    video.process_video = timed


def child(args) -> None:
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    import ray  # (above: bench/pipeline.py would shadow the package of the tree under test)

    from pipeline.config import JobConfig
    from pipeline.runner import run_job

    cfg = JobConfig.from_yaml(args.config)
    log = Path(args.out).with_suffix(".videos.jsonl")
    log.unlink(missing_ok=True)
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR",
             runtime_env={"worker_process_setup_hook": _time_process_video,
                          "env_vars": {"VLPREP_BENCH_VIDEO_LOG": str(log)}})
    t0 = time.perf_counter()
    result = run_job(cfg, out=args.out, overwrite=True, progress=False, executor="ray")
    wall = time.perf_counter() - t0
    total, workers = _tree_cpu(os.getpid())
    videos = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    print(json.dumps({"wall": wall, "cpu": total, "worker_cpu": workers, "kept": result.accounting.kept,
                      "ok": result.ok, "video_cpu": sum(v["cpu"] for v in videos),
                      "video_wall": sum(v["wall"] for v in videos), "videos": len(videos)}))


def run(tree: str, cfg: Path, out: Path, cpus: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
    load = os.getloadavg()[0]
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--config", str(cfg),
                        "--out", str(out), "--cpus", str(cpus)], env=env, cwd=tree, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{tree}: the job failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["load"] = load
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", help="code tree A (e.g. a `git archive main` export)")
    ap.add_argument("--new", default=str(ROOT), help="code tree B")
    ap.add_argument("--trees", help="NAME=DIR,NAME=DIR,...: instead of --old/--new")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--copies", type=int, default=6)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--clips", default=CLIPS)
    ap.add_argument("--dir", default="/tmp/vlprep-bench-video-job")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--config")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.trees:
        trees = [tuple(t.split("=", 1)) for t in args.trees.split(",")]
        if any(len(t) != 2 for t in trees):
            raise SystemExit(f"--trees {args.trees!r}: write NAME=DIR,NAME=DIR")
    elif args.old:
        trees = [("old", args.old), ("new", args.new)]
    else:
        raise SystemExit("--old DIR: the code tree to compare with (e.g. git archive main | tar -x -C DIR)")
    base = Path(args.dir)
    cfg = make_corpus(base / "corpus", args.clips.split(","), args.copies)
    rows: dict[str, list[dict]] = {name: [] for name, _ in trees}
    for r in range(args.rounds):
        for name, tree in trees[:: 1 if r % 2 == 0 else -1]:
            res = run(tree, cfg, base / f"out-{name}", args.cpus)
            rows[name].append(res)
            print(f"round {r} {name}: wall {res['wall']:.1f} s, CPU {res['cpu']:.1f} s (Ray workers "
                  f"{res['worker_cpu']:.1f}; process_video x{res['videos']}: CPU {res['video_cpu']:.1f}, wall "
                  f"{res['video_wall']:.1f}), kept {res['kept']}, load {res['load']:.1f}", flush=True)
    print(f"\ncores {os.cpu_count()}, ray num_cpus {args.cpus}, {args.copies} copies of {args.clips}")
    keys = ("wall", "cpu", "worker_cpu", "video_cpu", "video_wall")
    print("| code | job wall s | CPU s tree | CPU s Ray workers | CPU s in process_video | wall s in process_video"
          " | rounds |  (medians)")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rs in rows.items():
        med = [statistics.median(x[k] for x in rs) for k in keys]
        print(f"| {name} | " + " | ".join(f"{m:.1f}" for m in med) + f" | {len(rs)} |")


if __name__ == "__main__":
    main()
