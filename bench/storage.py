"""Shard size and loader speed per pixel storage layout: format 1 (today's raw pixel_values.npy) vs
format 2 with each candidate codec, on photos, documents, screenshots and video frames.

    python bench/storage.py [--quick] [--photos 200]

Sets (samples encoded once with the default preset and band, untimed; media generated under
bench/_data/, git-ignored):
  photos       generated photo-like JPEGs (bench/images.py's generator) sized to ~1 000 visual tokens
  real photos  the LLaMA-Factory demo JPEGs (+ matplotlib's grace_hopper.jpg when installed)
  demo corpus  every image and clip of `vlprep demo`'s corpus (pipeline/demo_corpus.py), one per sample
  documents    rendered text pages (black on white, a few sizes)
  screenshots  rendered UI-like screens (flat panels, text, icons)
  video        the demo corpus clips and the LLaMA-Factory demo clips (2 fps sampling)

Per set and layout: bytes per sample (the tar file / samples), write ms per sample (serialise +
compress, process CPU), and the loader's samples/s of process CPU time (single-threaded: one core)
for `iter_shard` (rows: decode + rebuild pixel_values on the host) and for `pixels="frames"`
(decode only; the rebuild then happens on the device in to_model_inputs). CPU time, not wall time,
because the dev machine is shared; best of `--passes` passes.

    python bench/storage.py --quick --lz4-levels 1,2,3   # lz4-delta rows per LZ4 level (write side only)
    python bench/storage.py --quick --stages             # the delta filter's output through each entropy
                                                         # coder pyarrow offers: ratio, encode, decode us
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.loader import ShardLoader  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.storage import CODECS, DEFAULT_CODEC  # noqa: E402
from pipeline.writer import ShardWriter  # noqa: E402
from processors.encode import encode_sample  # noqa: E402
from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart, VideoPart  # noqa: E402

DATA = ROOT / "bench" / "_data" / "storage"
DEMO = Path("/work/shared/corpus/llamafactory_demo/mllm_demo_data")
for cand in (ROOT.parent / "shared" / "corpus" / "llamafactory_demo" / "mllm_demo_data",):
    if cand.exists():
        DEMO = cand


def photos(n: int) -> list[Path]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_images", ROOT / "bench" / "images.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    photo_like = mod.photo_like

    DATA.mkdir(parents=True, exist_ok=True)
    sizes = [(1024, 768), (768, 1024), (1152, 672), (896, 896), (1280, 720)]   # ~780k px: ~1 000 tokens
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        p = DATA / f"photo_{i:04d}_{w}x{h}.jpg"
        if not p.exists():
            Image.fromarray(photo_like(w, h, 1000 + i)).save(p, quality=90)
        out.append(p)
    return out


def documents(n: int) -> list[Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    out = []
    rng = np.random.default_rng(7)
    words = "the of model data image token patch frame video shard codec pixel train loss layer vision".split()
    for i in range(n):
        w, h = [(850, 1100), (1240, 1754), (1000, 1300)][i % 3]
        p = DATA / f"doc_{i:03d}.png"
        if not p.exists():
            img = Image.new("RGB", (w, h), "white")
            d = ImageDraw.Draw(img)
            y = 60
            while y < h - 60:
                if rng.random() < 0.1:
                    y += 24
                    continue
                line = " ".join(rng.choice(words, int(rng.integers(6, 14))))
                d.text((60, y), line, fill=(20, 20, 20), font_size=int(14 + i % 3 * 4))
                y += int(20 + i % 3 * 5)
            img.save(p)
        out.append(p)
    return out


def screenshots(n: int) -> list[Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    out = []
    rng = np.random.default_rng(11)
    for i in range(n):
        w, h = [(1280, 800), (1920, 1080), (1440, 900)][i % 3]
        p = DATA / f"screen_{i:03d}.png"
        if not p.exists():
            img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(230, 256, 3)))
            d = ImageDraw.Draw(img)
            d.rectangle((0, 0, w, 48), fill=tuple(int(v) for v in rng.integers(30, 90, 3)))
            d.rectangle((0, 48, 240, h), fill=(245, 245, 248))
            for k in range(12):
                d.text((20, 70 + k * 32), f"Menu item {k}", fill=(40, 40, 40), font_size=16)
            for k in range(int(rng.integers(4, 9))):
                x0, y0 = int(rng.integers(260, w - 300)), int(rng.integers(70, h - 200))
                d.rounded_rectangle((x0, y0, x0 + 280, y0 + 160), 8, fill="white", outline=(200, 200, 210))
                d.text((x0 + 12, y0 + 12), f"Card {k}: {int(rng.integers(0, 10**6))}", fill=(10, 10, 10), font_size=18)
                d.ellipse((x0 + 220, y0 + 100, x0 + 260, y0 + 140), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            img.save(p)
        out.append(p)
    return out


def demo_media() -> tuple[list[Path], list[Path]]:
    from pipeline.demo_corpus import build_demo_corpus

    root = DATA / "demo"
    if not (root / "media").exists():
        build_demo_corpus(root)
    media = root / "media"
    imgs = sorted(p for p in media.iterdir() if p.suffix in (".jpg", ".png") and p.name != "truncated.jpg")
    vids = sorted(p for p in media.iterdir() if p.suffix in (".mp4", ".webm") and p.name != "not_a_video.mp4")
    return imgs, vids


def encode_set(paths: list[Path], kind: str) -> list:
    out = []
    for i, p in enumerate(paths):
        part = ImagePart(0) if kind == "image" else VideoPart(0)
        ref = MediaRef(kind, path=str(p), options={"fps": 2.0} if kind == "video" else {})
        s = Sample(f"s{i:05d}", [Message("user", [part, TextPart("Describe this.")]),
                                 Message("assistant", [TextPart("A description of the picture.")])],
                   images=[ref] if kind == "image" else [], videos=[ref] if kind == "video" else [])
        out.append(encode_sample(s))
    return out


def measure(encoded: list, layout: str, passes: int) -> dict:
    fmt, codec = (1, DEFAULT_CODEC) if layout == "format 1 (raw npy)" else (2, layout)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "shards").mkdir()
        t0 = time.process_time()
        with ShardWriter(out / "shards" / "u.tar", codec=codec, fmt=fmt) as w:
            for e in encoded:
                w.write(e.id, e, e.meta)
        write = (time.process_time() - t0) / len(encoded)
        size = (out / "shards" / "u.tar").stat().st_size
        loader = ShardLoader(out)
        best = {"rows": float("inf"), "frames": float("inf")}
        for _ in range(passes):
            for mode in best:
                t0 = time.process_time()
                n = sum(1 for _ in loader.iter_shard("shards/u.tar", pixels=mode))
                best[mode] = min(best[mode], time.process_time() - t0)
        assert n == len(encoded)
    return {"bytes": size / len(encoded), "write_ms": write * 1000,
            "rows_per_s": len(encoded) / best["rows"], "frames_per_s": len(encoded) / best["frames"]}


STAGE_CODECS = [("zstd 1 (zstd-delta)", "zstd", 1), ("zstd -1", "zstd", -1), ("zstd -3", "zstd", -3),
                ("zstd 3", "zstd", 3), ("lz4 1 (lz4-delta)", "lz4_raw", 1), ("lz4 HC 2", "lz4_raw", 2),
                ("lz4 HC 3", "lz4_raw", 3), ("lz4 HC 6", "lz4_raw", 6), ("snappy", "snappy", None)]


def stages(encoded: list, passes: int) -> None:
    """The zstd-delta filter's output of every stored frame through each entropy coder: bytes / raw
    frame bytes, encode and decode process-CPU us per frame (best of `passes`), and the undelta that
    every *-delta codec adds to its decode. No tar, no crc: the codec stage alone."""
    import pyarrow as pa

    from pipeline.storage import split_items, undelta
    from processors.presets import QWEN25_VL
    from pipeline.storage import Geometry

    geo = Geometry.of(QWEN25_VL)
    frames = [f for e in encoded for _, fr in split_items(e.pixel_values, e.image_grid_thw, e.video_grid_thw, geo)
              for f in fr]
    if not frames:
        return
    filt = []
    for f in frames:
        x = f.copy()
        x[..., 0] -= f[..., 1]
        x[..., 2] -= f[..., 1]
        x[1:] -= x[:-1].copy()
        filt.append(x.tobytes())
    raw = sum(len(b) for b in filt)

    def best(fn):
        t = float("inf")
        for _ in range(max(passes, 2)):
            t0 = time.process_time()
            fn()
            t = min(t, time.process_time() - t0)
        return t / len(frames) * 1e6

    print(f"| entropy stage on the filtered frames ({len(frames)} frames, {raw / len(frames) / 1024:,.0f} KB raw each) "
          f"| bytes / raw | encode us/frame | decode us/frame |")
    print("|---|---:|---:|---:|")
    for label, name, level in STAGE_CODECS:
        codec = pa.Codec(name) if level is None else pa.Codec(name, compression_level=level)
        comp = [codec.compress(b, asbytes=True) for b in filt]
        assert all(codec.decompress(c, len(b), asbytes=True) == b for c, b in zip(comp, filt))
        enc = best(lambda: [codec.compress(b, asbytes=True) for b in filt])
        dec = best(lambda: [codec.decompress(c, len(b)) for c, b in zip(comp, filt)])
        print(f"| {label} | {sum(map(len, comp)) / raw:.3f} | {enc:,.0f} | {dec:,.0f} |")
    arrs = [np.frombuffer(b, np.uint8).reshape(f.shape) for b, f in zip(filt, frames)]
    print(f"| (undelta, added to every -delta decode) | | | {best(lambda: [undelta(a) for a in arrs]):,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 photos, 6 documents/screenshots, 1 pass")
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--lz4-levels", default="", help="comma list: an lz4-delta row per LZ4 level (1 = fast, 2+ = HC)")
    ap.add_argument("--stages", action="store_true", help="also the entropy-coder table per set (see the docstring)")
    ap.add_argument("--sets", default="", help="comma list of set-name prefixes to run (default all)")
    args = ap.parse_args()
    n_photo, n_doc, passes = (40, 6, 1) if args.quick else (args.photos, 20, args.passes)
    demo_imgs, demo_vids = demo_media()
    real = sorted(DEMO.glob("*.jpg"))
    try:
        import matplotlib

        gh = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if gh.exists():
            real.append(gh)
    except ImportError:
        pass
    sets = {
        "photos (~1000 tok)": (photos(n_photo), "image"),
        "real photos": (real, "image"),
        "demo corpus images": (demo_imgs, "image"),
        "documents": (documents(n_doc), "image"),
        "screenshots": (screenshots(n_doc), "image"),
        "video (demo + LF clips)": (demo_vids + sorted(DEMO.glob("*.mp4")) + sorted(DEMO.glob("*.avi")), "video"),
    }
    layouts = ["format 1 (raw npy)", *args.codecs.split(",")]
    for lvl in filter(None, args.lz4_levels.split(",")):
        layouts.append(f"lz4-delta@{int(lvl)}")
    if args.sets:
        sets = {k: v for k, v in sets.items() if any(k.startswith(p) for p in args.sets.split(","))}
    import os

    print(f"# bench/storage.py  load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; best of {passes} pass(es); "
          f"loader = samples/s of process CPU time (one core)")
    for name, (paths, kind) in sets.items():
        if not paths:
            continue
        enc = encode_set(paths, kind)
        tokens = np.mean([int(e.meta["n_image_tokens"] + e.meta["n_video_tokens"]) for e in enc])
        print(f"\n## {name}: {len(enc)} samples, {tokens:.0f} visual tokens/sample on average")
        print(f"| layout | KB/sample | vs format 1 | write ms/sample | loader rows/s | loader frames/s |")
        print("|---|---:|---:|---:|---:|---:|")
        base = None
        for layout in layouts:
            codec, _, lvl = layout.partition("@")
            if lvl:
                storage.LZ4_DELTA_LEVEL, keep = int(lvl), storage.LZ4_DELTA_LEVEL
            try:
                m = measure(enc, codec, passes)
            finally:
                if lvl:
                    storage.LZ4_DELTA_LEVEL = keep
            base = base or m["bytes"]
            mark = " (default)" if layout == DEFAULT_CODEC else ""
            if layout == "lz4-delta":
                mark = f" (LZ4 level {storage.LZ4_DELTA_LEVEL})"
            print(f"| {layout}{mark} | {m['bytes'] / 1024:,.0f} | {m['bytes'] / base:.3f} | {m['write_ms']:.1f} | "
                  f"{m['rows_per_s']:,.0f} | {m['frames_per_s']:,.0f} |", flush=True)
        if args.stages:
            stages(enc, passes)


if __name__ == "__main__":
    main()
