"""`vlprep score OUT`: run scorers over the prepared shards -> OUT/scores/{unit}.parquet."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from jobs.cli import positive_int
from pipeline.score_inputs import shards_tokenizer, units_from_manifest

INTERRUPTED = "the units already scored are kept in OUT/scores; run the same command again to resume"
HELP = "score prepared shards with models (text, pixels, vlm) on GPUs or CPU; writes OUT/scores/{unit}.parquet"
DESCRIPTION = """Score every kept sample of a prepared output directory without decoding any media again.

Scorers (columns are `{scorer}.{signal}`, float64 but the labels, one row per sample; docs/scoring.md):
  text    question/answer relevance, informativeness, lexical diversity (bundled MiniLM, offline)
  pixels  blank share, luminance std, sharpness, brightness, clipping (from the uint8 patches, on device)
  vlm     answer mean log-prob, text-only log-prob, visual gain [, reward] (needs --model PATH)
  category  coarse/fine category labels (strings) + confidences, zero-shot against a taxonomy (--taxonomy)
  vlm_category  the same labels from a checkpoint: log-prob of each category name (needs --model)
  grounding  box_margin / box_rank: the given box vs perturbed boxes (needs --model)
  query   question log-prob and its visual relevance (needs --model)
The checkpoint scorers (vlm, vlm_category, grounding, query) share one loaded model per worker.

Finished units are skipped, so an interrupted run resumes; adding a scorer later adds its columns.

examples:
  vlprep score out/
  vlprep score out/ --model /models/Qwen2-VL-2B-Instruct --batch-tokens 32768
  vlprep score out/ --model ckpt/ --scorers vlm --address auto --num-gpus 0.5
"""


def add_arguments(p) -> None:
    p.add_argument("out_dir", help="output directory of `vlprep prepare`")
    p.add_argument("--model", help="local Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint folder (enables the vlm scorer)")
    p.add_argument("--scorers", help="comma list of text,pixels,vlm,category,vlm_category,grounding,query "
                   "(default: text,pixels, plus vlm with --model)")
    p.add_argument("--batch-tokens", type=positive_int, default=16384, help="padded tokens per batch (default 16384)")
    p.add_argument("--max-padding", type=float, default=0.10, help="padding cap per batch (default 0.10)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="compute dtype (auto: bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on CPU)")
    p.add_argument("--pack", choices=("auto", "on", "off"), default="auto",
                   help="vlm: packed variable-length rows (auto: when FlashAttention-2 is installed)")
    p.add_argument("--executor", choices=("auto", "local", "ray"), default="auto",
                   help="auto: Ray when --address is given or more than one GPU is visible, else in-process")
    p.add_argument("--address", help="Ray cluster address (e.g. auto, ray://host:10001)")
    p.add_argument("--num-gpus", type=float, default=1.0,
                   help="one Ray actor's share of a GPU, in (0, 1]: 0.5 = two actors per GPU (default 1)")
    p.add_argument("--workers", type=positive_int, help="Ray CPU actors when the cluster has no GPU (default 1)")
    p.add_argument("--taxonomy", help="category scorer: taxonomy YAML (default: the bundled one, docs/curation.md)")
    p.add_argument("--text-model", help="sentence-transformers folder for the text scorer (default: bundled)")
    p.add_argument("--no-visual-gain", dest="visual_gain", action="store_false",
                   help="vlm: skip the text-only pass (no vlm.text_only_logprob / vlm.visual_gain; ~2x faster)")
    p.add_argument("--tokenizer", help="tokenizer folder the shards were prepared with (default: OUT/job.json's "
                   "`tokenizer:`, else the built-in Qwen2 ranks)")
    p.add_argument("--overwrite", action="store_true", help="re-score units that already have scores")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (on a terminal) or progress lines (in a log, every 30 s)")


def _use_ray(args) -> bool:
    if args.executor != "auto":
        return args.executor == "ray"
    if args.address:
        return True
    import torch

    return args.device in ("auto", "cuda") and torch.cuda.device_count() > 1


def run(args) -> int:
    from filters.reward.protocol import ScorerError
    from filters.reward.stage import MODEL_SCORERS, ScoreConfig, check_num_gpus, pending, run_local, run_ray
    from filters.reward.vlm_scorer import check_model_on_driver
    from pipeline.loader import ShardLoader  # filters never import pipeline: the job hands the reader in
    from pipeline.cluster import check_ray_address, ray_connection
    from pipeline.progress import progress_count, progress_mode, quiet_library_bars

    out = Path(args.out_dir)
    scorers = ([s.strip() for s in args.scorers.split(",") if s.strip()] if args.scorers
               else ["text", "pixels"] + (["vlm"] if args.model else []))
    try:
        units, preset = units_from_manifest(out)
        tokenizer = shards_tokenizer(out, args.tokenizer, preset)
        cfg = ScoreConfig(str(out), tuple(scorers), model=args.model, preset=preset, batch_tokens=args.batch_tokens,
                          max_padding=args.max_padding, device=args.device, dtype=args.dtype, pack=args.pack,
                          text_model=args.text_model, overwrite=args.overwrite, visual_gain=args.visual_gain,
                          taxonomy=args.taxonomy, tokenizer=tokenizer)
        if set(MODEL_SCORERS) & set(cfg.scorers):   # a wrong --model: one line before anything is printed
            check_model_on_driver(cfg.model, args.address)
        check_num_gpus(args.num_gpus)
        check_ray_address(args.address)   # nothing listening there: one line now, not a minute's wait
        if {"category", "vlm_category"} & set(cfg.scorers):  # a bad taxonomy file fails here, not inside a worker
            from filters.reward.taxonomy import load_taxonomy

            load_taxonomy(cfg.taxonomy)
    except (ScorerError, FileNotFoundError, ValueError) as exc:
        print(f"vlprep score: {exc}", file=sys.stderr)
        return 2
    # a log file: no library progress bars (model loading) either
    quiet_library_bars(bool({"text", "category", *MODEL_SCORERS} & set(scorers)))
    todo = pending(cfg, units)
    total = sum(u.expected or 0 for u in todo)
    print(f"scoring {len(todo)} of {len(units)} units ({total} samples) with {', '.join(scorers)}; "
          f"{len(units) - len(todo)} already scored")
    if not todo:
        return 0
    t0 = time.perf_counter()
    tokens = [0]
    try:
        with progress_count("score", total, progress_mode(args.no_progress), unit="samples") as bar:
            def progress(n_samples: int, n_tokens: int) -> None:
                tokens[0] += n_tokens
                bar.advance(n_samples, f"{tokens[0] / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s")

            with ray_connection(args.address):   # ray.init: something answers at --address, but no Ray cluster
                if _use_ray(args):
                    report = run_ray(cfg, units, ShardLoader, address=args.address, num_gpus=args.num_gpus,
                                     workers=args.workers, progress=progress)
                else:
                    report = run_local(cfg, units, ShardLoader, progress=progress)
    except ScorerError as exc:
        print(f"vlprep score: {exc}", file=sys.stderr)
        return 2
    secs = max(report.seconds, 1e-9)
    for w in report.workers[:1]:
        for warning in w["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"device {w['device']} ({w['dtype']}, {'packed' if w['pack'] else 'padded'} batches) "
              f"x{len(report.workers)}; columns: {', '.join(w['columns'])}")
    print(f"scored {report.samples} samples in {report.seconds:.1f}s: {report.samples / secs:,.1f} samples/s, "
          f"{report.tokens / secs:,.0f} tokens/s, padding {100 * report.padding_share:.1f}% of batch tokens")
    print(f"wrote {out / 'scores'}/{{unit}}.parquet")
    return 0
