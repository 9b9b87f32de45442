"""Video benchmark: vlprep's process_video in both resize modes vs qwen-vl-utils, and the decode floor.

    python bench/video.py [--rounds 2] [--clips a,b]   # generates clips into bench/_data/ once
    python bench/video.py --clips 10s_720p_vp9 --decoder vp9=SLICE:1   # A/B a decoder thread choice

One command prints the whole table (7 clips x 4 methods; ≈ 2 min per round on an idle 2-core
machine, 4-6 min at load 5, plus ≈ 1.5 min to generate the clips the first time). The reference
column needs a venv with qwen-vl-utils 0.0.14 + decord + torchvision: `.venv-ref` (`make reference`)
or VLPREP_REF_PYTHON=/path/to/python.

Each case runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own; the timer covers
the work only (probe/open, sampling, decode, resize, patchify), not interpreter start or imports.
All produce the same frame indices, sizes and patch layout (qwen-vl-utils 0.0.14 rules):

  vlprep               the default, resize="qwen-vl-utils" (float32 path, bit-exact to torchvision v1):
                       probe (demux only) → decode just the needed GOP spans / seek, skipping
                       non-reference frames → RGB + resize of kept frames on two threads → patchify
                       (GOP-parallel clips in the transformers mode: resized on the decode workers)
  vlprep-transformers  the same with resize="transformers" (uint8 path, bit-exact to torchvision v2)
  qwen-vl-utils        the real `qwen_vl_utils.fetch_video` (decord reader) in the reference venv
                       (.venv-ref from `make reference`, or $VLPREP_REF_PYTHON), then `.to(uint8)` and
                       patchify; without a reference venv: `decord-ref`, the same steps re-done here
  floor                probe + decode of just the sampled frames to RGB with vlprep's decoder as
                       process_video runs it (`decode_pyav` with its defaults: GOP-parallel over
                       the clip's keyframe runs, one worker per usable core), nothing else; after the timer it also measures what each resize mode costs on those
                       frames (one thread, CPU s): the float resize is what the default mode's
                       reference prescribes on top of the floor

CPU s is user + system time of all the process's threads: what the work costs when every core is
busy anyway (a prepare job runs one worker per core), and the number to trust on a loaded machine.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "_data"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# name, file suffix, codec, width, height, fps, seconds, gop, encoder options, what it stresses.
# Generated once with PyAV's encoders into bench/_data/ (not checked in). x264 `veryfast`/`superfast`
# and x265 `ultrafast` give 3 B-frames (what phones / YouTube / default encoders produce: about half
# of all frames are never referenced); FFmpeg's mpeg4 with 2 B-frames in AVI (DivX/Xvid style).
CLIPS = [
    ("10min_240p_bf", "mp4", "libx264", 424, 240, 30, 600, 250, {"preset": "veryfast"}, "long clip, 768 frames capped"),
    ("20s_720p_gop600_bf", "mp4", "libx264", 1280, 720, 30, 20, 600, {"preset": "veryfast"}, "long GOP: one keyframe"),
    ("5s_1080p60_bf", "mp4", "libx264", 1920, 1080, 60, 5, 120, {"preset": "veryfast"}, "short, 1080p60"),
    ("5s_4k_h264", "mp4", "libx264", 3840, 2160, 30, 5, 60, {"preset": "superfast"}, "4K H.264, B-frames"),
    ("10s_720p_vp9", "webm", "libvpx-vp9", 1280, 720, 30, 10, 120,
     {"deadline": "realtime", "cpu-used": "8"}, "VP9 WebM"),
    ("10s_720p_hevc", "mp4", "libx265", 1280, 720, 30, 10, 120,
     {"preset": "ultrafast", "x265-params": "log-level=error"}, "HEVC, B-frames"),
    ("60s_480p_mpeg4_bf", "avi", "mpeg4", 640, 480, 25, 60, 250, {"bf": "2", "b": "3M"}, "MPEG-4 AVI, B-frames"),
]
METHODS = ["vlprep", "vlprep-transformers", "qwen-vl-utils", "floor"]
# qwen-vl-utils itself runs in the reference venv (`make reference` builds .venv-ref; VLPREP_REF_PYTHON
# names another); without one the row is `decord-ref`, the same steps re-done here (decord get_batch →
# torch.tensor(...).permute → float32 bicubic+antialias resize of the whole stack).
REF_PYTHON = os.environ.get("VLPREP_REF_PYTHON") or str(ROOT / ".venv-ref" / "bin" / "python")


def _frame_fn(width, height):
    import numpy as np

    from media_factory import gradient_rgb

    base = gradient_rgb(width, height, seed=3)
    s = max(8, min(width, height) // 5)

    def frame(i, w, h):
        f = np.roll(base, (i * 3) % w, axis=1)
        x0, y0 = (i * 5) % max(w - s, 1), (i * 2) % max(h - s, 1)
        f[y0:y0 + s, x0:x0 + s] = (255, (i * 7) % 256, 40)
        return f

    return frame


def generate() -> dict[str, Path]:
    from video_factory import make_clip

    DATA.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, ext, codec, w, h, fps, sec, gop, opts, _ in CLIPS:
        p = DATA / f"{name}.{ext}"
        if not p.exists():
            t = time.perf_counter()
            tmp = p.with_name(f"{name}.tmp.{ext}")
            if codec == "libx264":
                opts = {**opts, "sc_threshold": "0"}  # keep the GOP length as set
            make_clip(tmp, codec=codec, width=w, height=h, fps=fps, num_frames=fps * sec, gop=gop,
                      options=opts, frame_fn=_frame_fn(w, h))
            tmp.rename(p)
            print(f"generated {p.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        paths[name] = p
    return paths


def _resize_stack_and_patchify(frames, H, W):
    from processors.patches import patchify
    from processors.video_resize import resize_frames

    return patchify(resize_frames(frames, H, W))


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def parse_decoder_override(spec: str) -> dict[str, tuple[str, int]]:
    """`--decoder vp9=SLICE:1,h264=AUTO:0` -> {codec: (thread_type, thread_count)} (an A/B knob for
    video_decode's per-codec thread choice; 0 threads = FFmpeg's count)."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            codec, rest = part.split("=")
            kind, n = rest.split(":")
            if kind.upper() not in ("SLICE", "FRAME", "AUTO") or int(n) < 0:
                raise ValueError
        except ValueError:
            raise SystemExit(f"--decoder {part!r}: write CODEC=SLICE|FRAME|AUTO:THREADS, e.g. vp9=SLICE:1") from None
        out[codec.strip()] = (kind.upper(), int(n))
    return out


def _apply_decoder_override(spec: str) -> None:
    import processors.video_decode as vd

    over = parse_decoder_override(spec)
    if not over:
        return
    kind, count = vd.decoder_thread_type, vd.decoder_threads
    vd.decoder_thread_type = lambda info: over[info.codec][0] if info.codec in over else kind(info)
    vd.decoder_threads = lambda info, workers=1: over[info.codec][1] if info.codec in over else count(info, workers)


def child(method: str, path: str) -> dict:
    import numpy as np

    import torch  # noqa: F401  (imported before the timer for every method alike)

    if method == "qwen-vl-utils":  # runs in the reference venv: the real fetch_video
        os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
        sys.path.insert(0, str(ROOT / "tests" / "reference"))
        import _torchvision  # noqa: F401  (torchvision's Python transforms on CPU torch)
        import decord  # noqa: F401
        from qwen_vl_utils import fetch_video
    from processors.patches import patchify
    from processors.presets import QWEN25_VL
    from processors.video import process_video, probe_video, select_frames
    from processors.video_decode import decode_pyav
    from processors.video_resize import resize_frames
    from processors.video_sampling import sample_frame_indices, video_frame_size

    if method != "qwen-vl-utils":
        _apply_decoder_override(os.environ.get("VLPREP_BENCH_DECODER", ""))
    if method == "baseline":
        return {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    extra = {}
    cpu0 = _cpu()
    t0 = time.perf_counter()
    if method in ("vlprep", "vlprep-transformers"):
        r = process_video(path, QWEN25_VL, resize="transformers" if method == "vlprep-transformers" else None)
        grid, n, (H, W), dur = r.grid_thw, len(r.frame_indices), r.resized_size, r.duration
        first = r.patches[:4].copy()
    elif method == "qwen-vl-utils":
        video, sample_fps = fetch_video({"video": path}, return_video_sample_fps=True)
        frames = video.to(torch.uint8).permute(0, 2, 3, 1).numpy()  # as ms-swift hands it on (lossless)
        patches, grid = patchify(frames)
        n, (H, W), dur, first = len(frames), frames.shape[1:3], float("nan"), patches[:4].copy()
    elif method == "decord-ref":
        import decord

        vr = decord.VideoReader(path, ctx=decord.cpu(0))
        total, fps = len(vr), vr.get_avg_fps()
        idx, _ = sample_frame_indices(total, fps)
        frames = vr.get_batch(idx.tolist()).asnumpy()
        H, W = video_frame_size(frames.shape[1], frames.shape[2], len(idx))
        patches, grid = _resize_stack_and_patchify(frames, H, W)
        n, dur, first = len(idx), total / fps, patches[:4].copy()
    elif method == "floor":
        # The decode floor: probe + decode just the sampled frames to RGB with process_video's decoder
        # (decode_pyav's defaults, so GOP-parallel where the clip has several runs). Then, outside
        # the wall time, what each resize mode costs on those frames (one thread, CPU s).
        info = probe_video(path)
        idx, _ = select_frames(info, preset=QWEN25_VL)
        frames = [f for _, f in decode_pyav(info, idx)]
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
        extra["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the resizes below
        H, W = video_frame_size(frames[0].shape[0], frames[0].shape[1], len(idx))
        torch.set_num_threads(1)
        for mode, key in (("qwen-vl-utils", "resize_float_cpu"), ("transformers", "resize_uint8_cpu")):
            c = _cpu()
            for k in range(0, len(frames), 8):  # vlprep's batches, each frame from its decoded buffer
                resize_frames(frames[k:k + 8], H, W, mode=mode)
            extra[key] = _cpu() - c
        n = len(idx)
        grid, dur, first = (n // 2 + n % 2, H // 14, W // 14), info.duration, frames[0][:4].copy()
    else:
        raise SystemExit(f"unknown method {method}")
    if method != "floor":
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    return {
        "wall": wall, "cpu": cpu, "duration": dur, "n": n, "grid": list(grid), "size": [int(H), int(W)],
        "kept_mb": n * H * W * 3 / 2**20, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "first_rows_sum": int(first.astype(np.int64).sum()), **extra,
    }


def _python_for(method: str) -> str:
    return REF_PYTHON if method == "qwen-vl-utils" else sys.executable


def run_case(method: str, path: Path | None) -> dict:
    cmd = [_python_for(method), __file__, "--child", method, str(path or "")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if out.returncode:
        raise SystemExit(f"{method} on {path}: exit {out.returncode}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="rounds, alternating method order; best wall each")
    ap.add_argument("--clips", default="", help="comma-separated clip names (default: all)")
    ap.add_argument("--decoder", default="", help="A/B of the decoder threads, e.g. vp9=SLICE:1,h264=AUTO:0 "
                    "(CODEC=SLICE|FRAME|AUTO:THREADS, 0 = FFmpeg's count) for vlprep's rows and the floor")
    args = ap.parse_args()
    parse_decoder_override(args.decoder)  # refuse a typo before any work
    os.environ["VLPREP_BENCH_DECODER"] = args.decoder
    t_all, load0 = time.perf_counter(), os.getloadavg()[0]
    paths = generate()
    methods = list(METHODS)
    ref = "qwen-vl-utils"
    if not Path(REF_PYTHON).exists():
        print(f"(no reference venv at {REF_PYTHON}: `make reference` builds it; using decord-ref)", file=sys.stderr)
        ref = "decord-ref"
        methods[methods.index("qwen-vl-utils")] = ref
    base = {m: run_case("baseline", None) if _python_for(m) == sys.executable else None for m in methods}
    for m in methods:
        if base[m] is None:
            base[m] = json.loads(subprocess.run([_python_for(m), __file__, "--child", "baseline", ""], capture_output=True,
                                                text=True, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT))
                                                ).stdout.strip().splitlines()[-1])
    names = [c[0] for c in CLIPS if not args.clips or c[0] in args.clips.split(",")]
    rows, verdicts = [], []
    for name in names:
        # Rounds in alternating order, best wall time of each: the machine is shared, so load
        # drifts during a run; this keeps a drift from favouring whichever method ran first.
        res: dict[str, dict] = {}
        for k in range(args.rounds):
            for m in (methods if k % 2 == 0 else methods[::-1]):
                r = run_case(m, paths[name])
                if m not in res or r["wall"] < res[m]["wall"]:
                    r["rss_mb"] = max(r["rss_mb"], res.get(m, r)["rss_mb"])
                    res[m] = r
        v = res["vlprep"]
        for m in methods[1:]:  # same frames, same size: the comparison is like for like
            assert res[m]["grid"] == v["grid"] and res[m]["n"] == v["n"], (name, m, res[m], v)
        fl = res["floor"]
        for m in methods:
            r = res[m]
            rows.append((name, m, r["n"], "x".join(map(str, r["size"])), r["wall"], r["cpu"], r["rss_mb"],
                         r["rss_mb"] - base[m]["rss_mb"], res[ref]["wall"] / r["wall"], r["wall"] / fl["wall"],
                         r.get("resize_float_cpu"), r.get("resize_uint8_cpu")))
        t = res["vlprep-transformers"]
        verdicts.append((name, res[ref]["wall"] / v["wall"], res[ref]["wall"] / t["wall"], t["wall"] / fl["wall"],
                         max(v["rss_mb"] - base["vlprep"]["rss_mb"], t["rss_mb"] - base["vlprep"]["rss_mb"])
                         <= res[ref]["rss_mb"] - base[ref]["rss_mb"],
                         res[ref]["cpu"] / v["cpu"], res[ref]["cpu"] / t["cpu"], t["cpu"] / fl["cpu"],
                         v["cpu"] - fl["cpu"] - fl["resize_float_cpu"]))
    print(f"baseline processes (imports only): peak RSS " + ", ".join(
        f"{m} {base[m]['rss_mb']:.0f} MB" for m in methods) + f"; cpu cores: {os.cpu_count()}; "
        f"load average at the start {load0:.1f}, at the end {os.getloadavg()[0]:.1f}; rounds: {args.rounds}"
        + (f"; decoder override: {args.decoder}" if args.decoder else ""))
    print(f"| clip | method | frames | H×W | wall s | CPU s | peak RSS MB | RSS − baseline MB | {ref} wall / wall "
          f"| wall / floor wall | float resize CPU s | uint8 resize CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    f = lambda x: "" if x is None else f"{x:.2f}"  # noqa: E731
    for name, m, n, hw, wall, cpu, rss, over, speed, floor, rf, ru in rows:
        print(f"| {name} | {m} | {n} | {hw} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {over:.0f} | {speed:.2f}× "
              f"| {floor:.2f}× | {f(rf)} | {f(ru)} |")
    print(f"\ntargets: default ≥ 1.5× and transformers ≥ 2× {ref}'s wall; transformers ≤ 1.3× the floor; "
          f"peak RSS above baseline ≤ {ref}'s")
    print("(wall on this machine depends on its load; the CPU-s columns are the same ratios in CPU seconds, "
          "and 'default − floor − float resize' is what the default mode spends beyond the decode floor and the "
          "float resize its reference prescribes)")
    print("| clip | default speed-up (wall) | transformers speed-up (wall) | transformers / floor (wall) "
          "| memory ≤ ref | default speed-up (CPU) | transformers speed-up (CPU) | transformers / floor (CPU) "
          "| default − floor − float resize, CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, a, b, c, mem, ac, bc, cc, rest in verdicts:
        ok = lambda cond, x: f"{x:.2f}×" + ("" if cond else " ✗")  # noqa: E731
        print(f"| {name} | {ok(a >= 1.5, a)} | {ok(b >= 2, b)} | {ok(c <= 1.3, c)} | {'yes' if mem else 'no ✗'} "
              f"| {ok(ac >= 1.5, ac)} | {ok(bc >= 2, bc)} | {ok(cc <= 1.3, cc)} | {rest:.2f} |")
    print(f"\n(total bench time {time.perf_counter() - t_all:.0f} s)")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")))
    else:
        main()
