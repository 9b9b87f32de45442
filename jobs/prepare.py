"""`vlprep prepare CONFIG.yaml`: read, clean, filter, encode and shard a raw corpus."""
from __future__ import annotations

from jobs.cli import positive_int

INTERRUPTED = ("the work units already finished are kept in OUT; run the same command again to resume "
               "(or add --overwrite to start over)")

HELP = "read a raw corpus, clean + filter it, encode every kept sample into shards + manifest + ledger"
DESCRIPTION = """\
Read the sources of CONFIG.yaml, clean and filter every record, encode the kept samples into
model-ready tensors and write OUT/shards/*.tar, OUT/manifest.parquet (kept samples) and
OUT/ledger.parquet (one row per input record: kept / dropped / error, with stage and reason).

Runs on an embedded local Ray by default (--workers N CPUs), or on an existing cluster with
--address auto|ray://host:10001 (every node must see the sources and OUT at the same paths).
A re-run skips finished units; a killed job resumes where it stopped, with identical output.

examples:
  vlprep prepare job.yaml --out prepared/
  vlprep prepare job.yaml --set max_length=4096 --set dedup.phash=true --workers 8
  vlprep prepare job.yaml --set sources.0.media_root=/data/images --overwrite
"""


def add_arguments(p) -> None:
    p.add_argument("config", help="job YAML (sources, preset, filters, ...; see docs/pipeline.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, value parsed as YAML (repeatable), e.g. --set video.fps=1")
    p.add_argument("--out", help="output directory (default: `out` in the config)")
    p.add_argument("--address", help="Ray cluster to use: auto | ray://host:port (default: embedded local Ray)")
    p.add_argument("--workers", type=positive_int, help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--overwrite", action="store_true", help="delete previous outputs in OUT and start again")
    p.add_argument("--executor", choices=("ray", "local", "process"), default="ray",
                   help="ray (default); local = in-process loop, for debugging; process = a local process "
                        "pool (--workers processes, no Ray)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (on a terminal) or progress lines (in a log, every 30 s)")


def run(args) -> int:
    from pipeline.config import JobConfig
    from pipeline.progress import progress_mode, render_summary
    from pipeline.runner import run_job

    cfg = JobConfig.from_yaml(args.config, args.overrides)   # ConfigError: one line, exit 2 (jobs.cli)
    result = run_job(cfg, out=args.out, address=args.address, workers=args.workers,
                     overwrite=args.overwrite, executor=args.executor,
                     progress=progress_mode(args.no_progress))
    render_summary(result)
    return 0 if result.ok else 1
