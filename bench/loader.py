"""Benchmark: training input from vlprep shards (pipeline.dataset.ShardDataset) vs the online path.

    python bench/loader.py                      # LLaMA-Factory demo corpus (../shared), 1 and 2 workers
    python bench/loader.py --repeat 60 --epochs 2

Both sides produce model-ready inputs (input_ids, labels, M-RoPE position_ids, normalised
pixel_values, image_grid_thw) for the same image conversations of the LLaMA-Factory demo corpus
(mllm_demo.json, multi-turn, real photos), each record repeated --repeat times under its own id:
  online   raw files -> PIL -> transformers' Qwen2VLImageProcessorPil -> ChatML text with the pad
           expansion -> HF BPE tokenizer turn by turn (labels on assistant turns) -> the model's own
           get_rope_index, one sample at a time (what an online collator such as LLaMA-Factory's does)
  vlprep   shards written once by vlprep (untimed: `vlprep prepare`'s job) -> ShardDataset through a
           torch DataLoader with 1 and 2 worker processes, padded batches (batch_size 4) and packed
           rows (max_tokens 16384); "uint8" leaves the normalisation to the training device
           (pipeline.dataset.to_device), "uint8 frames" (pixels="frames") also the patchify: the
           workers ship each stored frame once
Then the padding waste of padded batches vs packed rows on the demo-like length mix (all nine
demo records, images and videos, as vlprep encodes them), at 16 384 tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # the independent HF reference tokenizer + tiny model configs
CORPUS = Path(os.environ.get("VLPREP_SHARED_CORPUS", ROOT.parent.parent / "shared" / "corpus" / "llamafactory_demo"))
if not (CORPUS / "mllm_demo.json").exists():
    CORPUS = Path("/work/shared/corpus/llamafactory_demo")


def records(name: str, root: Path = CORPUS) -> list[dict]:
    return json.loads((root / name).read_text())


def photo_corpus(root: Path, n: int = 6, size=(1024, 768)) -> Path:
    """LLaMA-Factory-format records with camera-sized JPEG photos (the demo's photos are 300 px wide)."""
    from PIL import Image

    from test_reward_fixtures import photo

    (root / "img").mkdir(parents=True)
    recs = []
    for i in range(n):
        Image.fromarray(photo(size[1], size[0], seed=i)).save(root / "img" / f"{i}.jpg", quality=90)
        recs.append({"messages": [{"role": "user", "content": "<image>What is shown here?"},
                                  {"role": "assistant", "content": "Shapes of several colours on a smooth "
                                   "background, with some sensor noise."}], "images": [f"img/{i}.jpg"]})
    (root / "photos.json").write_text(json.dumps(recs))
    return root


def write_out(out: Path, recs: list[dict], repeat: int, per_shard: int = 64, media_root: Path = CORPUS) -> list[int]:
    """vlprep-encode each record once, write it `repeat` times (distinct ids) into shards + manifest."""
    from pipeline.io import MANIFEST_SCHEMA, rows_to_table, write_table
    from pipeline.writer import ShardWriter
    from processors.encode import encode_sample
    from processors.formats import parse_record

    encoded = [encode_sample(parse_record(r, source="demo", index=i), "qwen2-vl", media_root=media_root)
               for i, r in enumerate(recs)]
    rows, lengths = [], []
    n = len(encoded) * repeat
    for u0 in range(0, n, per_shard):
        unit = f"u{u0 // per_shard:04d}"
        with ShardWriter(out / "shards" / f"{unit}.tar") as w:
            for i in range(u0, min(n, u0 + per_shard)):
                e, sid = encoded[i % len(encoded)], f"r{i:06d}"
                w.write(sid, e, {"id": sid})
                rows.append(dict(id=sid, shard=f"shards/{unit}.tar", unit=unit, key=sid, preset="qwen2-vl",
                                 n_tokens=len(e.input_ids)))
                lengths.append(len(e.input_ids))
    write_table(rows_to_table(rows, MANIFEST_SCHEMA), out / "manifest.parquet")
    return lengths


def online(recs: list[dict], repeat: int, media_root: Path = CORPUS) -> tuple[float, int, int]:
    """The per-sample processor path; returns (seconds, samples, tokens)."""
    import torch
    from PIL import Image
    from transformers import PreTrainedTokenizerFast, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from test_reward_fixtures import tiny_config
    from test_tokenizer import hf_reference

    tok = PreTrainedTokenizerFast(tokenizer_object=hf_reference(), eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ip = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)
    rope = Qwen2VLForConditionalGeneration(tiny_config("qwen2-vl")).model.get_rope_index
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    t0 = time.perf_counter()
    n = tokens = 0
    for _ in range(repeat):
        for r in recs:
            px = ip(images=[Image.open(media_root / p).convert("RGB") for p in r["images"]], return_tensors="pt")
            pads = iter(int(g.prod()) // 4 for g in px["image_grid_thw"])
            ids = tok("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", add_special_tokens=False)["input_ids"]
            labels = [-100] * len(ids)
            for m in r["messages"]:
                text = m["content"]
                while "<image>" in text:
                    text = text.replace("<image>", "<|vision_start|>" + "<|image_pad|>" * next(pads) + "<|vision_end|>", 1)
                head = tok(f"<|im_start|>{m['role']}\n", add_special_tokens=False)["input_ids"]
                body = tok(f"{text}<|im_end|>\n", add_special_tokens=False)["input_ids"]
                ids += head + body
                labels += [-100] * len(head) + (body if m["role"] == "assistant" else [-100] * len(body))
            input_ids = torch.tensor([ids])
            pos, _ = rope(input_ids, (input_ids == image_pad).int(), image_grid_thw=px["image_grid_thw"])
            batch = {"input_ids": input_ids, "labels": torch.tensor([labels]), "position_ids": pos,
                     "pixel_values": px["pixel_values"], "image_grid_thw": px["image_grid_thw"]}
            n += 1
            tokens += batch["input_ids"].shape[1]
    return time.perf_counter() - t0, n, tokens


def vlprep(out: Path, workers: int, epochs: int, **mode) -> tuple[float, int, int, float, float]:
    """(seconds, samples, tokens, seconds to the first batch, samples/s after it). Worker start-up
    (fork, first shard open) is paid again every epoch; on a few hundred samples it is most of
    the total, so the steady rate after the first batch is reported beside it."""
    from pipeline.dataset import ShardDataset

    ds = ShardDataset(out, seed=0, **mode)
    dl = ds.loader(num_workers=workers)
    n = tokens = 0
    first = None
    t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in dl:
            if first is None:
                first, n_first = time.perf_counter() - t0, len(batch.ids)
            n += len(batch.ids)
            # real tokens: padded batches mask their padding; packed rows (no pad_to) have none
            tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    t = time.perf_counter() - t0
    steady = (n - n_first) / (t - first) if n > n_first else float("nan")
    return t, n, tokens, first, steady


def reader_alone(out: Path) -> tuple[float, int, int]:
    """The shard reader by itself (tar members → numpy), the ceiling for any loader on top of it."""
    from pipeline.loader import ShardLoader

    t0 = time.perf_counter()
    n = tokens = 0
    for s in ShardLoader(out):
        n += 1
        tokens += len(s["input_ids"])
    return time.perf_counter() - t0, n, tokens


def waste(lengths: list[int], max_tokens: int, batch_size: int, seed: int = 0) -> list[tuple[str, float]]:
    """Share of padding per layout on a shuffled stream of `lengths`."""
    from pipeline.packing import OnlinePacker, plan_packs

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    L = np.asarray(lengths)[order]
    rows = []
    for b in (batch_size, 2 * batch_size):
        padded = sum(len(c) * int(c.max()) for c in np.array_split(L, int(np.ceil(len(L) / b))))
        rows.append((f"padded, batch {b} (shuffled)", 1 - L.sum() / padded))
    packer = OnlinePacker(max_tokens, open_packs=8)
    for _ in packer.pack({"id": str(i), "input_ids": np.zeros(int(n))} for i, n in enumerate(L)):
        pass
    rows.append((f"packed online (8 open packs) ≤ {max_tokens}", 1 - packer.stats.fill))
    for window in (256, len(L)):
        packs = 0
        for w0 in range(0, len(L), window):
            packs += len(plan_packs(L[w0:w0 + window], max_tokens)[0])
        label = "whole corpus" if window == len(L) else f"window {window}"
        rows.append((f"packed plan (BFD, {label}) ≤ {max_tokens}", 1 - L.sum() / (packs * max_tokens)))
    return rows


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=40, help="copies of each demo record (default 40)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=16384)
    args = ap.parse_args(argv)
    if not (CORPUS / "mllm_demo.json").exists():
        print(f"LLaMA-Factory demo corpus not found at {CORPUS} (set VLPREP_SHARED_CORPUS)", file=sys.stderr)
        return 2
    torch_threads(1)          # as in DataLoader workers; the online path gets the same
    print(f"load: {os.getloadavg()[0]:.1f} (1-min), {os.cpu_count()} CPUs, torch threads 1")
    images = records("mllm_demo.json")
    with tempfile.TemporaryDirectory() as tmp:
        photos = photo_corpus(Path(tmp) / "photos")
        corpora = [("LLaMA-Factory demo photos (300×168)", images, CORPUS, args.repeat),
                   ("camera-sized JPEGs (1024×768)", records("photos.json", photos), photos, max(1, args.repeat // 4))]
        for title, recs, media, repeat in corpora:
            out = Path(tmp) / f"out{len(title)}"
            write_out(out, recs, repeat, media_root=media)
            rows = []
            t, n, tok = online(recs, repeat, media)
            rows.append(("online: files → HF processor, per sample (1 process)", t, n, tok, 0.0, n / t))
            t, n, tok = reader_alone(out)
            rows.append(("(ceiling) ShardLoader.iter_shard alone, in process", t, n, tok, 0.0, n / t))
            for workers in (1, 2):
                for label, mode in (("padded b=4, float pixels", dict(batch_size=4)),
                                    ("padded b=4, uint8 pixels", dict(batch_size=4, normalize=False)),
                                    ("padded b=4, uint8 frames", dict(batch_size=4, normalize=False, pixels="frames")),
                                    (f"packed ≤{args.max_tokens}, uint8", dict(max_tokens=args.max_tokens, normalize=False)),
                                    (f"packed ≤{args.max_tokens}, uint8 frames",
                                     dict(max_tokens=args.max_tokens, normalize=False, pixels="frames"))):
                    rows.append((f"vlprep {label}, {workers} worker{'s' * (workers > 1)}",
                                 *vlprep(out, workers, args.epochs, **mode)))
            ref = rows[0][2] / rows[0][1]
            print(f"\n{title}: {len(recs)} records × {repeat}, {args.epochs} epoch(s)")
            print(f"{'path':<56} {'samples/s':>10} {'tokens/s':>11} {'vs online':>9} {'1st batch':>9} "
                  f"{'steady/s':>9} {'steady vs':>9}")
            for label, t, n, tok, first, steady in rows:
                print(f"{label:<56} {n / t:>10.1f} {tok / t:>11.0f} {n / t / ref:>8.1f}x {first:>8.2f}s "
                      f"{steady:>9.1f} {steady / ref:>8.1f}x")
        mix = Path(tmp) / "mix"
        lengths = write_out(mix, images + records("mllm_video_demo.json"), 50)
        print(f"\npadding waste on the demo length mix ({len(lengths)} samples: 9 demo records × 50, "
              f"{min(lengths)}–{max(lengths)} tokens, mean {np.mean(lengths):.0f})")
        print(f"{'layout':<52} {'padding':>8} {'fill':>7}")
        for label, w in waste(lengths, args.max_tokens, 8):
            print(f"{label:<52} {100 * w:>7.1f}% {100 * (1 - w):>6.1f}%")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
