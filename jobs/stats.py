"""`vlprep stats`: numbers and plots about a dataset, before (pre-flight) or after `vlprep prepare`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from jobs.cli import positive_int

EXECUTORS = ("ray", "threads", "local")
HELP = "report samples, tokens, media, drops and scores (raw corpus pre-flight or prepared OUT dir)"
DESCRIPTION = """\
Report on a dataset, as a terminal summary, OUT/stats.json and a self-contained OUT/report.html.

  vlprep stats OUT/                      a `vlprep prepare` output: kept/dropped/errors by rule,
                                         tokens, sizes before/after resize, videos, boxes, sources,
                                         score distributions and what each decile threshold keeps
  vlprep stats corpus.yaml               pre-flight of a raw corpus (config YAML, json/jsonl/parquet
  vlprep stats data.jsonl --preset qwen2-vl   file or media folder): predicted tokens per sample from
                                         media headers only, share over max_length, missing media
  vlprep stats --compare A B             two runs (OUT dirs, corpora or stats.json files) side by side

A pre-flight runs like `vlprep prepare`: on an embedded local Ray by default (--workers N CPUs),
or on an existing cluster with --address auto|ray://host:10001 (every node must see the sources
and media at the same paths); each Ray task evaluates one work unit (`unit_size` records, see
--set unit_size=N) and reads its own records. --executor threads evaluates in this process on a
thread pool (no Ray start-up: quicker on small corpora); --executor local runs the work units one
after another in this process (debugging). The report is the same whichever runs it.
"""


def add_arguments(p) -> None:
    p.add_argument("path", nargs="?", help="prepare OUT dir, config YAML, json/jsonl/parquet file or folder")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two runs instead")
    p.add_argument("--out", help="folder for stats.json and report.html (default: PATH if it is an OUT dir, "
                                 "else ./stats_out)")
    p.add_argument("--json", action="store_true", help="print stats.json to stdout instead of the tables")
    p.add_argument("--no-html", action="store_true", help="skip report.html (and the plots)")
    g = p.add_argument_group("pre-flight (raw corpus)")
    g.add_argument("--preset", help="qwen2.5-vl (default), qwen2-vl, qwen-vl, qwen3-vl (also qwen3-vl-tf5, "
                                        "qwen3-vl-qvu); overrides the config's")
    g.add_argument("--max-length", type=int, help="count samples whose total tokens exceed this")
    g.add_argument("--min-pixels", type=int, help="image pixel band lower bound (default: the preset's)")
    g.add_argument("--max-pixels", type=int, help="image pixel band upper bound (default: the preset's)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as for `vlprep prepare` (repeatable)")
    g.add_argument("--executor", choices=EXECUTORS, default="ray",
                   help="ray (default): work units as Ray tasks; threads: a thread pool in this process; "
                        "local: work units one after another in this process")
    g.add_argument("--address", help="Ray cluster to use: auto | ray://host:port (default: embedded local Ray)")
    g.add_argument("--workers", type=positive_int,
                   help="ray: CPUs of the embedded local Ray (default: all); threads: threads reading media "
                        "headers (default: 4 x CPUs, max 32); local: ignored")
    g.add_argument("--limit", type=positive_int, help="only the first N records")
    g.add_argument("--fast", action="store_true",
                   help="header facts cached per file and the job's filters/format checks skipped "
                        "(token predictions unchanged; use on corpora that reference files many times)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar (on a terminal) or progress lines (in a log, every 30 s)")


def _preflight_kwargs(args) -> dict:
    from pipeline.progress import progress_mode

    return {"preset": args.preset, "overrides": args.overrides, "max_length": args.max_length,
            "min_pixels": args.min_pixels, "max_pixels": args.max_pixels, "workers": args.workers,
            "limit": args.limit, "use_stages": not args.fast, "executor": args.executor, "address": args.address,
            "progress": progress_mode(args.no_progress)}


def _out_dir(args, path: Path | None) -> Path:
    from pipeline.report.tables import is_prepared_dir

    if args.out:
        return Path(args.out)
    if path is not None and is_prepared_dir(path):
        return path
    return Path("stats_out")


def run(args) -> int:
    from pipeline.report import build_report
    from processors.errors import UserInputError
    from pipeline.report.html import render_compare, render_report

    if bool(args.compare) == bool(args.path):
        print("vlprep stats: give either PATH or --compare A B", file=sys.stderr)
        return 2
    try:
        if args.compare:
            from pipeline.report.compare import compare_stats, load_side

            a, b = (load_side(p, **_preflight_kwargs(args)) for p in args.compare)
            doc = compare_stats(a.stats, b.stats, tuple(args.compare))
            out = _out_dir(args, None)
            figs = None if args.no_html else _figs(lambda f: f.compare_figures(a, b, tuple(args.compare)))
            html_text = None if args.no_html else render_compare(doc, figs)
        else:
            path = Path(args.path)
            report = build_report(path, **_preflight_kwargs(args)) if not _is_out(path) else build_report(path)
            doc = report.stats
            out = _out_dir(args, path)
            figs = None if args.no_html else _figs(lambda f: f.all_figures(report))
            html_text = None if args.no_html else render_report(doc, figs)
    except UserInputError:
        raise   # a config key, a preset name, a PATH not reportable (ReportInputError): one line, exit 2 (jobs.cli)
    except (ValueError, FileNotFoundError) as exc:
        print(f"vlprep stats: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:  # --address names no reachable Ray cluster
        print(f"vlprep stats: cannot reach the Ray cluster at {args.address}: {exc}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, allow_nan=False, default=str)
    (out / "stats.json").write_text(text + "\n")
    if html_text is not None:
        (out / "report.html").write_text(html_text, encoding="utf-8")
    if args.json:
        print(text)
        return 0
    from pipeline.report.terminal import print_compare, print_report

    (print_compare if args.compare else print_report)(doc)
    print(f"wrote {out / 'stats.json'}" + ("" if html_text is None else f" and {out / 'report.html'}"))
    if doc.get("kind") == "prepared" and not doc["accounting"]["balanced"]:
        return 3  # a broken ledger must fail scripts that check the exit status
    if doc.get("failed_units"):
        for u in doc["failed_units"]:
            print(f"vlprep stats: work unit {u['unit']} (records {u['start']}..{u['stop'] - 1} of {u['source']}) "
                  f"failed: {u['error']}", file=sys.stderr)
        return 4  # its records are error rows (rule unit_failed): the predictions are incomplete
    return 0


def _is_out(path: Path) -> bool:
    from pipeline.report.tables import is_prepared_dir

    return is_prepared_dir(path)


def _figs(make):
    from pipeline.report import figures

    return make(figures)
