"""`vlprep` command line: thin dispatch to one module per subcommand.

Each subcommand module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "prepare": "jobs.prepare",
    "demo": "jobs.demo",
    "encode": "jobs.encode",
    "inspect": "jobs.inspect",
    "score": "jobs.score",
    "select": "jobs.select",
    "stats": "jobs.stats",
    "verify": "jobs.verify",
}


def _available():
    for name, modname in SUBCOMMANDS.items():
        try:
            yield name, importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlprep",
        description="Prepare image/video + text corpora for Qwen-VL family training: clean, filter, "
        "smart-resize, patchify, sample video with absolute-time ids, build ChatML with labels and "
        "M-RoPE ids, write sharded tensors; score them with a model stage; report statistics.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _available():
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
