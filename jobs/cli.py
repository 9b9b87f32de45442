"""`vlprep` command line: thin dispatch to one module per subcommand.

Each subcommand module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`,
and may say in `INTERRUPTED` what a Ctrl-C leaves behind. User mistakes (processors.errors.
UserInputError: a config key, a preset name, an option value) end every command the same way:
one line `vlprep COMMAND: message` on stderr, exit 2; Ctrl-C: one line, exit 130.
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
    "pack": "jobs.pack",
    "verify": "jobs.verify",
}


EPILOG = """\
first run (a generated demo corpus; no network, no GPU):
  vlprep demo demo_out/corpus                                          # corpus + demo.yaml
  vlprep prepare demo_out/corpus/demo.yaml --out demo_out/prepared     # shards, manifest, ledger
  vlprep score demo_out/prepared                                       # text + pixel scores
  vlprep stats demo_out/prepared                                       # tables, stats.json, report.html
  vlprep inspect demo_out/prepared                                     # one sample, decoded

vlprep COMMAND --help explains a command, its inputs, outputs and defaults. A wrong setting stops
a command before it runs with one line (exit 2). Docs: README.md, docs/pipeline.md (config keys).
"""


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
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _available():
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _module=module)
    return parser


class _RayTokenNotice:
    """Drops Ray's "Token authentication is enabled for this Ray cluster" notice, which an embedded
    local Ray prints on every command (Ray's own default; nothing for the user to do)."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


def _quiet_ray() -> None:
    import logging

    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _RayTokenNotice) for f in logger.filters):
        logger.addFilter(_RayTokenNotice())


def main(argv: list[str] | None = None) -> int:
    _quiet_ray()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from processors.errors import UserInputError

    try:
        return int(args._run(args) or 0)
    except UserInputError as exc:
        print(f"vlprep {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = getattr(args._module, "INTERRUPTED", "nothing was written")
        print(f"\nvlprep {args.command}: interrupted; {kept}", file=sys.stderr)
        return 130


def positive_int(text: str) -> int:
    """argparse type of counts such as --workers: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
