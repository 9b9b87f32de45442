"""`vlprep pack OUT --max-tokens N`: an offline pack plan for packed training, next to the manifest.

Reads only the manifest (no shard is opened), packs each shard's samples window by window with
best-fit-decreasing, writes OUT/packs.parquet (OUT/selection/packs.parquet with --selection) and
prints the fill rate. Train from it with `ShardDataset(OUT, pack_plan=True)`.
"""
from __future__ import annotations

import sys
from pathlib import Path

HELP = "plan packed sequences of at most --max-tokens tokens; writes OUT/packs.parquet and prints the fill rate"
DESCRIPTION = """Plan packed training sequences (best-fit decreasing, deterministic).

Packs never cut a sample and never cross a shard or a window of --window consecutive samples, so
the training loader replays the plan while streaming the shards. A sample longer than --max-tokens
is left out of every pack (listed with pack = -1) and counted here.

examples:
  vlprep pack out/ --max-tokens 16384
  vlprep pack out/ --max-tokens 8192 --selection      # plan what `vlprep select` kept
"""


def add_arguments(p) -> None:
    p.add_argument("out_dir", help="output directory of `vlprep prepare`")
    p.add_argument("--max-tokens", type=int, required=True, help="tokens per packed sequence (e.g. 16384)")
    p.add_argument("--window", type=int, default=256,
                   help="samples per packing window (the loader holds one window in memory; default 256)")
    p.add_argument("--selection", action="store_true", help="pack OUT/selection/manifest.parquet (vlprep select)")


def run(args) -> int:
    import pyarrow.parquet as pq

    from pipeline.packing import build_plan, manifest_digest, write_plan

    out = Path(args.out_dir)
    manifest = out / ("selection/manifest.parquet" if args.selection else "manifest.parquet")
    if args.max_tokens < 1 or args.window < 1:
        print("vlprep pack: --max-tokens and --window must be positive whole numbers", file=sys.stderr)
        return 2
    if not manifest.exists():
        hint = "run `vlprep select` first" if args.selection else "run `vlprep prepare` first"
        print(f"vlprep pack: {manifest} not found; {hint}", file=sys.stderr)
        return 2
    table = pq.read_table(manifest, columns=["id", "shard", "n_tokens"])
    plan, stats = build_plan(table, args.max_tokens, args.window)
    path = write_plan(out, plan, source="selection" if args.selection else "manifest",
                      digest=manifest_digest(table), max_tokens=args.max_tokens, window=args.window)
    print(f"packed {stats.samples} samples ({stats.tokens} tokens) into {stats.packs} sequences of ≤ {args.max_tokens} "
          f"tokens: fill {100 * stats.fill:.2f} %")
    if stats.too_long:
        print(f"left out {len(stats.too_long)} samples longer than {args.max_tokens} tokens "
              f"(e.g. {', '.join(stats.too_long[:3])}); raise --max-tokens to keep them")
    print(f"wrote {path}")
    return 0
