"""Video benchmark: vlprep's process_video vs two decode-everything references, same run.

    python bench/video.py            # generates clips into bench/_data/ once, then measures

Each case runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own; the timer covers
the work only (probe/open, sampling, decode, resize, patchify), not interpreter start or imports.
All three produce the same frame indices, sizes and patches layout (qwen-vl-utils 0.0.14 rules):

  vlprep       probe (demux only) → decode just the needed GOP spans / seek → RGB+resize kept frames
               (the resize of one batch runs on a second thread while the next frames decode)
  vlprep-fast  the same with `fast=True`: uint8 resize (within 1 level of the float resize, not exact)
  decord-ref   qwen-vl-utils' path: decord.VideoReader + get_batch(indices) → resize the whole stack
  pyav-full    decode every frame with PyAV, keep the sampled ones → resize the whole stack

Clips come in two encodes: x264 ultrafast (no B-frames) and x264 veryfast (`_bf`: 3 B-frames,
B-pyramid, like most real-world H.264), so the table shows what skipping non-reference frames gains.
CPU s is user + system time of all the process's threads: what the work costs when every core is
busy anyway (a prepare job runs one worker per core). Throughput is seconds of video per wall second (best of two rounds run in opposite order); "kept MB" is the resized uint8 frames that must be
held (the lower bound for any method); a baseline row shows the RSS of a process that only imports.
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

# name, width, height, fps, seconds, gop, x264 preset, what it stresses. The ultrafast encodes have
# no B-frames (every frame is a reference); the veryfast ones are what phones / YouTube / default
# x264 produce: 3 B-frames with B-pyramid, about half of all frames never referenced.
CLIPS = [
    ("10min_240p", 424, 240, 30, 600, 250, "ultrafast", "long clip, 768 frames capped"),
    ("20s_720p_gop600", 1280, 720, 30, 20, 600, "ultrafast", "long GOP: one keyframe"),
    ("5s_1080p60", 1920, 1080, 60, 5, 120, "ultrafast", "short, high resolution"),
    ("10min_240p_bf", 424, 240, 30, 600, 250, "veryfast", "long clip, B-frames"),
    ("20s_720p_gop600_bf", 1280, 720, 30, 20, 600, "veryfast", "long GOP, B-frames"),
    ("5s_1080p60_bf", 1920, 1080, 60, 5, 120, "veryfast", "short, high resolution, B-frames"),
]
METHODS = ["vlprep", "vlprep-fast", "decord-ref", "pyav-full"]


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
    for name, w, h, fps, sec, gop, preset, _ in CLIPS:
        p = DATA / f"{name}.mp4"
        if not p.exists():
            t = time.perf_counter()
            tmp = p.with_suffix(".tmp.mp4")
            make_clip(tmp, width=w, height=h, fps=fps, num_frames=fps * sec, gop=gop,
                      options={"preset": preset, "sc_threshold": "0"}, frame_fn=_frame_fn(w, h))
            tmp.rename(p)
            print(f"generated {p.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        paths[name] = p
    return paths


def _resize_stack_and_patchify(frames, H, W):
    from processors.patches import patchify
    from processors.video_resize import resize_frames

    return patchify(resize_frames(frames, H, W))


def child(method: str, path: str) -> dict:
    import numpy as np

    import torch  # noqa: F401  (imported before the timer for every method alike)
    import av
    import decord

    from processors.presets import QWEN25_VL
    from processors.video import process_video, probe_video
    from processors.video_sampling import sample_frame_indices, video_frame_size

    if method == "baseline":
        return {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if method in ("vlprep", "vlprep-fast"):
        r = process_video(path, QWEN25_VL, fast=method == "vlprep-fast")
        grid, n, (H, W), dur = r.grid_thw, len(r.frame_indices), r.resized_size, r.duration
        first = r.patches[:4].copy()
    elif method == "decord-ref":
        vr = decord.VideoReader(path, ctx=decord.cpu(0))
        total, fps = len(vr), vr.get_avg_fps()
        idx, _ = sample_frame_indices(total, fps)
        frames = vr.get_batch(idx.tolist()).asnumpy()
        H, W = video_frame_size(frames.shape[1], frames.shape[2], len(idx))
        patches, grid = _resize_stack_and_patchify(frames, H, W)
        n, dur, first = len(idx), total / fps, patches[:4].copy()
    elif method == "pyav-full":
        info = probe_video(path)  # frame count and rate, as vlprep gets them
        idx, _ = sample_frame_indices(info.num_frames, info.avg_fps)
        want = set(idx.tolist())
        kept = []
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for i, f in enumerate(c.decode(s)):
                if i in want:
                    kept.append(f.to_ndarray(format="rgb24"))
        frames = np.stack(kept)
        H, W = video_frame_size(frames.shape[1], frames.shape[2], len(idx))
        patches, grid = _resize_stack_and_patchify(frames, H, W)
        n, dur, first = len(idx), info.duration, patches[:4].copy()
    else:
        raise SystemExit(f"unknown method {method}")
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "wall": wall, "cpu": cpu, "duration": dur, "n": n, "grid": list(grid), "size": [H, W],
        "kept_mb": n * H * W * 3 / 2**20, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "first_rows_sum": int(first.astype(np.int64).sum()),
    }


def run_case(method: str, path: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(path or "")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    t_all = time.perf_counter()
    paths = generate()
    base = run_case("baseline", None)
    rows = []
    for name, *_rest in CLIPS:
        # Two rounds in opposite order, best wall time of each: the machine is shared, so load
        # drifts during a run; this keeps a drift from favouring whichever method ran first.
        res = {}
        for order in (METHODS, METHODS[::-1]):
            for m in order:
                r = run_case(m, paths[name])
                if m not in res or r["wall"] < res[m]["wall"]:
                    r["rss_mb"] = max(r["rss_mb"], res.get(m, r)["rss_mb"])
                    res[m] = r
        ref = res["vlprep"]
        for m in METHODS[1:]:  # same frames, same output: the comparison is like for like
            assert res[m]["grid"] == ref["grid"] and res[m]["n"] == ref["n"], (name, m, res[m], ref)
        for m in METHODS:
            r = res[m]
            rows.append((name, m, r["n"], "x".join(map(str, r["size"])), r["duration"] / r["wall"], r["wall"], r["cpu"],
                         r["rss_mb"], r["rss_mb"] - base["rss_mb"], r["kept_mb"],
                         res["vlprep"]["wall"] and r["wall"] / res["vlprep"]["wall"]))
    print(f"baseline process (imports only): peak RSS {base['rss_mb']:.0f} MB; "
          f"cpu cores: {os.cpu_count()}; load average at the end: {os.getloadavg()[0]:.1f}")
    print("| clip | method | frames | H×W | video s / wall s | wall s | CPU s | peak RSS MB | RSS − baseline MB "
          "| kept frames MB | wall vs vlprep |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, m, n, hw, tput, wall, cpu, rss, over, kept, rel in rows:
        print(f"| {name} | {m} | {n} | {hw} | {tput:.1f} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {over:.0f} | {kept:.0f} "
              f"| {rel:.2f}× |")
    print(f"\n(total bench time {time.perf_counter() - t_all:.0f} s)")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")))
    else:
        main()
