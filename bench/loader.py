"""Benchmark: training input from vlprep shards (pipeline.dataset.ShardDataset) vs the online path.

    python bench/loader.py                      # every class, 1 and 2 workers (~3 min on 2 idle cores)
    python bench/loader.py --classes photos,clips --epochs 2

Both sides produce model-ready inputs (input_ids, labels, M-RoPE position_ids, pixel values, grids)
for the same conversations, per class of media and for a realistic mix:
  photos     the LLaMA-Factory demo images (mllm_demo.json: 300-px photos, multi-turn)
  camera     camera-sized JPEGs (1024x768, generated photo-like scenes)
  documents  A4 pages / screenshots (1240x1754 PNG: black text on white, generated)
  clips      the LLaMA-Factory demo videos (mllm_video_demo.json: short mp4/avi clips)
  mix        40% photos, 30% camera, 10% documents, 20% clips, in one shuffled OUT
The online path, one sample at a time as an online collator (LLaMA-Factory style) runs it:
  images   raw file -> PIL -> transformers' Qwen2VLImageProcessorPil (resize, rescale, normalise,
           patchify)
  videos   decord decode of the frames qwen-vl-utils samples (fps 2, its frame-count and size rules:
           processors.video_sampling) -> qwen-vl-utils' float bicubic+antialias resize (vlprep's
           torchvision-exact resize_frames; torchvision itself is not installed here, so
           transformers' Qwen2VLVideoProcessor cannot run) -> rescale, normalise, patchify as the
           video processor does
  then     ChatML text with the pad expansion -> HF BPE tokenizer turn by turn (labels on assistant
           turns) -> the model's own get_rope_index
  vlprep   shards written once by vlprep (untimed: `vlprep prepare`'s job) -> ShardDataset through a
           torch DataLoader with 1 and 2 worker processes: padded batches (batch_size 4) with float
           pixels (the defaults), and uint8 frames (normalize=False, pixels="frames": the stored
           frames cross once, the patchify and normalisation run on the training device, whose cost
           on a CPU "device" is printed as its own row: `to_device`), padded and packed (16 384)
Samples/s over the whole epoch(s) (worker start-up, paid again every epoch, and the shuffle buffer's
fill included), the time to the first batch, and the steady rate after it. The loader reads more
samples than the online path runs (--loader-scale x), so that start-up is a fair share of an epoch;
both rates are per sample. `--codecs [zstd,npy,lz4-delta]` adds reader rows on shards written in those
codecs (docs/storage.md), `--codec-loader` the packed uint8-frames loader on them too (`codec ...` rows;
the summary's best configuration is over the default codec's `vlprep` rows only).
Then the padding waste of padded batches vs packed rows on the demo-like length mix (all nine
demo records, images and videos, as vlprep encodes them), at 16 384 tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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

    (root / "img").mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        Image.fromarray(photo(size[1], size[0], seed=i)).save(root / "img" / f"{i}.jpg", quality=90)
        recs.append({"messages": [{"role": "user", "content": "<image>What is shown here?"},
                                  {"role": "assistant", "content": "Shapes of several colours on a smooth "
                                   "background, with some sensor noise."}], "images": [f"img/{i}.jpg"]})
    (root / "photos.json").write_text(json.dumps(recs))
    return root


def document_corpus(root: Path, n: int = 2, size=(1240, 1754)) -> list[dict]:
    """Records with A4-page / screenshot PNGs: lines of black text on white (flat, sharp-edged)."""
    from PIL import Image, ImageDraw

    (root / "doc").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = "the of data model shard token image video pixel batch loader train vision page table".split()
    recs = []
    for i in range(n):
        img = Image.new("RGB", size, "white")
        d = ImageDraw.Draw(img)
        for y in range(60, size[1] - 60, 22):
            line = " ".join(rng.choice(words, int(rng.integers(8, 18))))
            d.text((70, y), line, fill=(0, 0, 0))
        img.save(root / "doc" / f"{i}.png")
        recs.append({"messages": [{"role": "user", "content": "<image>Transcribe the first line."},
                                  {"role": "assistant", "content": "The first line of the page."}],
                     "images": [f"doc/{i}.png"]})
    return recs


def media_root(tmp: Path) -> tuple[Path, dict[str, list[dict]]]:
    """One media folder holding every class's files (demo photos and clips, camera JPEGs, documents)
    and the records of each class, relative to it."""
    root = tmp / "media"
    root.mkdir()
    shutil.copytree(CORPUS / "mllm_demo_data", root / "mllm_demo_data")   # a copy: links out of the root are refused
    photo_corpus(root)
    classes = {"photos": records("mllm_demo.json"), "camera": records("photos.json", root),
               "documents": document_corpus(root), "clips": records("mllm_video_demo.json")}
    return root, classes


def mix(classes: dict[str, list[dict]], n: int, seed: int = 0) -> list[dict]:
    """n records: 40% photos, 30% camera, 10% documents, 20% clips, shuffled."""
    share = {"photos": 0.4, "camera": 0.3, "documents": 0.1, "clips": 0.2}
    out = []
    for name, f in share.items():
        recs = classes[name]
        out += [recs[i % len(recs)] for i in range(max(1, round(f * n)))]
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order]


def write_out(out: Path, recs: list[dict], repeat: int, per_shard: int = 64, media_root: Path = CORPUS,
              codec: str | None = None) -> list[int]:
    """vlprep-encode each record once, write it `repeat` times (distinct ids) into shards + manifest."""
    from pipeline.io import MANIFEST_SCHEMA, rows_to_table, write_table
    from pipeline.writer import ShardWriter
    from processors.encode import encode_sample
    from processors.formats import parse_record

    encoded = [encode_sample(parse_record(r, source="demo", index=i), "qwen2-vl", media_root=media_root)
               for i, r in enumerate(recs)]
    rows, lengths = [], []
    n = len(encoded) * repeat
    kw = {"codec": codec} if codec else {}
    for u0 in range(0, n, per_shard):
        unit = f"u{u0 // per_shard:04d}"
        with ShardWriter(out / "shards" / f"{unit}.tar", **kw) as w:
            for i in range(u0, min(n, u0 + per_shard)):
                e, sid = encoded[i % len(encoded)], f"r{i:06d}"
                w.write(sid, e, {"id": sid})
                rows.append(dict(id=sid, shard=f"shards/{unit}.tar", unit=unit, key=sid, preset="qwen2-vl",
                                 n_tokens=len(e.input_ids)))
                lengths.append(len(e.input_ids))
    write_table(rows_to_table(rows, MANIFEST_SCHEMA), out / "manifest.parquet")
    return lengths


def cpu_s() -> float:
    """User + system CPU seconds of this process and its finished children (DataLoader workers are
    children, joined at the end of each epoch): what a path costs in cores, whatever the load."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Online:
    """The per-sample processor path (module docstring), built once; `run(recs, repeat, root)`."""

    def __init__(self):
        from transformers import PreTrainedTokenizerFast, Qwen2VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from processors.presets import get_preset
        from test_reward_fixtures import tiny_config
        from test_tokenizer import hf_reference

        self.tok = PreTrainedTokenizerFast(tokenizer_object=hf_reference(), eos_token="<|im_end|>",
                                           pad_token="<|endoftext|>")
        self.ip = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)
        self.rope = Qwen2VLForConditionalGeneration(tiny_config("qwen2-vl")).model.get_rope_index
        self.image_pad = self.tok.convert_tokens_to_ids("<|image_pad|>")
        self.video_pad = self.tok.convert_tokens_to_ids("<|video_pad|>")
        pre = get_preset("qwen2-vl")
        self.mean = np.asarray(pre.image_mean, np.float32)
        self.std = np.asarray(pre.image_std, np.float32)

    def video(self, path: Path):
        """(pixel_values_videos float32 [N, 1176], video_grid_thw [1, 3]) of one clip."""
        import decord
        import torch

        from processors.patches import patchify
        from processors.video_resize import resize_frames
        from processors.video_sampling import sample_frame_indices, video_frame_size

        vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
        idx, _ = sample_frame_indices(len(vr), vr.get_avg_fps())
        frames = vr.get_batch(idx.tolist()).asnumpy()
        H, W = video_frame_size(frames.shape[1], frames.shape[2], len(idx))
        x = resize_frames(frames, H, W).astype(np.float32) * np.float32(1 / 255)
        x = (x - self.mean) / self.std                      # rescale + normalise, as the video processor
        rows, grid = patchify(x)
        return torch.from_numpy(rows), torch.tensor([grid])

    def run(self, recs: list[dict], repeat: int, root: Path) -> tuple[float, int, int, float]:
        """(seconds, samples, tokens, CPU seconds)."""
        import torch
        from PIL import Image

        tok = self.tok
        c0, t0 = cpu_s(), time.perf_counter()
        n = tokens = 0
        for _ in range(repeat):
            for r in recs:
                batch = {}
                pads = {"<image>": iter(()), "<video>": iter(())}
                if r.get("images"):
                    px = self.ip(images=[Image.open(root / p).convert("RGB") for p in r["images"]],
                                 return_tensors="pt")
                    batch.update(pixel_values=px["pixel_values"], image_grid_thw=px["image_grid_thw"])
                    pads["<image>"] = iter(int(g.prod()) // 4 for g in px["image_grid_thw"])
                if r.get("videos"):
                    vids = [self.video(root / p) for p in r["videos"]]
                    batch.update(pixel_values_videos=torch.cat([v for v, _ in vids]),
                                 video_grid_thw=torch.cat([g for _, g in vids]))
                    pads["<video>"] = iter(int(g.prod()) // 4 for _, g in vids)
                ids = tok("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
                          add_special_tokens=False)["input_ids"]
                labels = [-100] * len(ids)
                for m in r["messages"]:
                    text = m["content"]
                    for tag, pad in (("<image>", "<|image_pad|>"), ("<video>", "<|video_pad|>")):
                        while tag in text:
                            text = text.replace(tag, "<|vision_start|>" + pad * next(pads[tag]) + "<|vision_end|>", 1)
                    head = tok(f"<|im_start|>{m['role']}\n", add_special_tokens=False)["input_ids"]
                    body = tok(f"{text}<|im_end|>\n", add_special_tokens=False)["input_ids"]
                    ids += head + body
                    labels += [-100] * len(head) + (body if m["role"] == "assistant" else [-100] * len(body))
                input_ids = torch.tensor([ids])
                mm = (input_ids == self.image_pad).int() + 2 * (input_ids == self.video_pad).int()
                pos, _ = self.rope(input_ids, mm, image_grid_thw=batch.get("image_grid_thw"),
                                   video_grid_thw=batch.get("video_grid_thw"))
                batch.update(input_ids=input_ids, labels=torch.tensor([labels]), position_ids=pos)
                n += 1
                tokens += input_ids.shape[1]
        return time.perf_counter() - t0, n, tokens, cpu_s() - c0


def vlprep(out: Path, workers: int, epochs: int, lazy: bool = True, ring: int | None = None,
           persistent: bool = False, **mode) -> tuple[float, int, int, float, float, float]:
    """(seconds, samples, tokens, seconds to the first batch, samples/s after it, CPU seconds of the
    training process and its workers). Worker start-up
    (fork, first shard open, the shuffle buffer's fill) is paid again every epoch unless
    `persistent` (persistent_workers=True); the steady rate after the first batch is reported beside
    the total. `ring`: hand-off slots per worker (None: the default, 0: a fresh buffer per batch)."""
    from pipeline.dataset import ShardDataset

    ds = ShardDataset(out, seed=0, **mode)
    ds.lazy = lazy
    ds.ring_depth = ring
    dl = ds.loader(num_workers=workers, persistent_workers=persistent and workers > 0)
    n = tokens = 0
    first = None
    c0, t0 = cpu_s(), time.perf_counter()
    for _ in range(epochs):
        for batch in dl:
            if first is None:
                first, n_first = time.perf_counter() - t0, len(batch.ids)
            n += len(batch.ids)
            # real tokens: padded batches mask their padding; packed rows (no pad_to) have none
            tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    del dl                                 # persistent workers end here: their CPU joins RUSAGE_CHILDREN
    t = time.perf_counter() - t0
    steady = (n - n_first) / (t - first) if n > n_first else float("nan")
    return t, n, tokens, first, steady, cpu_s() - c0


def split_run(out: Path, workers: int, mode: dict, **kw) -> dict:
    """One epoch through the loader, its CPU and minor page faults split by process: the training
    process (RUSAGE_SELF: DataLoader machinery, unpickling, the batch views) and its joined workers
    (RUSAGE_CHILDREN: read, shuffle, packing, collation, frame decode into the hand-off buffer)."""
    import gc
    import resource

    def ru(who):
        r = resource.getrusage(who)
        return r.ru_utime + r.ru_stime, r.ru_minflt

    gc.collect()
    (s0, f0), (k0, g0) = ru(resource.RUSAGE_SELF), ru(resource.RUSAGE_CHILDREN)
    t, n, *_ = vlprep(out, workers, 1, **mode, **kw)
    (s1, f1), (k1, g1) = ru(resource.RUSAGE_SELF), ru(resource.RUSAGE_CHILDREN)
    return dict(rate=n / t, main_us=(s1 - s0) / n * 1e6, main_flt=(f1 - f0) / n,
                worker_us=(k1 - k0) / n * 1e6, worker_flt=(g1 - g0) / n)


def worker_phases(out: Path, mode: dict, ring: int, rounds: int = 3) -> dict[str, float]:
    """Process-CPU µs per sample of each step one DataLoader worker runs, replayed in this process
    (the worker's code path: lazy frames, to_transfer with `ring` slots, the pickle of what crosses
    the pipe; then the training process's unpickle + unpack), best of `rounds`."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch

    import pipeline.dataset as D

    pt = time.process_time
    best: dict[str, float] = {}
    for _ in range(rounds):
        acc: dict[str, float] = {}

        def timed_gen(name, gen):
            it = iter(gen)
            while True:
                c = pt()
                try:
                    x = next(it)
                except StopIteration:
                    acc[name] = acc.get(name, 0) + pt() - c
                    return
                acc[name] = acc.get(name, 0) + pt() - c
                yield x

        def timed_fn(name, fn):
            def w(*a, **k):
                c = pt()
                r = fn(*a, **k)
                acc[name] = acc.get(name, 0) + pt() - c
                return r
            return w

        ds = D.ShardDataset(out, seed=0, **mode)
        ds._tracked, ds._ring, ds.num_workers, ds._consumed = True, ring, 1, [0]
        keep = (D.get_worker_info, D.buffer_shuffle, D.OnlinePacker.pack, D.to_transfer, type(ds.collate).__call__)
        D.get_worker_info = lambda: type("Info", (), {"id": 0, "num_workers": 1})()
        samples = ds._samples
        ds._samples = lambda g, G: timed_gen("read", samples(g, G))
        D.buffer_shuffle = lambda *a, **k: timed_gen("shuffle", keep[1](*a, **k))
        D.OnlinePacker.pack = lambda self, x: timed_gen("pack", keep[2](self, x))
        D.to_transfer = timed_fn("transfer", keep[3])
        type(ds.collate).__call__ = timed_fn("collate", keep[4])
        try:
            n = 0
            c0 = pt()
            for item, _, _ in ds:
                c = pt()
                blob = ForkingPickler.dumps(item)
                c2 = pt()
                b = pickle.loads(blob).unpack()
                acc["pickle"] = acc.get("pickle", 0) + c2 - c
                acc["unpickle"] = acc.get("unpickle", 0) + pt() - c2
                n += len(b.ids)
                del b, item, blob
            total = pt() - c0
        finally:
            (D.get_worker_info, D.buffer_shuffle, D.OnlinePacker.pack, D.to_transfer,
             type(ds.collate).__call__) = keep
        steps = {"read (tar, .npy, .json; frames kept compressed)": acc["read"],
                 "shuffle buffer": acc["shuffle"] - acc["read"],
                 "online packing": acc.get("pack", acc["shuffle"]) - acc["shuffle"],
                 "collate (ids, labels, position ids, grids)": acc["collate"],
                 "to_transfer (crc32 + zstd + undelta into the buffer)": acc["transfer"],
                 "pickle what crosses the pipe": acc["pickle"],
                 "(training process) unpickle + views": acc["unpickle"]}
        steps["generators, checks, rest"] = total - sum(steps.values())
        steps["total"] = total
        for k, v in steps.items():
            best[k] = min(best.get(k, 1e9), v / n * 1e6)
    torch.set_num_threads(1)
    return best


def reader_alone(out: Path, pixels: str = "rows") -> tuple[float, int, int, float]:
    """The shard reader by itself (tar members → numpy), the ceiling for any loader on top of it."""
    from pipeline.loader import ShardLoader

    c0, t0 = cpu_s(), time.perf_counter()
    n = tokens = 0
    loader = ShardLoader(out)
    for shard in loader.shards():
        for s in loader.iter_shard(shard, pixels=pixels):
            n += 1
            tokens += len(s["input_ids"])
    return time.perf_counter() - t0, n, tokens, cpu_s() - c0


def device_side(out: Path, max_tokens: int) -> tuple[float, int, int, float]:
    """What `to_device` costs for uint8-frames packed rows on a CPU "device" (patchify + normalise),
    in process: the work the frames mode moves from the workers to the training device."""
    from pipeline.dataset import ShardDataset, to_device

    batches = list(ShardDataset(out, seed=0, max_tokens=max_tokens, normalize=False, pixels="frames"))
    c0, t0 = cpu_s(), time.perf_counter()
    n = tokens = 0
    for b in batches:
        to_device(b, "cpu", "qwen2-vl")
        n += len(b.ids)
        tokens += b["input_ids"].numel()
    return time.perf_counter() - t0, n, tokens, cpu_s() - c0


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


def profile_read(out: Path, rounds: int = 3) -> list[tuple[str, float]]:
    """Per-sample process-CPU microseconds of each step of reading one shard (best of `rounds`):
    the tar members, the .npy and .json members, the pixel members' crc32, zstd, the zstd-delta
    inverse, the host patchify ("rows" mode) and the torch conversion."""
    import zlib

    import torch

    from pipeline import storage as S
    from pipeline.loader import ARRAYS, ShardLoader
    from processors.patches import patchify

    loader = ShardLoader(out)
    shard = loader.shards()[0]
    best: dict[str, float] = {}
    for _ in range(rounds):
        T: dict[str, float] = {}
        c = time.process_time()
        members = list(loader._iter_members(shard))
        T["tar headers + member bytes"] = time.process_time() - c
        for _, mem in members:
            c = time.process_time()
            for name in ARRAYS:
                if name != "pixel_values":
                    S.load_npy(mem[name + ".npy"])
            c2 = time.process_time()
            T["6 .npy members"] = T.get("6 .npy members", 0) + c2 - c
            json.loads(mem["meta.json"])
            desc = json.loads(mem["pixels.json"])
            c3 = time.process_time()
            T["meta.json + pixels.json"] = T.get("meta.json + pixels.json", 0) + c3 - c2
            frames = []
            for it in desc["items"]:
                h, w = it["size"]
                for name in it["members"]:
                    c = time.process_time()
                    zlib.crc32(mem[name])
                    c2 = time.process_time()
                    buf = S._zstd(S.ZSTD_DELTA_LEVEL).decompress(mem[name], h * w * 3)
                    c3 = time.process_time()
                    f = S.undelta(np.frombuffer(buf, np.uint8).reshape(h, w, 3))
                    c4 = time.process_time()
                    frames.append(f)
                    for k, v in (("crc32", c2 - c), ("zstd decompress", c3 - c2), ("zstd-delta inverse (undelta)", c4 - c3)):
                        T[k] = T.get(k, 0) + v
            c = time.process_time()
            for f in frames:
                patchify(f[None], 14, 2, 2)
            c2 = time.process_time()
            for f in frames:
                torch.from_numpy(f)
            c3 = time.process_time()
            T["patchify (rows mode only)"] = T.get("patchify (rows mode only)", 0) + c2 - c
            T["torch.from_numpy"] = T.get("torch.from_numpy", 0) + c3 - c2
        for k, v in T.items():
            best[k] = min(best.get(k, 1e9), v / len(members) * 1e6)
    return list(best.items())


HANDOFFS = (("ring of slots", None), ("fresh buffer", 0), ("torch's own", "torch"))


def handoff(out: Path, mode: dict, workers: int = 1, rounds: int = 2) -> list[tuple[str, dict]]:
    """Per hand-off (HANDOFFS), one epoch with `workers` workers: samples/s and the CPU µs and minor
    page faults per sample of the training process and of its workers (split_run); alternated, best
    of `rounds` per column."""
    import pipeline.dataset as D

    best: dict[str, dict] = {}
    keep = D.to_transfer
    for _ in range(rounds):             # alternated: the machine's load moves under the runs
        for label, ring in HANDOFFS:
            if ring == "torch":                 # torch pickles each tensor: frames must be decoded (eager)
                D.to_transfer = lambda b, ring=0: b
            try:
                r = split_run(out, workers, mode, ring=0 if ring == "torch" else ring, lazy=ring != "torch")
            finally:
                D.to_transfer = keep
            b = best.setdefault(label, r)
            best[label] = {k: (max if k == "rate" else min)(b[k], r[k]) for k in r}
    return list(best.items())


def lazy_ab(out: Path, mode: dict, workers: int = 1, rounds: int = 3) -> list[tuple[str, float, float]]:
    """(label, samples/s, process+worker CPU µs per sample) with frames decoded straight into the
    batch's transfer buffer (lazy, the default) and into per-sample arrays first (eager), alternated,
    best of `rounds`."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for label, lazy in (("lazy: decoded into the batch buffer", True), ("eager: per-sample arrays + copy", False)):
            t, n, _, _, _, c = vlprep(out, workers, 1, lazy=lazy, **mode)
            rate, us = best.get(label, (0.0, 1e12))
            best[label] = (max(rate, n / t), min(us, c / n * 1e6))
    return [(label, rate, us) for label, (rate, us) in best.items()]


def codec_ab(outs: dict[str, Path], mode: dict, workers: int = 1, rounds: int = 3) -> list[tuple[str, float, float, float]]:
    """(codec, reader-alone frames samples/s of process CPU, loader samples/s, loader process+worker
    CPU µs per sample) per codec's OUT (the same samples), alternated round by round, best of
    `rounds`: the machine's load moves under sequential runs, alternation shares it out."""
    best: dict[str, list[float]] = {c: [0.0, 0.0, 1e12] for c in outs}
    for _ in range(rounds):
        for codec, out in outs.items():
            _, n, _, c = reader_alone(out, "frames")
            t, n2, _, _, _, c2 = vlprep(out, workers, 1, **mode)
            b = best[codec]
            b[0], b[1], b[2] = max(b[0], n / c), max(b[1], n2 / t), min(b[2], c2 / n2 * 1e6)
    return [(codec, *b) for codec, b in best.items()]


CLASSES = ("photos", "camera", "documents", "clips", "mix")
# samples the online path runs per class (~2-4 s each on an idle core); the loader reads --loader-scale x
ONLINE_N = {"photos": 240, "camera": 60, "documents": 16, "clips": 12, "mix": 60}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", default=",".join(CLASSES), help=f"comma list of {CLASSES}")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every class's sample counts")
    ap.add_argument("--loader-scale", type=int, default=4, help="loader samples per online sample (default 4)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--multi-epochs", type=int, default=3,
                    help="also the packed uint8-frames loader (most workers) over this many epochs, workers "
                         "restarted every epoch vs persistent_workers=True (1: skip)")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--codecs", nargs="?", const="zstd,npy,lz4-delta", default="",
                    help="also the reader alone on shards in these codecs (default list: zstd,npy,lz4-delta)")
    ap.add_argument("--codec-loader", action="store_true",
                    help="with --codecs: also the loader (packed uint8 frames, each --workers) on those shards")
    ap.add_argument("--codec-ab", default="",
                    help="comma list of codecs (e.g. zstd-delta,lz4-delta,npy): per class only the reader alone "
                         "and the packed uint8-frames loader (1 worker) on each codec's shards, alternated, best of 3")
    ap.add_argument("--no-waste", action="store_true", help="skip the padding-waste table")
    ap.add_argument("--profile", action="store_true",
                    help="only the per-step read profile and the hand-off comparison (photos, camera)")
    ap.add_argument("--lazy", action="store_true",
                    help="only lazy vs eager frame decoding, 1 worker, uint8 frames (the --classes given)")
    args = ap.parse_args(argv)
    if not (CORPUS / "mllm_demo.json").exists():
        print(f"LLaMA-Factory demo corpus not found at {CORPUS} (set VLPREP_SHARED_CORPUS)", file=sys.stderr)
        return 2
    wanted = [c.strip() for c in args.classes.split(",") if c.strip()]
    bad = [c for c in wanted if c not in CLASSES]
    if bad:
        print(f"--classes: unknown {bad}; use some of {CLASSES}", file=sys.stderr)
        return 2
    torch_threads(1)          # as in DataLoader workers; the online path gets the same
    print(f"load: {os.getloadavg()[0]:.1f} (1-min), {os.cpu_count()} CPUs, torch threads 1")
    online = Online()
    workers = [int(w) for w in args.workers.split(",")]
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        root, classes = media_root(Path(tmp))
        if args.profile:
            for name in ("photos", "camera"):
                out = Path(tmp) / f"prof-{name}"
                write_out(out, classes[name], (600 if name == "photos" else 120) // len(classes[name]), media_root=root)
                print(f"\n{name}: read profile, process-CPU µs per sample (one 64-sample shard, best of 3); "
                      f"load {os.getloadavg()[0]:.1f}")
                for step, us in profile_read(out):
                    print(f"  {step:<32} {us:>8.1f}")
                packed = dict(max_tokens=16384, normalize=False, pixels="frames")
                for ring in (None, 0):
                    steps = worker_phases(out, packed, 4 if ring is None else 0)
                    print(f"  one worker's steps, packed ≤16384 uint8 frames, in process, "
                          f"{'ring of slots' if ring is None else 'fresh buffer per batch'} (best of 3); "
                          f"load {os.getloadavg()[0]:.1f}")
                    for step, us in steps.items():
                        print(f"    {step:<56} {us:>8.1f} µs")
                print(f"  through the DataLoader, 1 epoch, CPU µs and minor faults per sample by process "
                      f"(best of 2, alternated); load {os.getloadavg()[0]:.1f}")
                print(f"    {'':<53} {'samples/s':>9} {'main µs':>8} {'flt':>5} {'workers µs':>10} {'flt':>5} {'total µs':>8}")
                for label, mode in (("padded b=4, uint8 frames", dict(batch_size=4, normalize=False, pixels="frames")),
                                    ("packed ≤16384, uint8 frames", packed)):
                    for w in (1, 2):
                        for how, r in handoff(out, mode, w):  # all the OUT's samples, 1 epoch
                            print(f"    {w} worker{'s' * (w > 1)}, {label:<27} {how:<14} {r['rate']:>9.1f} "
                                  f"{r['main_us']:>8.0f} {r['main_flt']:>5.0f} {r['worker_us']:>10.0f} "
                                  f"{r['worker_flt']:>5.0f} {r['main_us'] + r['worker_us']:>8.0f}")
            print(f"load after: {os.getloadavg()[0]:.1f}")
            return 0
        if args.codec_ab:
            codecs = args.codec_ab.split(",")
            mode = dict(max_tokens=args.max_tokens, normalize=False, pixels="frames")
            for name in wanted:
                recs = mix(classes, 60) if name == "mix" else classes[name]
                rep = (max(1, round(ONLINE_N[name] * args.scale * args.loader_scale / len(recs)))
                       if name != "mix" else max(1, args.loader_scale))
                outs = {}
                for codec in codecs:
                    outs[codec] = Path(tmp) / f"ab-{name}-{codec}"
                    write_out(outs[codec], recs, rep, media_root=root, codec=codec)
                size = {c: sum(p.stat().st_size for p in (o / "shards").glob("*.tar")) for c, o in outs.items()}
                print(f"\n{name}: codecs alternated, best of 3; packed ≤{args.max_tokens} uint8 frames, 1 worker; "
                      f"load {os.getloadavg()[0]:.1f}")
                print(f"  {'codec':<12} {'shard MB':>9} {'reader/CPU-s':>13} {'loader/s':>9} {'loader CPU µs/sample':>21}")
                for codec, reader, rate, us in codec_ab(outs, mode):
                    print(f"  {codec:<12} {size[codec] / 1e6:>9.1f} {reader:>13.1f} {rate:>9.1f} {us:>21.0f}")
                for o in outs.values():
                    shutil.rmtree(o)
            print(f"load after: {os.getloadavg()[0]:.1f}")
            return 0
        if args.lazy:
            for name in wanted:
                recs = mix(classes, 60) if name == "mix" else classes[name]
                out = Path(tmp) / f"lazy-{name}"
                write_out(out, recs, max(1, round(ONLINE_N[name] * args.scale * args.loader_scale / len(recs)))
                          if name != "mix" else max(1, args.loader_scale), media_root=root)
                print(f"\n{name}: lazy vs eager frames, 1 worker, best of 3 alternated; load {os.getloadavg()[0]:.1f}")
                for label, mode in (("padded b=4, uint8 frames", dict(batch_size=4, normalize=False, pixels="frames")),
                                    (f"packed ≤{args.max_tokens}, uint8 frames",
                                     dict(max_tokens=args.max_tokens, normalize=False, pixels="frames"))):
                    for how, rate, us in lazy_ab(out, mode):
                        print(f"  {label:<28} {how:<38} {rate:>8.1f} samples/s {us:>8.0f} CPU µs/sample")
                shutil.rmtree(out)
            print(f"load after: {os.getloadavg()[0]:.1f}")
            return 0
        for name in wanted:
            n_online = max(1, round(ONLINE_N[name] * args.scale))
            recs = mix(classes, n_online) if name == "mix" else classes[name]
            online_repeat = max(1, round(n_online / len(recs)))
            out = Path(tmp) / f"out-{name}"
            write_out(out, recs, online_repeat * args.loader_scale, media_root=root)
            rows = []
            t, n, tok, c = online.run(recs, online_repeat, root)
            rows.append(("online: files → HF processor, per sample (1 process)", t, n, tok, 0.0, n / t, c))
            for pixels in ("rows", "frames"):
                t, n, tok, c = reader_alone(out, pixels)
                rows.append((f"(ceiling) reader alone, in process, pixels={pixels}", t, n, tok, 0.0, n / t, c))
            for codec in filter(None, args.codecs.split(",")):
                cout = Path(tmp) / f"out-{name}-{codec}"
                write_out(cout, recs, online_repeat * args.loader_scale, media_root=root, codec=codec)
                t, n, tok, c = reader_alone(cout, "frames")
                rows.append((f"(ceiling) reader alone, frames, codec {codec}", t, n, tok, 0.0, n / t, c))
                if args.codec_loader:
                    for w in workers:
                        mode = dict(max_tokens=args.max_tokens, normalize=False, pixels="frames")
                        rows.append((f"codec {codec}: packed ≤{args.max_tokens}, uint8 frames, {w} worker{'s' * (w > 1)}",
                                     *vlprep(cout, w, args.epochs, **mode)))
                shutil.rmtree(cout)
            t, n, tok, c = device_side(out, args.max_tokens)
            rows.append(("(device side) to_device on CPU: patchify+normalise", t, n, tok, 0.0, n / t, c))
            for w in workers:
                for label, mode in (("padded b=4, float pixels", dict(batch_size=4)),
                                    ("padded b=4, uint8 frames", dict(batch_size=4, normalize=False, pixels="frames")),
                                    (f"packed ≤{args.max_tokens}, uint8 frames",
                                     dict(max_tokens=args.max_tokens, normalize=False, pixels="frames"))):
                    rows.append((f"vlprep {label}, {w} worker{'s' * (w > 1)}", *vlprep(out, w, args.epochs, **mode)))
            multi = []
            if args.multi_epochs > 1:       # workers restarted every epoch vs kept (persistent_workers)
                mode = dict(max_tokens=args.max_tokens, normalize=False, pixels="frames")
                w = max(workers)
                for persistent in (False, True):
                    how = "persistent workers" if persistent else "workers restarted"
                    multi.append((f"{args.multi_epochs} epochs: packed, frames, {w} workers, {how}",
                                  *vlprep(out, w, args.multi_epochs, persistent=persistent, **mode)))
            ref = rows[0][2] / rows[0][1]
            ref_cpu = rows[0][2] / rows[0][6]
            print(f"\n{name}: {len(recs)} records; online {rows[0][2]} samples, loader {rows[-1][2]} "
                  f"({args.epochs} epoch(s)); load {os.getloadavg()[0]:.1f}")
            print(f"{'path':<56} {'samples/s':>10} {'tokens/s':>10} {'vs online':>9} {'1st batch':>9} "
                  f"{'steady/s':>9} {'steady vs':>9} {'/CPU-s':>8} {'CPU vs':>7}")
            for label, t, n, tok, first, steady, c in rows + multi:
                print(f"{label:<56.56} {n / t:>10.1f} {tok / t:>10.0f} {n / t / ref:>8.1f}x {first:>8.2f}s "
                      f"{steady:>9.1f} {steady / ref:>8.1f}x {n / c:>8.1f} {n / c / ref_cpu:>6.1f}x")
            loaders = [r for r in rows if r[0].startswith("vlprep")]
            best = max(loaders, key=lambda r: r[2] / r[1])
            best_cpu = max(loaders, key=lambda r: r[2] / r[6])
            summary.append((name, ref, best[0][7:], best[2] / best[1], best[5], ref_cpu,
                            best_cpu[2] / best_cpu[6], best_cpu[0][7:],
                            max(multi, key=lambda r: r[2] / r[1]) if multi else None))
            shutil.rmtree(out)
        print(f"\nsummary: best loader configuration per class (load {os.getloadavg()[0]:.1f})")
        print(f"{'class':<10} {'online/s':>9} {'loader/s':>9} {'vs online':>9} {'steady vs':>9}  {'configuration':<42}"
              f" {'online/CPU-s':>12} {'loader/CPU-s':>12} {'CPU vs':>7}  configuration")
        for name, ref, label, rate, steady, ref_cpu, rate_cpu, label_cpu, _ in summary:
            print(f"{name:<10} {ref:>9.1f} {rate:>9.1f} {rate / ref:>8.1f}x {steady / ref:>8.1f}x  {label:<42}"
                  f" {ref_cpu:>12.1f} {rate_cpu:>12.1f} {rate_cpu / ref_cpu:>6.1f}x  {label_cpu}")
        if args.multi_epochs > 1:
            print(f"\n{args.multi_epochs} epochs, the faster of workers restarted / persistent (packed, uint8 frames)")
            print(f"{'class':<10} {'online/s':>9} {'loader/s':>9} {'vs online':>9} {'online/CPU-s':>12} "
                  f"{'loader/CPU-s':>12} {'CPU vs':>7}  configuration")
            for x in summary:
                name, ref, ref_cpu, (label, t, n, _, _, _, c) = x[0], x[1], x[5], x[8]
                print(f"{name:<10} {ref:>9.1f} {n / t:>9.1f} {n / t / ref:>8.1f}x {ref_cpu:>12.1f} {n / c:>12.1f} "
                      f"{n / c / ref_cpu:>6.1f}x  {label}")
        if not args.no_waste:
            mixo = Path(tmp) / "mix-waste"
            lengths = write_out(mixo, records("mllm_demo.json") + records("mllm_video_demo.json"), 50)
            print(f"\npadding waste on the demo length mix ({len(lengths)} samples: 9 demo records × 50, "
                  f"{min(lengths)}–{max(lengths)} tokens, mean {np.mean(lengths):.0f})")
            print(f"{'layout':<52} {'padding':>8} {'fill':>7}")
            for label, w in waste(lengths, args.max_tokens, 8):
                print(f"{label:<52} {100 * w:>7.1f}% {100 * (1 - w):>6.1f}%")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
