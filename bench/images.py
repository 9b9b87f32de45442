"""Image path throughput: vlprep (exact, fast) vs transformers' Qwen2VLImageProcessorPil vs the bare floor.

    python bench/images.py [--quick]

Sets: the LLaMA-Factory demo JPEGs, generated 1080p and 12 MP photo-like JPEGs (written once under
bench/_data/, git-ignored). Each set runs at the released checkpoints' band (max 12 845 056 px) and
at a common training band (max 1280*28*28 = 1 003 520 px, where 12 MP photos shrink ~3.5x).

Columns (images/s of process CPU time, best pass of several, modes interleaved). CPU time, not wall
time, because the dev machine is shared: every path here is single-threaded, so CPU time is what
a dedicated core would take, minus the noise of other jobs.
  vlprep exact  process_image(path)                         -> uint8 patches, equal to transformers
  vlprep fast   process_image(path, fast=True)              -> JPEG DCT-scaled decode + bicubic
  transformers  Qwen2VLImageProcessorPil(load_image(path))  -> float32 pixel_values (its own loading)
  floor         Image.open(path).convert("RGB").resize(...) -> Pillow decode + resize, nothing else
PSNR: fast vs exact on the resized uint8 pixels.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from processors.image import process_image  # noqa: E402
from processors.patches import unpatchify  # noqa: E402
from processors.sizing import smart_resize  # noqa: E402

DATA = ROOT / "bench" / "_data"
DEMO = ROOT.parent / "shared" / "corpus" / "llamafactory_demo" / "mllm_demo_data"
HUB_BAND = (3136, 12_845_056)
TRAIN_BAND = (3136, 1280 * 28 * 28)


def photo_like(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth colour regions + mid-frequency texture + sensor-like noise: JPEG sizes like a camera's."""
    rng = np.random.default_rng(seed)

    def field(cell: int, resample) -> np.ndarray:
        small = rng.integers(0, 256, (height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((width, height), resample), dtype=np.float32)

    img = 0.8 * field(200, Image.Resampling.BICUBIC) + 0.2 * field(16, Image.Resampling.BILINEAR)
    img += rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def generated_set(name: str, width: int, height: int, count: int) -> list[Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = DATA / f"{name}_{seed}.jpg"
        if not path.exists():
            Image.fromarray(photo_like(width, height, seed)).save(path, quality=90)
        paths.append(path)
    return paths


def make_transformers_path(band):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import Qwen2VLImageProcessorPil
        from transformers.image_utils import load_image

        proc = Qwen2VLImageProcessorPil(min_pixels=band[0], max_pixels=band[1])

    def run(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return proc(images=load_image(str(path)), return_tensors="np")["pixel_values"]

    return run


def make_floor(band):
    def run(path):
        im = Image.open(path).convert("RGB")
        h, w = smart_resize(im.height, im.width, 28, *band)
        return im.resize((w, h), Image.Resampling.BICUBIC)

    return run


def measure(paths, modes: dict, passes: dict) -> dict:
    """Best-pass images/s per mode; each pass runs every mode over the whole set, interleaved."""
    best = {name: float("inf") for name in modes}
    for p in range(max(passes.values())):
        for name, fn in modes.items():
            if p >= passes[name]:
                continue
            start = time.process_time()
            for path in paths:
                fn(path)
            best[name] = min(best[name], time.process_time() - start)
    return {name: len(paths) / t for name, t in best.items()}


def psnr(paths, band) -> float:
    worst = float("inf")
    for path in paths:
        exact = process_image(path, min_pixels=band[0], max_pixels=band[1])
        fast = process_image(path, min_pixels=band[0], max_pixels=band[1], fast=True)
        a = unpatchify(exact.patches, exact.grid_thw)[0].astype(np.float64)
        b = unpatchify(fast.patches, fast.grid_thw)[0].astype(np.float64)
        mse = np.mean((a - b) ** 2)
        worst = min(worst, float("inf") if mse == 0 else 10 * np.log10(255**2 / mse))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one pass per mode (smoke run)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    sets = []
    demo = sorted(DEMO.glob("*.jpg"))
    if demo:
        sets.append(("demo 300x~170 (3)", demo, 20))
    sets.append(("1080p JPEG (3)", generated_set("p1080", 1920, 1080, 3), 4))
    sets.append(("12 MP JPEG (3)", generated_set("p12mp", 4000, 3000, 3), 2))
    mb = np.mean([p.stat().st_size for p in sets[-1][1]]) / 1e6

    rows = []
    for label, paths, n in sets:
        for band_name, band in (("hub", HUB_BAND), ("train", TRAIN_BAND)):
            modes = {
                "exact": lambda p, b=band: process_image(p, min_pixels=b[0], max_pixels=b[1]),
                "fast": lambda p, b=band: process_image(p, min_pixels=b[0], max_pixels=b[1], fast=True),
                "transformers": make_transformers_path(band),
                "floor": make_floor(band),
            }
            passes = {name: 1 if args.quick else n for name in modes}
            passes["transformers"] = 1 if args.quick else max(1, n // 2)
            rate = measure(paths, modes, passes)
            q = psnr(paths, band) if "12 MP" in label else None
            rows.append((label, band_name, rate, q))

    print(f"\nimages/s (higher is better); 12 MP files average {mb:.1f} MB; bands: hub = 3136..12845056 px, "
          f"train = 3136..1003520 px\n")
    head = ("set", "band", "vlprep exact", "vlprep fast", "transformers", "floor",
            "exact/transformers", "floor/exact time", "fast/exact", "PSNR fast vs exact")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for label, band_name, r, q in rows:
        cells = (
            label, band_name, f"{r['exact']:.1f}", f"{r['fast']:.1f}", f"{r['transformers']:.1f}", f"{r['floor']:.1f}",
            f"{r['exact'] / r['transformers']:.2f}x", f"{r['floor'] / r['exact']:.2f}x", f"{r['fast'] / r['exact']:.2f}x",
            "-" if q is None else ("identical" if q == float("inf") else f"{q:.1f} dB"),
        )
        print("| " + " | ".join(cells) + " |")
    print(f"\ntotal bench time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
