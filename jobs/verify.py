"""`vlprep verify OUT --model PATH`: a checkpoint answers every sample's question; its answer is
checked against the reference -> verify.* columns in OUT/scores/{unit}.parquet (usable in select)."""
from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

from jobs.cli import positive_int

HELP = "answer each sample with a checkpoint and check the reference (rejection sampling); adds verify.* scores"
DESCRIPTION = """Verify reference answers with a model (greedy generation from the prepared shards).

Every supervised assistant turn is answered by the checkpoint (the conversation up to it as the prompt,
earlier reference answers as history); a checker chosen from the reference -- box IoU, multiple-choice
letter, number, normalised text -- says whether the model's answer confirms it
(filters/reward/answer_check.py, docs/curation.md).
Columns: verify.match (1 = every checked answer confirmed, 0 = not, NaN = nothing to check: passes a rule),
verify.turns, verify.turns_matched, verify.value, verify.kind, verify.answer (the first answer),
verify.answers (JSON, one object per turn).
Engine: vLLM (`LLM.generate`) when it is installed and a GPU is used, else transformers `generate`.
Finished units are skipped; --overwrite re-runs them.

examples:
  vlprep verify out/ --model /models/Qwen2.5-VL-7B-Instruct
  vlprep verify out/ --model /models/Qwen2.5-VL-7B-Instruct --engine transformers
  vlprep select out/ --rule "verify.match == 1" --rule "verify.turns >= 1"
"""


def add_arguments(p) -> None:
    p.add_argument("out_dir", help="output directory of `vlprep prepare`")
    p.add_argument("--model", required=True, help="local Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint folder")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="greedy answer length (default 128)")
    p.add_argument("--iou", type=float, default=0.5, help="box answers match at IoU >= this (default 0.5)")
    p.add_argument("--batch-tokens", type=positive_int, default=16384, help="padded prompt tokens per batch (default 16384)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1 ...")
    p.add_argument("--address", help="Ray cluster address: one actor per --num-gpus share of every GPU")
    p.add_argument("--num-gpus", type=float, default=1.0,
                   help="one Ray actor's share of a GPU, in (0, 1]: 0.5 = two actors per GPU (default 1)")
    p.add_argument("--tokenizer", help="tokenizer folder the shards were prepared with (default: OUT/job.json's "
                   "`tokenizer:`, else the built-in Qwen2 ranks)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="compute dtype, as `vlprep score` (auto: bf16 on GPUs with native bf16, fp16 on older GPUs, "
                   "fp32 on CPU)")
    p.add_argument("--engine", default="auto", choices=("auto", "vllm", "transformers"),
                   help="generation engine: auto (vllm when installed and on a GPU, else transformers)")
    p.add_argument("--overwrite", action="store_true", help="re-verify units that already have verify.* columns")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (on a terminal) or progress lines (in a log, every 30 s)")


def run(args) -> int:
    import pyarrow.parquet as pq

    from filters.reward.protocol import ScorerError, resolve_device
    from filters.reward.stage import check_num_gpus, pending, run_local, run_ray, scores_path
    from filters.reward.verify import resolve_engine, verify_config
    from filters.reward.vlm_scorer import check_model_on_driver
    from pipeline.cluster import check_ray_address, ray_connection
    from pipeline.progress import progress_count, progress_mode, quiet_library_bars
    from pipeline.score_inputs import shards_tokenizer, units_from_manifest
    from pipeline.loader import ShardLoader

    out = Path(args.out_dir)
    try:
        if not 0 < args.iou <= 1:
            raise ValueError(f"--iou must be in (0, 1], got {args.iou}")
        check_num_gpus(args.num_gpus)
        check_ray_address(args.address)   # nothing listening there: one line now, not a minute's wait
        units, preset = units_from_manifest(out)
        cfg = verify_config(str(out), engine=args.engine, model=args.model, preset=preset,
                            batch_tokens=args.batch_tokens, device=args.device, dtype=args.dtype, overwrite=args.overwrite,
                            max_new_tokens=args.max_new_tokens, iou_threshold=args.iou,
                            tokenizer=shards_tokenizer(out, args.tokenizer, preset))
        check_model_on_driver(args.model, args.address)  # a wrong --model: one line, before anything is printed
        if not args.address:  # a vllm that is asked for but missing fails here (Ray workers: at start-up)
            engine = resolve_engine(args.engine, resolve_device(args.device))
            print(f"engine: {engine}")
    except (ScorerError, FileNotFoundError, ValueError) as exc:
        print(f"vlprep verify: {exc}", file=sys.stderr)
        return 2
    quiet_library_bars(transformers=True)   # a log file: no model-loading bars either
    todo = pending(cfg, units)
    total = sum(u.expected or 0 for u in todo)
    print(f"verifying {len(todo)} of {len(units)} units ({total} samples); "
          f"{len(units) - len(todo)} already verified")
    t0 = time.perf_counter()
    try:
        with progress_count("verify", total, progress_mode(args.no_progress or not todo), unit="samples") as bar, \
                ray_connection(args.address):   # ray.init: something answers at --address, but no Ray cluster
            def progress(n_samples: int, n_tokens: int) -> None:
                bar.advance(n_samples)

            if args.address:
                report = run_ray(cfg, units, ShardLoader, address=args.address, num_gpus=args.num_gpus,
                                 progress=progress)
            else:
                report = run_local(cfg, units, ShardLoader, progress=progress)
    except ScorerError as exc:
        print(f"vlprep verify: {exc}", file=sys.stderr)
        return 2
    secs = max(time.perf_counter() - t0, 1e-9)
    if report.samples:
        print(f"verified {report.samples} samples in {secs:.1f}s ({report.samples / secs:,.2f} samples/s)")
    kinds, matched = Counter(), Counter()
    for f in [scores_path(out, u.unit) for u in units]:  # this manifest's units, not stray files
        if not f.exists() or not {"verify.kind", "verify.match"} <= set(pq.read_schema(f).names):
            continue
        t = pq.read_table(f, columns=["verify.kind", "verify.match"])
        for k, m in zip(t.column("verify.kind").to_pylist(), t.column("verify.match").to_pylist()):
            kinds[k or "(no answer)"] += 1
            matched[k or "(no answer)"] += int(m == 1.0)
    for k, n in sorted(kinds.items()):
        print(f"  {k:<12} {n:>8} samples, {matched[k]:>8} confirmed ({matched[k] / n:.1%})")
    print(f"wrote verify.* columns to {out / 'scores'}/{{unit}}.parquet; keep confirmed samples with "
          f"`vlprep select {out} --rule \"verify.match == 1\" --rule \"verify.turns >= 1\"`")
    return 0
