"""What the user sees while and after a job runs: a progress bar in records, a summary table."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text


class _NoBar:
    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass


class _RateColumn(ProgressColumn):
    """Units per second over rich's recent-speed window; blank until there is one."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else "")


class _PostfixColumn(ProgressColumn):
    """The task's `postfix` field (`update(task, postfix=...)`, e.g. `vlprep score`'s tok/s); blank without."""

    def render(self, task) -> Text:
        return Text(task.fields.get("postfix") or "")


class LineBar:
    """Progress for a log file (stderr not a terminal), the one printer of every command: one plain line
    per task at most every `every_s` seconds, and when a task completes:
    `vlprep: encode 120/1,000 records (12%), 30.0 records/s, 4s` (then `, {postfix}` when one is set).
    The calls are rich's (`add_task`, `advance`, `update(task, postfix=...)`)."""

    def __init__(self, every_s: float = 30.0, file=None, unit: str = "records", clock=time.monotonic):
        self.every_s, self.file, self.unit, self.clock, self.tasks = every_s, file or sys.stderr, unit, clock, []

    def add_task(self, description: str, total: float | None = None, **_):
        now = self.clock()
        self.tasks.append({"name": description, "total": total or 0, "done": 0, "t0": now, "shown": now,
                           "postfix": ""})
        return len(self.tasks) - 1

    def update(self, task: int, postfix: str | None = None, **_) -> None:
        if postfix is not None:
            self.tasks[task]["postfix"] = postfix

    def advance(self, task: int, n: float = 1) -> None:
        t = self.tasks[task]
        t["done"] += n
        now = self.clock()
        if now - t["shown"] >= self.every_s or (t["total"] and t["done"] >= t["total"]):
            t["shown"] = now
            share = f" ({100 * t['done'] / t['total']:.0f}%)" if t["total"] else ""
            rate = t["done"] / max(now - t["t0"], 1e-9)
            tail = f", {t['postfix']}" if t["postfix"] else ""
            print(f"vlprep: {t['name']} {t['done']:,.0f}/{t['total']:,.0f} {self.unit}{share}, "
                  f"{rate:,.1f} {self.unit}/s, {now - t['t0']:.0f}s{tail}", file=self.file, flush=True)


@contextmanager
def progress_bar(enabled: "bool | str" = True, unit: str = "records"):
    """What every command shows while it works (`progress_mode`): a rich bar on stderr on a terminal,
    LineBar's plain lines in a log (`"lines"`), nothing when disabled (tests, --no-progress). Either
    takes rich's calls: `add_task`, `advance`, `update(task, postfix=...)`."""
    if not enabled:
        yield _NoBar()
        return
    if enabled == "lines":
        yield LineBar(unit=unit)
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn(unit), _RateColumn(unit), TimeElapsedColumn(), TimeRemainingColumn(), _PostfixColumn(),
                   console=Console(file=sys.stderr), transient=False)
    with bar:
        yield bar


def progress_mode(disabled: bool) -> "bool | str":
    """What a command shows while it works: a bar on a terminal, plain lines in a log, nothing with
    --no-progress."""
    if disabled:
        return False
    return True if sys.stderr.isatty() else "lines"


class _Counter:
    """One task of a progress_bar, counted with a postfix: `advance(n, postfix)`."""

    def __init__(self, bar, task):
        self.bar, self.task = bar, task

    def advance(self, n: float, postfix: str | None = None) -> None:
        if postfix is not None:
            self.bar.update(self.task, postfix=postfix)
        self.bar.advance(self.task, n)


@contextmanager
def progress_count(description: str, total: int, mode: "bool | str", unit: str):
    """Progress of one count (`vlprep score` / `verify`'s samples) on progress_bar: the same rich bar as
    `vlprep prepare` on a terminal, LineBar lines in a log, nothing when disabled (`progress_mode`).
    Yields `advance(n, postfix)`."""
    with progress_bar(mode, unit) as bar:
        yield _Counter(bar, bar.add_task(description, total=total))


def quiet_library_bars(transformers: bool) -> None:
    """In a log (stderr not a terminal): no tqdm bars from the libraries a command loads (model loading,
    tokenizing), whose carriage returns garble a log; the command's own progress is LineBar's lines."""
    if sys.stderr.isatty():
        return
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    if transformers:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _shown(path) -> str:
    """OUT as the user would type it: relative when it lies under the current folder."""
    from pathlib import Path

    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def render_summary(result, console: Console | None = None) -> None:
    """The end-of-job table: totals, then every drop/error reason with its count."""
    console = console or Console()
    a = result.accounting
    t = Table(title=escape(f"vlprep prepare → {_shown(result.out_dir)}"), show_lines=False)
    t.add_column("status")
    t.add_column("stage")
    t.add_column("rule / error type")
    t.add_column("records", justify="right")
    t.add_row("[green]kept[/]", "", "", str(a.kept))
    for (status, stage, rule), n in sorted(a.reasons.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0])):
        color = "yellow" if status == "dropped" else "red"
        t.add_row(f"[{color}]{status}[/]", escape(stage or ""), escape(rule or ""), str(n))
    console.print(t)
    check = "[green]OK[/]" if a.balanced else "[red]MISMATCH[/]"
    console.print(f"inputs {a.inputs} == kept {a.kept} + dropped {a.dropped} + errors {a.errors}: {check}")
    rate = a.inputs / result.seconds if result.seconds > 0 and result.units_run else 0.0
    console.print(f"units: {result.units_total} ({result.units_run} run, {result.units_skipped} already done); "
                  f"{result.seconds:.1f}s" + (f", {rate:.1f} records/s" if rate else ""))
    from .sizes import bytes_line

    line = bytes_line(result.out_dir)
    if line:
        console.print(line, soft_wrap=True)
    for unit, msg in result.failed:
        console.print(f"[red]unit {escape(unit)} failed[/]: {escape(msg)}")
    for w in getattr(result, "warnings", []):
        console.print(f"[yellow]warning[/]: {escape(w)}")
