"""A/B of vlprep's PyAV decode alone: sequential (one container, the calling thread) vs GOP-parallel
(`video_decode.decode_pyav(workers=...)`), on the bench clips, interleaved rounds, a fresh process per case.

    python bench/video_decode.py [--rounds 5] [--clips a,b] [--variants seq,par,par:t0,par:t1,w3]

Variants: `seq` workers=1 (the sequential path, decoder threads by `decoder_threads(info)`); `par`
workers=None (one per usable core, at most one per run; decoder threads by `decoder_threads(info,
workers)`); a suffix `:tN` forces N decoder threads per container (0: FFmpeg's count); `wN` forces N
workers; a last suffix `:plain` opens every decoder container with FFmpeg's full stream probe (the
code before `video_decode._open_container` skipped its decode on MP4/MOV); `:nolast` decodes the
last run on the workers' thread count too (the code before `video_decode._LAST_RUN_ALL_THREADS`).
Each case probes, picks the default mode's frames (qwen2.5-vl, fps 2) and decodes them to RGB (the
bench/video.py floor); the timer covers the decode only. Reports the best wall and the median CPU
s (user + system, all threads) per variant, and the load average around each clip: on a shared machine
trust CPU s and interleaved wall ratios, not absolute walls.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def parse_variant(v: str) -> dict:
    """`seq` / `par` / `wN`, optionally `:tN` -> decode_pyav keyword arguments."""
    name, _, t = v.removesuffix(":plain").removesuffix(":nolast").partition(":")
    if name == "seq":
        kw = {"workers": 1}
    elif name == "par":
        kw = {"workers": None}
    elif name.startswith("w") and name[1:].isdigit() and int(name[1:]) >= 1:
        kw = {"workers": int(name[1:])}
    else:
        raise SystemExit(f"--variants {v!r}: write seq | par | wN, optionally :tN (decoder threads), e.g. par:t1")
    if t:
        if not (t.startswith("t") and t[1:].isdigit()):
            raise SystemExit(f"--variants {v!r}: the thread suffix is :tN, e.g. par:t0")
        kw["threads"] = int(t[1:])
    return kw


def child(variant: str, path: str) -> dict:
    from processors.presets import QWEN25_VL
    from processors.video import probe_video, select_frames
    from processors.video_decode import decode_pyav, decode_runs, decode_workers

    kw = parse_variant(variant)
    if variant.endswith(":plain"):  # every decoder container opened with FFmpeg's full stream probe
        from processors import video_decode
        video_decode._HEADER_FORMATS = ()
    if variant.endswith(":nolast"):  # the last run on the workers' thread count too
        from processors import video_decode
        video_decode._LAST_RUN_ALL_THREADS = False
    info = probe_video(path)
    idx, _ = select_frames(info, preset=QWEN25_VL)
    runs = len(decode_runs(info, idx))
    c0, t0 = _cpu(), time.perf_counter()
    n = sum(1 for _ in decode_pyav(info, idx, **kw))
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"wall": wall, "cpu": cpu, "n": n, "runs": runs, "workers": decode_workers(runs, kw["workers"])}


def main() -> None:
    import argparse

    sys.path.insert(0, str(ROOT / "bench"))
    from video import CLIPS, generate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clips", default="")
    ap.add_argument("--variants", default="seq,par")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        parse_variant(v)
    paths = generate()
    names = [c[0] for c in CLIPS if not args.clips or c[0] in args.clips.split(",")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    print(f"cpu cores: {os.cpu_count()}, usable: {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}"
          f"; rounds: {args.rounds} (order alternates)")
    print("| clip | frames | runs | variant | workers | best wall s | median wall s | median CPU s | "
          f"wall vs {variants[0]} (best) | CPU vs {variants[0]} (median) | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        load = [os.getloadavg()[0]]
        res: dict[str, list[dict]] = {v: [] for v in variants}
        for k in range(args.rounds):
            for v in (variants if k % 2 == 0 else variants[::-1]):
                out = subprocess.run([sys.executable, __file__, "--child", v, str(paths[name])], capture_output=True,
                                     text=True, env=env, timeout=600)
                if out.returncode:
                    raise SystemExit(f"{v} on {name}: exit {out.returncode}\n{out.stderr[-2000:]}")
                res[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
        load.append(os.getloadavg()[0])
        base = res[variants[0]]
        bw, bc = min(r["wall"] for r in base), statistics.median(r["cpu"] for r in base)
        for v in variants:
            rs = res[v]
            w, mw, c = min(r["wall"] for r in rs), statistics.median(r["wall"] for r in rs), statistics.median(r["cpu"] for r in rs)
            print(f"| {name} | {rs[0]['n']} | {rs[0]['runs']} | {v} | {rs[0]['workers']} | {w:.3f} | {mw:.3f} | {c:.3f} "
                  f"| {w / bw:.2f}× | {c / bc:.2f}× | {load[0]:.1f}–{load[1]:.1f} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
    else:
        main()
