"""First run on a GPU: what a lent GPU must confirm about `vlprep score`, in one go, one table.

    python bench/gpu_check.py                                   # CUDA: random-init Qwen2-VL-2B, 512 samples
    python bench/gpu_check.py --model /ckpt/Qwen2-VL-2B-Instruct --out demo_out/prepared
    python bench/gpu_check.py --dry                             # CPU, tiny model: the script's own test

Checks (bar in brackets; each row says PASS / FAIL, or `dry` where a CPU cannot answer):
  flash-attn                        importable and transformers' is_flash_attn_2_available()
  packed vs padded scores           max |Δ| of vlm.mean_logprob / text_only_logprob, packed rows (FA2
                                    varlen when available) vs right-padded batches [<= 1e-3]
  bf16 vs fp32 scores               the same, bf16 (fp16 without native bf16) vs float32 [<= 1e-2]
  fp32 logits from a bf16 lm_head   token_logprobs of bf16 hidden states x bf16 head vs float64 [<= 1e-3]
  peak memory at 32768 batch tokens torch.cuda.max_memory_allocated over a full pass [< 90% of the GPU]
  ray --num-gpus 0.5 on one GPU     `run_ray` on a one-GPU Ray: two actors on the same GPU, every unit
                                    scored, no out-of-memory
  samples/s vs per-sample loop      the stage (log-prob only) vs the transformers per-sample loop of
                                    bench/score.py on the same samples [>= 3x]
Data: the synthetic image+text shards of bench/score.py, or a prepared OUT (`--out`, e.g. the demo's;
its shards are read, its scores are left alone). Model: `--model` or a randomly initialised one.
Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.score import build_model, prepare, raw_samples, reference_loop, stage_run  # noqa: E402


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, check: str, value: str, bar: str, ok: bool | None, dry_note: str | None = None):
        result = dry_note if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append((check, value, bar, result))

    @property
    def failed(self) -> bool:
        return any(r[3] == "FAIL" for r in self.rows)

    def print(self, head: str):
        print(f"\n{head}\n")
        print("| check | value | bar | result |")
        print("|---|---|---|---|")
        for r in self.rows:
            print("| " + " | ".join(r) + " |")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _units(out: Path):
    from pipeline.score_inputs import units_from_manifest

    return units_from_manifest(out)


def score_pass(out: Path, model: Path, device, **over) -> dict[str, np.ndarray]:
    """Score every unit of `out` with one ScoreWorker; {column: values in manifest order}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from filters.reward.stage import ScoreConfig, ScoreWorker, scores_path
    from pipeline.loader import ShardLoader

    units, preset = _units(out)
    cfg = ScoreConfig(str(out), ("vlm",), model=str(model), preset=preset, device=str(device), overwrite=True, **over)
    worker = ScoreWorker(cfg, ShardLoader)
    for u in units:
        worker.run_unit(u)
    t = pa.concat_tables([pq.read_table(scores_path(out, u.unit)) for u in units])
    desc = worker.describe()
    del worker
    _free(device)
    return {"desc": desc, **{c: np.asarray(t.column(c).to_pylist(), dtype=np.float64) for c in t.column_names
                             if c.startswith("vlm.")}}


def _free(device):
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def max_diff(a: dict, b: dict) -> float:
    d = 0.0
    for col in ("vlm.mean_logprob", "vlm.text_only_logprob"):
        x, y = a[col], b[col]
        both = ~(np.isnan(x) | np.isnan(y))
        if (np.isnan(x) != np.isnan(y)).any():
            return math.inf
        d = max(d, float(np.max(np.abs(x[both] - y[both]))) if both.any() else 0.0)
    return d


def check_flash_attn(table: Table, device, dry: bool):
    from transformers.utils import is_flash_attn_2_available

    found = importlib.util.find_spec("flash_attn") is not None
    avail = bool(is_flash_attn_2_available())
    value = f"import: {'yes' if found else 'no'} ({_version('flash-attn') or 'no dist'}); available: {avail}"
    table.add("flash-attn", value, "importable and available", None if dry else (found and avail),
              "dry: CPU has no FA2")


def check_packed_vs_padded(table: Table, out, model, device):
    packed = score_pass(out, model, device, pack="on")
    padded = score_pass(out, model, device, pack="off")
    d = max_diff(packed, padded)
    how = "FA2 varlen" if packed["desc"]["pack"] and _fa2_loaded() else "SDPA block mask"
    table.add("packed vs padded scores", f"{d:.2e} ({packed['desc']['dtype']}, packed via {how})", "<= 1e-3",
              d <= 1e-3)
    return padded


def _fa2_loaded() -> bool:
    import transformers.modeling_flash_attention_utils as fa

    return fa._loaded_implementation == "flash_attention_2"


def check_bf16_vs_fp32(table: Table, out, model, device):
    from filters.reward.protocol import compute_dtype

    half = "bf16" if device.type == "cpu" else "auto"
    low = score_pass(out, model, device, pack="off", dtype=half)
    full = score_pass(out, model, device, pack="off", dtype="fp32")
    d = max_diff(low, full)
    name = str(compute_dtype(device, half)).replace("torch.", "")
    table.add("bf16 vs fp32 scores", f"{d:.2e} ({name} vs float32)", "<= 1e-2", d <= 1e-2 and d > 0)


def check_fp32_logits(table: Table, device, hidden: int, rows: int):
    import torch

    from filters.reward.vlm_scorer import _mm_out_f32, token_logprobs

    g = torch.Generator(device="cpu").manual_seed(0)
    head = torch.nn.Linear(hidden, 151_936, bias=False)
    with torch.no_grad():
        head.weight.normal_(0, hidden ** -0.5 * 4, generator=g)
    h = torch.randn(rows, hidden, generator=g)
    target = torch.randint(0, 151_936, (rows,), generator=g)
    head = head.to(device, torch.bfloat16)
    h, target = h.to(device, torch.bfloat16), target.to(device)
    with torch.inference_mode():
        got = token_logprobs(h, target, head)
        ref = torch.log_softmax(h.double() @ head.weight.double().T, -1).gather(1, target[:, None])[:, 0]
    d = float((got.double() - ref).abs().max())
    path = "mm out_dtype=float32" if device.type == "cuda" and _mm_out_f32(device) else "upcast vocabulary slices"
    table.add("fp32 logits from a bf16 lm_head", f"{d:.2e} ({path})", "<= 1e-3", d <= 1e-3)
    del head, h
    _free(device)


def check_peak_memory(table: Table, out, model, device, dry: bool, budget: int):
    if dry:
        table.add(f"peak memory at {budget} batch tokens", "n/a on CPU", "< 90% of GPU memory", None, "dry: no GPU")
        return
    import torch

    torch.cuda.reset_peak_memory_stats(device)
    score_pass(out, model, device, batch_tokens=budget)
    peak = torch.cuda.max_memory_allocated(device)
    total = torch.cuda.get_device_properties(device).total_memory
    table.add(f"peak memory at {budget} batch tokens", f"{peak / 2**30:.2f} GiB of {total / 2**30:.0f} GiB",
              "< 90% of GPU memory", peak < 0.9 * total)


def check_ray_half_gpu(table: Table, out, model, dry: bool):
    import ray

    from filters.reward.stage import ScoreConfig, run_ray
    from pipeline.loader import ShardLoader

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    units, preset = _units(out)
    cfg = ScoreConfig(str(out), ("vlm",), model=str(model), preset=preset, overwrite=True)
    # Ray puts the driver script's folder on every worker's sys.path, ahead of PYTHONPATH: bench/ holds
    # pipeline.py, which would shadow the `pipeline` package there. Present the script as the repo's.
    argv0, sys.argv[0] = sys.argv[0], str(ROOT / "gpu_check")
    ray.init(address="local", num_gpus=1, num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
             logging_level="ERROR")
    try:
        report = run_ray(cfg, units, ShardLoader, num_gpus=0.5)
        ws = report.workers
        same_gpu = len({tuple(w["gpu_ids"]) for w in ws}) == 1
        complete = report.samples == sum(u.expected or 0 for u in units)
        shares = {w.get("memory_fraction") for w in ws}
        value = (f"{len(ws)} actors on GPU {ws[0]['gpu_ids']} ({ws[0]['device']}, memory cap {shares}), "
                 f"{report.samples} samples in {report.seconds:.1f}s")
        table.add("ray --num-gpus 0.5 on one GPU", value, "2 actors, one GPU, all scored",
                  len(ws) == 2 and same_gpu and complete and (dry or shares == {0.5}))
    except Exception as exc:  # noqa: BLE001 - an OOM or start-up failure is this check's FAIL, not a crash
        table.add("ray --num-gpus 0.5 on one GPU", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                  "2 actors, one GPU, all scored", False)
    finally:
        ray.shutdown()
        sys.argv[0] = argv0


def check_speed(table: Table, out, model, samples, device, dry: bool, budget: int, synthetic: bool):
    if not synthetic:
        table.add("samples/s vs per-sample loop", "skipped: needs the synthetic samples (no --out)", ">= 3x",
                  None, "skipped")
        return
    import transformers

    if transformers.AutoConfig.from_pretrained(model).model_type != "qwen2_vl":
        table.add("samples/s vs per-sample loop", "skipped: the reference loop is Qwen2-VL's", ">= 3x", None, "skipped")
        return
    ref_s, _, _ = reference_loop(model, samples, device)
    _free(device)
    st_s, _, desc = stage_run(out, model, device, budget, visual_gain=False)
    _free(device)
    n = len(samples)
    value = (f"{n / st_s:,.1f} vs {n / ref_s:,.1f} samples/s = {ref_s / st_s:.2f}x "
             f"({desc['dtype']}, {'packed' if desc['pack'] else 'padded'})")
    table.add("samples/s vs per-sample loop", value, ">= 3x", None if dry else ref_s / st_s >= 3,
              "dry: bar not applied on CPU")


def main(argv=None) -> int:
    import torch
    import transformers

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="CPU, tiny random model, few samples (the test suite runs this)")
    p.add_argument("--device", default=None, help="default cuda (cpu with --dry)")
    p.add_argument("--model", help="a local Qwen2-VL / Qwen2.5-VL checkpoint (default: random init)")
    p.add_argument("--config", choices=("tiny", "qwen2-vl-2b"), default=None,
                   help="random model size (default qwen2-vl-2b; tiny with --dry)")
    p.add_argument("--out", help="a prepared OUT to score (default: synthetic image+text shards)")
    p.add_argument("--samples", type=int, default=None, help="synthetic samples (default 512; 12 with --dry)")
    p.add_argument("--batch-tokens", type=int, default=32768)
    args = p.parse_args(argv)

    dry = args.dry
    device = torch.device(args.device or ("cpu" if dry else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU; run with --dry on a CPU machine", file=sys.stderr)
        return 2
    config = args.config or ("tiny" if dry else "qwen2-vl-2b")
    n = args.samples or (12 if dry else 512)
    budget = args.batch_tokens
    table = Table()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlprep-gpu-check-") as tmp:
        tmp = Path(tmp)
        out, samples = tmp / "out", []
        if args.out:  # read the given shards, write scores in the temporary copy
            src = Path(args.out)
            out.mkdir()
            shutil.copy(src / "manifest.parquet", out / "manifest.parquet")
            os.symlink((src / "shards").resolve(), out / "shards")
        else:
            samples = raw_samples(n, 112 if dry else 896)
            prepare(out, samples, per_shard=max(1, math.ceil(n / 4)))  # 4 units: work for two Ray actors
        model = Path(args.model) if args.model else build_model(config, tmp / "model", device)
        hidden = transformers.AutoConfig.from_pretrained(model).text_config.hidden_size

        steps = [
            ("flash-attn", lambda: check_flash_attn(table, device, dry)),
            ("packed vs padded scores", lambda: check_packed_vs_padded(table, out, model, device)),
            ("bf16 vs fp32 scores", lambda: check_bf16_vs_fp32(table, out, model, device)),
            ("fp32 logits from a bf16 lm_head", lambda: check_fp32_logits(table, device, hidden, 256 if dry else 2048)),
            (f"peak memory at {budget} batch tokens",
             lambda: check_peak_memory(table, out, model, device, dry, budget)),
            ("samples/s vs per-sample loop",
             lambda: check_speed(table, out, model, samples, device, dry, min(budget, 4096) if dry else budget,
                                 not args.out)),
            ("ray --num-gpus 0.5 on one GPU", lambda: check_ray_half_gpu(table, out, model, dry)),
        ]
        for check, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - one failing check must not hide the others
                traceback.print_exc()
                table.add(check, f"{type(exc).__name__}: {exc}".splitlines()[0][:200], "", False)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    table.print(f"vlprep gpu check{' (dry)' if dry else ''}: {name}; torch {torch.__version__}, transformers "
                f"{transformers.__version__}, flash-attn {_version('flash-attn') or 'absent'}, accelerate "
                f"{_version('accelerate') or 'absent'}; model {args.model or config + ' (random init)'}; data "
                f"{args.out or f'{n} synthetic image+text samples'}; {time.perf_counter() - t0:.0f}s")
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
