"""Benchmark: the vlprep score stage (vlm scorer) vs a per-sample transformers reference loop.

    python bench/score.py                                   # tiny Qwen2-VL on CPU
    python bench/score.py --device cuda --config qwen2-vl-2b --samples 512 --batch-tokens 32768

Both sides score the same synthetic image+text conversations with the same randomly initialised
model, saved to a temporary folder and loaded by path:
  reference  raw sample (PNG bytes + text) -> PIL decode -> Qwen2VLImageProcessorPil -> pad expansion
             (spec §8) -> HF BPE tokenizer -> model(...) full logits -> answer mean log-prob, one sample
             at a time (the loop a user writes with the transformers processor)
  vlprep     samples encoded once by `vlprep` into shards (not timed: that is `vlprep prepare`'s job),
             then the stage: shard read -> token-budget batches -> uint8 patches to the device ->
             normalise there -> forward -> lm_head on supervised rows only
The stage is timed twice: log-prob only (the reference's work) and with the vlm scorer's second,
text-only pass (visual gain), which the reference does not do.
On CUDA, GPU utilisation is sampled every 100 ms during each side (torch.cuda.utilization / nvidia-smi).

--curation adds the #15 scorers (category, vlm_category, grounding, query, verify) on the same shards
(every second answer replaced by a Qwen2-VL box so the grounding signal has work): each through the
stage with the batch budget, beside the same scorer one sample per forward/generate call (batch budget
1 token). vlm_category and grounding also beside their candidate rows each read whole (the sample and
its vision re-read per candidate, batched): the computation before the prefix KV cache, with the same
log-probs (tests/test_issue15_share.py). Last, the start-up of all checkpoint scorers in one worker
(one shared load) vs each loading its own copy.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the independent HF reference tokenizer lives with the tests

# Qwen2-VL-2B-Instruct's config.json values (text + vision tower), for a randomly initialised model.
QWEN2_VL_2B = {
    "text": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                 rms_norm_eps=1e-6, hidden_act="silu",
                 rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}),
    "vision": dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                   spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu", in_channels=3),
    "tie_word_embeddings": True,
}
TINY = {
    "text": dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                 rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]}),
    "vision": dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                   spatial_merge_size=2, temporal_patch_size=2),
    "tie_word_embeddings": True,
}
# Between the two: a text model wide and deep enough that reading a 400-token row costs more than
# lm_head over its few scored tokens (in TINY the 151 936-word lm_head dwarfs everything), small
# enough for CPU: what a candidate scorer's prefix KV cache saves shows here, not in TINY.
SMALL = {
    "text": dict(vocab_size=151936, hidden_size=512, intermediate_size=2048, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32768,
                 rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [8, 12, 12]}),
    "vision": dict(depth=4, embed_dim=256, hidden_size=512, num_heads=4, mlp_ratio=4, patch_size=14,
                   spatial_merge_size=2, temporal_patch_size=2),
    "tie_word_embeddings": True,
}
CONFIGS = {"tiny": TINY, "small": SMALL, "qwen2-vl-2b": QWEN2_VL_2B}
WORDS = ("red blue green cat dog car tree house street window person table river mountain sky cloud light "
         "small large old new left right behind near bright dark wooden metal open closed").split()


def build_model(name: str, folder: Path, device) -> Path:
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    c = CONFIGS[name]
    cfg = Qwen2VLConfig(text_config=c["text"], vision_config=c["vision"], tie_word_embeddings=c["tie_word_embeddings"])
    torch.manual_seed(0)
    with torch.device(device):  # initialise where it will run: a 2B model inits in seconds on a GPU
        model = Qwen2VLForConditionalGeneration(cfg)
    model.to(torch.bfloat16 if device.type == "cuda" else torch.float32).save_pretrained(folder)
    del model
    return folder


def raw_samples(n: int, max_side: int, seed: int = 0):
    """(id, png bytes, question, answer) with image sides 56..max_side and answers of 8..60 words."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(56, max_side + 1, 2))
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([(x * 255 // w), (y * 255 // h), ((x + y + 37 * i) % 256)], -1).astype(np.int16)
        img = np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        q = "Describe the " + " ".join(rng.choice(WORDS, int(rng.integers(3, 12)))) + "?"
        a = " ".join(rng.choice(WORDS, int(rng.integers(8, 61)))).capitalize() + "."
        out.append((f"s{i:05d}", buf.getvalue(), q, a))
    return out


def prepare(out: Path, samples, per_shard: int) -> int:
    """Encode with vlprep and write shards + manifest (the part `vlprep prepare` does; untimed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.writer import ShardWriter
    from processors.encode import encode_sample
    from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart

    rows, tokens = [], 0
    for start in range(0, len(samples), per_shard):
        unit = f"u{start // per_shard:05d}"
        with ShardWriter(out / "shards" / f"{unit}.tar") as w:
            for sid, png, q, a in samples[start:start + per_shard]:
                s = Sample(sid, [Message("user", [ImagePart(0), TextPart(q)]), Message("assistant", [TextPart(a)])],
                           images=[MediaRef("image", data=png)])
                e = encode_sample(s, "qwen2-vl")
                w.write(sid, e, e.meta)
                tokens += len(e.input_ids)
                rows.append({"id": sid, "unit": unit, "shard": f"shards/{unit}.tar", "preset": "qwen2-vl", "key": sid})
    pq.write_table(pa.Table.from_pylist(rows), out / "manifest.parquet")
    return tokens


class GpuSampler:
    """Mean GPU utilisation (%) over a block, sampled every 100 ms."""

    def __init__(self, device):
        self.device, self.values, self._stop = device, [], threading.Event()

    def _read(self):
        import torch

        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # no pynvml: ask nvidia-smi
            idx = self.device.index or 0
            r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                f"--id={idx}"], capture_output=True, text=True)
            return float(r.stdout.strip().splitlines()[0]) if r.returncode == 0 and r.stdout.strip() else None

    def _loop(self):
        while not self._stop.wait(0.1):
            v = self._read()
            if v is not None:
                self.values.append(v)

    def __enter__(self):
        if self.device.type == "cuda":
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    @property
    def mean(self):
        return float(np.mean(self.values)) if self.values else None


def reference_loop(model_path: Path, samples, device) -> tuple[float, int, list[float]]:
    import torch
    from PIL import Image
    from transformers import PreTrainedTokenizerFast, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from test_tokenizer import hf_reference

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_path, dtype=dtype, attn_implementation="sdpa")
    model.to(device).eval()
    tok = PreTrainedTokenizerFast(tokenizer_object=hf_reference(), eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ip = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)
    pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out, tokens = [], 0
    sync()
    t0 = time.perf_counter()
    for _, png, q, a in samples:
        px = ip(images=[Image.open(io.BytesIO(png))], return_tensors="pt")
        n_pad = int(px["image_grid_thw"][0].prod()) // 4
        prompt = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                  + "<|image_pad|>" * n_pad + f"<|vision_end|>{q}<|im_end|>\n<|im_start|>assistant\n")
        answer = f"{a}<|im_end|>\n"
        ids = tok(prompt + answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n_sup = len(tok(answer, add_special_tokens=False)["input_ids"])
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), pixel_values=px["pixel_values"].to(device, dtype),
                           image_grid_thw=px["image_grid_thw"].to(device),
                           mm_token_type_ids=(ids == pad_id).long().to(device)).logits[0].float()
            lp = torch.log_softmax(logits[-n_sup - 1:-1], -1).gather(1, ids[0, -n_sup:, None].to(device))
        out.append(float(lp.mean()))
        tokens += ids.shape[1]
    sync()
    return time.perf_counter() - t0, tokens, out


def stage_run(out: Path, model_path: Path, device, batch_tokens: int, visual_gain: bool):
    from filters.reward.stage import ScoreConfig, ScoreWorker, Unit
    from pipeline.loader import ShardLoader

    cfg = ScoreConfig(str(out), ("vlm",), model=str(model_path), preset="qwen2-vl", batch_tokens=batch_tokens,
                      device=str(device), overwrite=True, visual_gain=visual_gain)
    worker = ScoreWorker(cfg, ShardLoader)
    units = [Unit(p.stem, f"shards/{p.name}") for p in sorted((out / "shards").glob("*.tar"))]
    worker.run_unit(units[0])  # warm-up (kernels, allocator); the timed pass below re-scores everything
    t0 = time.perf_counter()
    results = [worker.run_unit(u) for u in units]
    secs = time.perf_counter() - t0
    return secs, results, worker.describe()


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None, help="default: tiny on cpu, qwen2-vl-2b on cuda")
    p.add_argument("--samples", type=int, default=None, help="default 96 (cpu) / 512 (cuda)")
    p.add_argument("--max-side", type=int, default=None, help="largest image side (default 336 cpu / 896 cuda)")
    p.add_argument("--batch-tokens", type=int, default=None, help="default 8192 (cpu) / 32768 (cuda)")
    p.add_argument("--per-shard", type=int, default=128)
    p.add_argument("--curation", action="store_true", help="also time the #15 curation scorers")
    p.add_argument("--curation-samples", type=int, default=None, help="default 16 (cpu) / 128 (cuda)")
    p.add_argument("--curation-scorers", default=",".join(CURATION_SCORERS),
                   help=f"comma list, default {','.join(CURATION_SCORERS)}")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    config = args.config or ("qwen2-vl-2b" if gpu else "tiny")
    n = args.samples or (512 if gpu else 96)
    max_side = args.max_side or (896 if gpu else 336)
    budget = args.batch_tokens or (32768 if gpu else 8192)

    with tempfile.TemporaryDirectory(prefix="vlprep-bench-") as tmp:
        tmp = Path(tmp)
        samples = raw_samples(n, max_side)
        t0 = time.perf_counter()
        prepare(tmp / "out", samples, args.per_shard)
        prep_s = time.perf_counter() - t0
        model_path = build_model(config, tmp / "model", device)

        with GpuSampler(device) as g_ref:
            ref_s, ref_tokens, ref_lp = reference_loop(model_path, samples, device)
        with GpuSampler(device) as g_same:
            same_s, _, _ = stage_run(tmp / "out", model_path, device, budget, visual_gain=False)
        with GpuSampler(device) as g_stage:
            st_s, results, desc = stage_run(tmp / "out", model_path, device, budget, visual_gain=True)

        import pyarrow as pa
        import pyarrow.parquet as pq

        scores = pa.concat_tables([pq.read_table(f) for f in sorted((tmp / "out" / "scores").glob("*.parquet"))])
        ours = np.array(scores.column("vlm.mean_logprob").to_pylist())
        max_diff = float(np.max(np.abs(ours - np.array(ref_lp))))
        tokens = sum(r.tokens for r in results)
        padded = sum(r.padded_tokens for r in results)
        batches = sum(r.batches for r in results)

    dev_name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    util = lambda g: f"{g.mean:.0f}%" if g.mean is not None else "n/a"  # noqa: E731
    print(f"\nvlprep score bench: {config} Qwen2-VL (random init), {dev_name}, {desc['dtype']}, "
          f"{n} image+text samples, images 56..{max_side}px, {tokens / n:.0f} tokens/sample; "
          f"batch budget {budget} tokens, {batches} batches, {'packed' if desc['pack'] else 'padded'}")
    print(f"(vlprep encode+shard write, untimed in the table: {prep_s:.1f}s)\n")
    print("| path | samples/s | tokens/s | seconds | padding | GPU util | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| transformers processor + model, per sample | {n / ref_s:,.1f} | {ref_tokens / ref_s:,.0f} | "
          f"{ref_s:.2f} | 0.0% | {util(g_ref)} | 1.00x |")
    print(f"| vlprep stage, log-prob only (same work as reference) | {n / same_s:,.1f} | {tokens / same_s:,.0f} | "
          f"{same_s:.2f} | {100 * (1 - tokens / padded):.1f}% | {util(g_same)} | {ref_s / same_s:.2f}x |")
    print(f"| vlprep stage, log-prob + visual gain (2 passes) | {n / st_s:,.1f} | {tokens / st_s:,.0f} | {st_s:.2f} | "
          f"{100 * (1 - tokens / padded):.1f}% | {util(g_stage)} | {ref_s / st_s:.2f}x |")
    print(f"\nmax |mean log-prob difference| stage vs reference: {max_diff:.2e} "
          f"({'bf16' if gpu else 'float32'}; same tokens: {ref_tokens == tokens})")
    if args.curation:
        curation_table(config, device, args.curation_samples or (128 if gpu else 16), max_side, budget,
                       tuple(args.curation_scorers.split(",")))
    return 0


BOX_ANSWER = "<|object_ref_start|>the {w}<|object_ref_end|><|box_start|>(120,200),(500,640)<|box_end|>"


CURATION_SCORERS = ("category", "vlm_category", "grounding", "query", "verify")


def curation_table(config: str, device, n: int, max_side: int, budget: int,
                   scorers: tuple[str, ...] = CURATION_SCORERS) -> None:
    """samples/s of each #15 scorer: the stage's batches vs one sample (row) per model call."""
    from filters.reward.stage import ScoreConfig, ScoreWorker, Unit
    from pipeline.loader import ShardLoader

    samples = [(sid, png, q, BOX_ANSWER.format(w=q.split()[2]) if i % 2 else a)
               for i, (sid, png, q, a) in enumerate(raw_samples(n, max_side, seed=1))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="vlprep-bench-cur-") as tmp:
        tmp = Path(tmp)
        prepare(tmp / "out", samples, n)
        model_path = build_model(config, tmp / "model", device)
        units = [Unit(p.stem, f"shards/{p.name}") for p in sorted((tmp / "out" / "shards").glob("*.tar"))]

        def timed(scorer: str, batch_tokens: int) -> float:
            cfg = ScoreConfig(str(tmp / "out"), (scorer,), model=str(model_path), preset="qwen2-vl",
                              batch_tokens=batch_tokens, device=str(device), overwrite=True, max_new_tokens=16)
            worker = ScoreWorker(cfg, ShardLoader)
            t0 = time.perf_counter()
            for u in units:
                worker.run_unit(u)
            return time.perf_counter() - t0

        for scorer in scorers:
            batched = timed(scorer, budget)
            single = timed(scorer, 1)  # every sample (and candidate row) in a batch of its own
            rows.append((scorer, n / single, n / batched, single / batched))
            if scorer in ("vlm_category", "grounding"):  # the same values, every candidate row read whole
                whole = whole_rows_run(scorer, tmp / "out", model_path, device, units, budget)
                rows.append((f"{scorer}: each candidate row read whole (vision per candidate), batched",
                             n / whole, n / batched, whole / batched))
        loads = startup_run(tmp / "out", model_path, device)
    print(f"\ncuration scorers ({config} Qwen2-VL, random init, {n} samples, half with a box answer; "
          f"verify generates 16 tokens):\n")
    print("| scorer | reference: samples/s | vlprep stage: samples/s | speed-up |")
    print("|---|---:|---:|---:|")
    for name, a, b, x in rows:
        print(f"| {name} | {a:,.2f} | {b:,.2f} | {x:.2f}x |")
    print(f"\nworker start-up, scorers {','.join(CHECKPOINT_SCORERS)}: {loads['shared_s']:.2f} s with "
          f"{loads['shared_loads']} checkpoint load (shared), {loads['separate_s']:.2f} s with one load per scorer")


CHECKPOINT_SCORERS = ("vlm", "vlm_category", "grounding", "query", "verify")


def startup_run(out: Path, model_path: Path, device) -> dict:
    """Seconds to set up every checkpoint scorer: in one ScoreWorker (one shared load) vs each on its own."""
    from filters.reward.stage import ScoreConfig, ScoreWorker, make_scorer
    from pipeline.loader import ShardLoader

    cfg = ScoreConfig(str(out), CHECKPOINT_SCORERS, model=str(model_path), preset="qwen2-vl", device=str(device))
    t0 = time.perf_counter()
    worker = ScoreWorker(cfg, ShardLoader)
    shared = time.perf_counter() - t0
    del worker
    t0 = time.perf_counter()
    for name in CHECKPOINT_SCORERS:  # outside a ModelCache: each loads its own copy (the behaviour before)
        make_scorer(name, cfg).setup(device)
    return {"shared_s": shared, "shared_loads": 1, "separate_s": time.perf_counter() - t0}


def whole_rows_run(name: str, out: Path, model_path: Path, device, units, budget: int) -> float:
    """Seconds for `name`'s values computed from whole candidate rows (each re-reads the sample and its
    vision; candidates.row_logprobs in token-budget batches): the computation before the prefix cache,
    which tests/test_issue15_share.py shows gives the same log-probs."""
    import torch

    from filters.reward.batching import HostBatch, plan_batches
    from filters.reward.candidates import extend, first_answer, truncate
    from filters.reward.grounding_scorer import BOX_PATTERNS, box_limits, perturbed_answers
    from filters.reward.stage import ScoreConfig, make_scorer
    from pipeline.loader import ShardLoader
    from processors.presets import get_preset

    cfg = ScoreConfig(str(out), (name,), model=str(model_path), preset="qwen2-vl", batch_tokens=budget,
                      device=str(device))
    scorer = make_scorer(name, cfg)
    scorer.setup(device)
    preset, loader = get_preset("qwen2-vl"), ShardLoader(str(out))
    dtype = scorer.vlm.dtype
    t0 = time.perf_counter()
    for u in units:
        samples = list(loader.iter_shard(u.shard, pixels="frames"))
        lengths = [len(s["input_ids"]) for s in samples]
        for group in plan_batches(lengths, budget, 0.10):
            batch = HostBatch([samples[i] for i in group], preset, device, dtype)
            tok, sp = scorer._tok(batch), scorer._ids(batch)
            if name == "vlm_category":
                coarse = [(c.name, c.description) for c in scorer.taxonomy.coarse]
                ctxs = [truncate(s, first_answer(s, sp)[1] + 1, sp) for s in batch.samples]
                rows = [r for c in ctxs for r in scorer.rows_for(c, tok, coarse, preset, sp)]
                mean, cnt = scorer.logprobs(rows, batch)
                best = (mean * cnt).reshape(len(ctxs), len(coarse)).argmax(axis=1)
                fine = [r for c, b in zip(ctxs, best) for r in scorer.rows_for(
                    c, tok, [(f.name, f.description) for f in scorer.taxonomy.coarse[b].fine], preset, sp)]
                scorer.logprobs(fine, batch)
            else:
                rows = []
                for s in batch.samples:
                    span = first_answer(s, sp)
                    text = tok.decode(np.asarray(s["input_ids"])[span[0]:span[1]].tolist())
                    if not BOX_PATTERNS["qwen2-vl"].search(text):
                        continue
                    alts = perturbed_answers(text, "qwen2-vl", box_limits("qwen2-vl", s["image_grid_thw"]))
                    rows += [extend(truncate(s, span[0], sp), tok.encode(t) + [sp.im_end], preset, special=sp)
                             for t in [text, *alts]]
                scorer.logprobs(rows, batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
