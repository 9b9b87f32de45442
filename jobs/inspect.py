"""`vlprep inspect OUT [--id ID]`: show one prepared sample as the model will see it."""
from __future__ import annotations

import json
import re
import sys

HELP = "print a prepared sample: its ChatML text (decoded), token counts, grids and shapes"
DESCRIPTION = """\
Print one sample of a `vlprep prepare` output: the decoded ChatML text (runs of <|image_pad|> /
<|video_pad|> shortened to one marker with a count), supervised spans, token counts, grids, tensor
shapes and meta. Without --id, the first sample of the manifest.

examples:
  vlprep inspect prepared/
  vlprep inspect prepared/ --id llava-000123 --json
"""

_PAD_RUN = re.compile(r"(<\|(?:image|video)_pad\|>|<imgpad>)(?:\1)+")


def readable_text(text: str) -> str:
    """Decoded ChatML with every run of pad tokens shortened to one marker and its count
    (`<|image_pad|>×256`): the one renderer of `vlprep inspect` and `vlprep encode --show-text`."""
    return _PAD_RUN.sub(lambda m: f"{m.group(1)}×{len(m.group(0)) // len(m.group(1))}", text)


def add_arguments(p) -> None:
    p.add_argument("out", help="output directory of `vlprep prepare`")
    p.add_argument("--id", help="sample id (default: the first kept sample)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def describe(sample: dict, tokenizer) -> dict:
    ids = sample["input_ids"].tolist()
    labels = sample["labels"]
    text = readable_text(tokenizer.decode(ids))
    supervised = tokenizer.decode([i for i, lab in zip(ids, labels.tolist()) if lab != -100])
    meta = sample["meta"]
    return {
        "id": sample["id"],
        "text": text,
        "supervised_text": supervised,
        "tokens": {k: meta.get(k) for k in ("n_tokens", "n_text_tokens", "n_image_tokens", "n_video_tokens",
                                            "n_supervised_tokens")},
        "image_grid_thw": sample["image_grid_thw"].tolist(),
        "video_grid_thw": sample["video_grid_thw"].tolist(),
        "second_per_grid_ts": sample["second_per_grid_ts"].tolist(),
        "shapes": {k: [list(v.shape), str(v.dtype)] for k, v in sample.items() if hasattr(v, "shape")},
        "meta": {k: v for k, v in meta.items() if k not in ("id",)},
    }


def run(args) -> int:
    from pipeline.loader import ShardLoader
    from processors.tokenizer import get_tokenizer

    try:
        loader = ShardLoader(args.out)
        ids = loader.ids()
        if not ids:
            print(f"vlprep inspect: {args.out} has no kept samples (see ledger.parquet)", file=sys.stderr)
            return 1
        sample = loader.get(args.id or ids[0])
    except KeyError as exc:
        rows = ledger_rows(args.out, args.id) if args.id else []
        if not rows:
            print(f"vlprep inspect: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2   # an --id that is neither kept nor in the ledger: a user mistake
        return print_ledger_rows(rows, args.json)
    except FileNotFoundError as exc:   # OUT is not a `vlprep prepare` output
        print(f"vlprep inspect: {exc}", file=sys.stderr)
        return 2
    preset = sample["meta"].get("preset")
    info = describe(sample, get_tokenizer(preset=preset))
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console()
    con.rule(escape(f"sample {info['id']}  ({sample['meta'].get('source')} #{sample['meta'].get('record_index')}, "
                    f"{preset})"))
    con.print(info["text"], markup=False, highlight=False)
    con.rule("supervised")
    con.print(info["supervised_text"], markup=False, highlight=False)
    t = Table(show_header=True)
    t.add_column("tensor")
    t.add_column("shape")
    t.add_column("dtype")
    for k, (shape, dtype) in info["shapes"].items():
        t.add_row(k, str(tuple(shape)), dtype)
    con.print(t)
    con.print("tokens:", info["tokens"])
    con.print("image_grid_thw:", info["image_grid_thw"], " video_grid_thw:", info["video_grid_thw"],
              " second_per_grid_ts:", info["second_per_grid_ts"])
    return 0


def ledger_rows(out, sample_id: str) -> list[dict]:
    """The ledger rows of `sample_id` (a dropped or failed record has no shard sample, only these)."""
    from pathlib import Path

    from pipeline.io import read_ledger

    if not (Path(out) / "ledger.parquet").exists():
        return []
    ledger = read_ledger(Path(out))
    ids = ledger.column("id").to_pylist()
    return [ledger.slice(i, 1).to_pylist()[0] for i, x in enumerate(ids) if x == sample_id]


def print_ledger_rows(rows: list[dict], as_json: bool) -> int:
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
        return 0
    for r in rows:
        print(f"sample {r['id']} is not in the shards: {r['status']} at {r['stage']}/{r['rule'] or '-'} "
              f"({r['source']} #{r['record_index']})")
        for k, v in r.items():
            if k not in ("id",) and v is not None and v != "":
                print(f"  {k:>12}: {v}")
    return 0
