"""`vlprep encode`: encode a few conversations in-process (no Ray) and show what the model will see."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from jobs.cli import positive_int

HELP = "encode records of a json/jsonl file in-process and print tokens, grids and the ChatML text"
DESCRIPTION = """Encode records of one json/jsonl file without Ray and print, per record, its token counts,
image/video grids and (with --show-text) the decoded ChatML. Useful to check a format, a preset or a
grounding conversion before running `vlprep prepare` on the whole corpus.

example:
  vlprep encode data.jsonl --media-root images/ --preset qwen2-vl --limit 3 --show-text
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="a .json (list of records) or .jsonl file")
    p.add_argument("--media-root", type=Path, default=None, help="folder the records' media paths are relative to (default: the file's folder)")
    p.add_argument("--preset", default="qwen2.5-vl", help="qwen2.5-vl (default), qwen2-vl, qwen-vl, qwen3-vl (also qwen3-vl-tf5, qwen3-vl-qvu)")
    p.add_argument("--format", default="auto", help="input format: auto, llava, sharegpt, llamafactory, qwen, openai")
    p.add_argument("--grounding-format", default=None, help="format of boxes in the source text (qwen2-vl, qwen2.5-vl, qwen-vl), re-rendered for the preset")
    p.add_argument("--limit", type=positive_int, default=10, help="encode at most this many records (default 10)")
    p.add_argument("--show-text", action="store_true", help="print the decoded ChatML of each record")


def _records(path: Path):
    if path.suffix == ".jsonl":
        for i, line in enumerate(path.read_text().splitlines()):
            if line.strip():
                try:
                    yield i, json.loads(line), None
                except json.JSONDecodeError as exc:
                    yield i, None, f"line {i + 1}: {exc}"
    else:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            from processors.errors import UserInputError

            raise UserInputError(f"{path} is not valid JSON ({exc}); a .json file holds a list of records, a "
                                 f".jsonl file one record per line") from None
        for i, rec in enumerate(data if isinstance(data, list) else [data]):
            yield i, rec, None


def _check_tokenizer(tokenizer, preset) -> None:
    """Every special token the preset needs, once before any record: one line, exit 2."""
    from processors.errors import UserInputError, VlprepError
    from processors.tokenizer import special_ids

    try:
        special_ids(tokenizer, preset)
    except VlprepError as exc:
        raise UserInputError(f"tokenizer: {exc}") from None


def run(args) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from processors import EncodeOptions, encode_sample, get_preset, get_tokenizer, parse_record
    from processors.errors import UserInputError, VlprepError, did_you_mean
    from processors.formats import FORMATS

    if not args.file.is_file():
        raise UserInputError(f"{args.file} {'is a folder' if args.file.is_dir() else 'does not exist'}; give a .json "
                             f"(a list of records) or .jsonl (one record per line) file")
    if args.media_root is not None and not args.media_root.is_dir():
        raise UserInputError(f"--media-root {args.media_root} is not a folder; give the folder the records' media "
                             f"paths are relative to")
    if args.format not in FORMATS:
        raise UserInputError(f"--format {args.format!r} is unknown{did_you_mean(args.format, FORMATS)}; choose one of "
                             f"{', '.join(FORMATS)}")
    if args.grounding_format is not None:
        from processors.grounding import _fmt_name
        from processors.errors import GroundingError

        try:
            _fmt_name(args.grounding_format)   # once here, not as an error on every record
        except GroundingError as exc:
            raise UserInputError(f"--grounding-format: {exc}") from None
    preset = get_preset(args.preset)
    tokenizer = get_tokenizer(preset=preset)
    _check_tokenizer(tokenizer, preset)
    media_root = args.media_root or args.file.parent
    options = EncodeOptions(grounding_format=args.grounding_format)
    console = Console()
    table = Table(title=escape(f"{args.file.name} · preset {preset.name}"))
    for col in ("#", "id", "tokens", "text", "image", "video", "supervised", "grids", "status"):
        table.add_column(col, justify="right" if col in ("#", "tokens", "text", "image", "video", "supervised") else "left")
    failures = 0
    errors: list[str] = []
    for n, (i, rec, err) in enumerate(_records(args.file)):
        if n >= args.limit:
            break
        if err:
            failures += 1
            table.add_row(str(i), "-", "", "", "", "", "", "", "[red]error")
            errors.append(f"#{i} broken JSON: {err}")
            continue
        try:
            sample = parse_record(rec, source=str(args.file), index=i, fmt=args.format)
            enc = encode_sample(sample, preset, media_root=media_root, options=options, tokenizer=tokenizer)
        except VlprepError as exc:
            failures += 1
            code = getattr(exc, "code", type(exc).__name__)
            table.add_row(str(i), "-", "", "", "", "", "", "", f"[red]{escape(code)}")
            errors.append(f"#{i} {code}: {exc}")
            continue
        m = enc.meta
        grids = " ".join("x".join(map(str, g)) for g in enc.image_grid_thw.tolist() + enc.video_grid_thw.tolist())
        table.add_row(str(i), escape(enc.id), str(m["n_tokens"]), str(m["n_text_tokens"]), str(m["n_image_tokens"]),
                      str(m["n_video_tokens"]), str(m["n_supervised_tokens"]), grids, "[green]ok")
        if args.show_text:
            from jobs.inspect import readable_text

            console.rule(escape(f"{enc.id}"))
            console.print(readable_text(tokenizer.decode(enc.input_ids.tolist())), markup=False, highlight=False)
    console.print(table)
    for line in errors:
        console.print(f"[red]{escape(line)}", soft_wrap=True)
    return 1 if failures and failures == min(args.limit, n + 1) else 0
