"""Run a prepare job: plan units, index pass (dedup, ids), main pass on Ray, merge, check the books.

Executors: `ray` (default: an embedded local Ray, or an existing cluster with `address`; a Ray
already initialised by the caller is used as is), `local` (in-process loop, same code: the
benchmark's reference and a debugging aid) and `process` (a process pool, for the benchmark).
Units are submitted in input order with a bounded number in flight, so memory stays flat however
large the corpus; results are merged in unit order, so the output never depends on timing.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import setup_checks
from .cluster import check_ray_address, ray_connection
from .config import ConfigError, JobConfig
from .dedup import decide
from .io import LEDGER_SCHEMA, MANIFEST_SCHEMA, Layout, write_table, write_text
from .ledger import Accounting, accounting
from .progress import progress_bar
from .units import Unit, plan_units
from .work import UnitProgress, index_current, index_progress_name, index_unit, process_unit

REPO_ROOT = str(Path(__file__).resolve().parent.parent)
MAX_RETRIES = 2      # a unit whose Ray worker process dies is run again this many times
_DERIVED = ("shards", "parts", "manifest.parquet", "ledger.parquet", "job.json", "scores", "selection",
            "packs.parquet")


@dataclass
class JobResult:
    out_dir: Path
    accounting: Accounting
    units_total: int
    units_run: int
    units_skipped: int
    seconds: float
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # a broken setup (pipeline.setup_checks)
    error_share_exceeded: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and self.accounting.balanced and not self.error_share_exceeded


def run_job(cfg: JobConfig, *, out: str | os.PathLike | None = None, address: str | None = None,
            workers: int | None = None, overwrite: bool = False, executor: str = "ray",
            progress: "bool | str" = True) -> JobResult:
    t0 = time.perf_counter()
    if out is not None:
        cfg.out = str(Path(out).resolve())
    if address is not None:
        cfg.ray.address = address
    if workers is not None:
        cfg.ray.workers = int(workers)
    layout = Layout(cfg.out_dir())
    units = plan_units(cfg)              # sources that match nothing fail here, before OUT is touched
    check_tokenizer(cfg)                 # a token the preset needs missing: one line now, not one row per sample
    _check_out(layout, cfg, overwrite)
    if executor == "ray":
        check_ray_address(cfg.ray.address)   # a wrong --address: one line now, before the media checks
    warnings = setup_checks.before_run(cfg, units)
    for w in warnings:
        warn(w)
    cfg_json = cfg.to_json()
    with _executor(executor, cfg) as ex, progress_bar(progress) as bar:
        _start_out(layout, cfg)          # job.json only once the job really runs
        todo = [u for u in units if not index_current(layout.index_part(u.name))]
        task = bar.add_task("index", total=sum(u.n_records for u in todo))
        index_q: dict[str, dict] = {u.name: {} for u in todo}
        failed = _run_isolated(ex, cfg, layout, "index", index_unit, todo, index_q, cfg_json,
                               lambda u, n: bar.advance(task, u.n_records), index_progress_name)
        if failed:
            return _result(layout, units, 0, t0, failed, cfg, warnings)
        decisions = decide(((u.name, _index_rows(layout, u)) for u in units),
                           cfg.dedup.exact, cfg.dedup.phash, cfg.dedup.phash_threshold)
        for name, quarantined in index_q.items():   # what killed the index pass would kill the main pass
            for idx, d in quarantined.items():
                decisions[name].setdefault(idx, {})["quarantine"] = d["quarantine"]
        pending = [u for u in units if not layout.unit_done(u.name)]
        task = bar.add_task("encode", total=sum(u.n_records for u in pending))
        failed = _run_isolated(ex, cfg, layout, "encode", process_unit, pending, decisions, cfg_json,
                               lambda u, r: bar.advance(task, u.n_records))
    layout.remove_temporaries()   # what killed or crashed attempts left half-written (no unit runs now)
    if not failed:
        merge(layout, units)
    return _result(layout, units, len(pending), t0, failed, cfg, warnings)


def check_tokenizer(cfg: JobConfig) -> None:
    """The job's tokenizer (`tokenizer:` folder, or the built-in ranks) has every special token the
    preset needs: checked once on the driver before any unit runs (`vlprep prepare`, the `vlprep stats`
    pre-flight), else every sample would fail alike in the ledger. ConfigError (one line, exit 2)."""
    from processors.errors import VlprepError
    from processors.tokenizer import get_tokenizer, special_ids

    path = cfg.resolve_path(cfg.tokenizer) if cfg.tokenizer else None
    try:
        special_ids(get_tokenizer(path, preset=cfg.preset), cfg.preset)
    except (VlprepError, FileNotFoundError) as exc:
        raise ConfigError(f"tokenizer: {exc}") from None


_MAX_QUARANTINED_PER_UNIT = 32   # beyond this a unit is reported failed: something is wrong with the setup


def _run_isolated(ex, cfg: JobConfig, layout: Layout, stage: str, fn, units: list[Unit], decisions: dict,
                  cfg_json: str, on_done, progress_name=lambda name: name) -> list[tuple[str, str]]:
    """Run `fn(unit, cfg_json, out, decisions[unit])` per unit (the index or the main pass). When a
    unit's worker died (segfault in a decoder, OOM kill) or made no progress for
    `ray.record_timeout_s` (then the executor kills it), the unit's progress file names the record it
    was on: that record is quarantined (`decisions[unit][record]["quarantine"]`: an
    `encode/worker_crash` or `encode/hard_timeout` error row) and the unit runs again, so one bad
    record costs one ledger row, not its unit."""
    by_name = {u.name: u for u in units}
    timeout = float(cfg.ray.record_timeout_s or 0)
    where = " in the dedup index pass" if stage == "index" else ""

    def progress_file(name: str):
        return layout.progress(progress_name(name))

    def since_progress(unit: Unit) -> float | None:
        try:
            return time.time() - progress_file(unit.name).stat().st_mtime
        except OSError:
            return None  # not started yet

    def submit(batch: list[Unit]) -> list[tuple[str, str]]:
        for u in batch:  # a stale progress file (a killed run, the attempt before) must not look hung
            progress_file(u.name).unlink(missing_ok=True)
        jobs = [(u, (u.to_dict(), cfg_json, str(layout.root), decisions[u.name])) for u in batch]
        return ex.map(stage, fn, jobs, on_done, watch=since_progress if timeout else None, watch_limit=timeout)

    crashes: dict[tuple[str, int], int] = {}   # (unit, record) -> worker deaths seen on it
    attempts = {u.name: 1 for u in units}
    max_attempts = _MAX_QUARANTINED_PER_UNIT + cfg.ray.max_retries + 1
    failed = submit(units)
    while failed:
        retry, still = [], []
        for name, message in failed:
            kind = getattr(ex, "lost", {}).get(name)        # "crash" | "timeout" | None (an error in the unit)
            blame = UnitProgress.read(progress_file(name)) if kind else None
            quarantined = sum("quarantine" in d for d in decisions[name].values())
            if blame is None or blame[0] < 0 or "quarantine" in decisions[name].get(blame[0], {}) \
                    or quarantined >= _MAX_QUARANTINED_PER_UNIT or attempts[name] >= max_attempts:
                still.append((name, message))   # no record to blame (or the unit's own tail): report it
                continue
            attempts[name] += 1
            retry.append(by_name[name])
            if kind == "crash":
                # Retried here, not by Ray, so each attempt starts from a fresh progress file; a record
                # is blamed only when the worker died on it `max_retries + 1` times (an OOM kill of a
                # busy machine lands on whatever record was running).
                crashes[(name, blame[0])] = crashes.get((name, blame[0]), 0) + 1
                if crashes[(name, blame[0])] <= cfg.ray.max_retries:
                    continue
                rule = "worker_crash"
                why = (f"the worker process died while this record was being processed{where} "
                       f"({crashes[(name, blame[0])]} times; {message.splitlines()[0][:300]}); "
                       f"unit {name} was re-run without it")
            else:
                rule = "hard_timeout"
                why = (f"no progress for {timeout:g} s on this record{where} (ray.record_timeout_s={timeout:g}); the worker was "
                       f"killed and unit {name} re-run without it; raise ray.record_timeout_s if such records are "
                       f"legitimately slow")
            decisions[name][blame[0]] = {**decisions[name].get(blame[0], {}), "quarantine": (rule, why)}
        if not retry:
            return still
        failed = still + submit(retry)
    return failed


def _index_rows(layout: Layout, unit: Unit) -> list[dict]:
    return pq.read_table(layout.index_part(unit.name)).to_pylist()


def _check_out(layout: Layout, cfg: JobConfig, overwrite: bool) -> None:
    """Refuse an OUT holding another job's output (naming the keys that differ); --overwrite clears it."""
    root = layout.root
    taken = next((p for p in (root, *root.parents) if p.exists()), None)
    if taken is not None and not taken.is_dir():
        raise ConfigError(f"OUT {root}: {taken} is a file, not a folder; give --out (or the config's `out:`) "
                          f"a folder path (created if missing)")
    if overwrite:
        for name in _DERIVED:
            p = root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif layout.job.exists():
        before = json.loads(layout.job.read_text())
        diff = config_diff(_fingerprint(before), _fingerprint(cfg.to_dict()))
        if diff:
            raise ConfigError(f"{root} holds the output of a different job configuration ({layout.job}; differs in "
                              f"{'; '.join(diff)}); resume needs the same config: pass --overwrite to start again, "
                              f"or another --out")
    elif _holds_files(root / "shards") or _holds_files(root / "parts"):
        raise ConfigError(f"{root} has shards/parts but no job.json; pass --overwrite to start again")


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def _start_out(layout: Layout, cfg: JobConfig) -> None:
    # job.json before the folders: an OUT interrupted here is never "parts but no job.json"
    layout.root.mkdir(parents=True, exist_ok=True)
    write_text(cfg.to_json(), layout.job)
    layout.mkdirs()
    layout.remove_temporaries()


def config_diff(before: dict, now: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs (lists of sections by index: sources.0.path)."""
    out = []
    for k in sorted(set(before) | set(now), key=str):
        a, b = before.get(k, "<absent>"), now.get(k, "<absent>")
        key = f"{prefix}{k}"
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(isinstance(x, dict) for x in a + b):
            for i, (x, y) in enumerate(zip(a, b)):
                out += config_diff(x, y, f"{key}.{i}.")
        elif isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{key}.")
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def _fingerprint(d: dict) -> dict:
    # where and how wide it runs may change between a run and its resume; what it computes may not
    return {k: v for k, v in d.items() if k not in ("ray", "out", "max_error_share")}


def merge(layout: Layout, units: list[Unit]) -> None:
    """Concatenate the unit parts into manifest.parquet / ledger.parquet sorted by (source, record_index)."""
    for parts, final, schema in ((layout.manifest_part, layout.manifest, MANIFEST_SCHEMA),
                                 (layout.ledger_part, layout.ledger, LEDGER_SCHEMA)):
        tables = [pq.read_table(parts(u.name)).cast(schema) for u in units]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        table = table.sort_by([("source", "ascending"), ("record_index", "ascending")])
        write_table(table.combine_chunks(), final)


def _result(layout: Layout, units: list[Unit], run: int, t0: float, failed, cfg: JobConfig,
            warnings: list[str]) -> JobResult:
    expected = sum(u.n_records for u in units)
    over = False
    if layout.ledger.exists() and not failed:
        ledger = pq.read_table(layout.ledger)
        acc = accounting(ledger, expected)
        warnings = warnings + setup_checks.after_run(ledger, cfg.max_error_share)
        over = setup_checks.over_error_share(ledger, cfg.max_error_share)
    else:
        acc = Accounting(expected, 0, 0, 0, __import__("collections").Counter())
    return JobResult(layout.root, acc, len(units), run, len(units) - run, time.perf_counter() - t0, failed,
                     warnings, over)


def warn(message: str) -> None:
    """A setup warning, on stderr as soon as it is known (the summary repeats it)."""
    import sys

    print(f"warning: {message}", file=sys.stderr)


# -- executors ---------------------------------------------------------------------------------

class _LocalExecutor:
    """In-process: a crash takes the driver down with it and nothing can watch for hangs."""

    lost: dict = {}

    def map(self, stage, fn, jobs, on_done, watch=None, watch_limit=0.0):
        failed = []
        for unit, args in jobs:
            try:
                on_done(unit, fn(*args))
            except Exception as exc:
                failed.append((unit.name, f"{type(exc).__name__}: {exc}"))
        return failed


class _ProcessExecutor:
    def __init__(self, workers: int):
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(workers)

    lost: dict = {}

    def map(self, stage, fn, jobs, on_done, watch=None, watch_limit=0.0):
        futs = [(unit, self.pool.submit(fn, *args)) for unit, args in jobs]
        failed = []
        for unit, f in futs:
            try:
                on_done(unit, f.result())
            except Exception as exc:
                failed.append((unit.name, f"{type(exc).__name__}: {exc}"))
        return failed


class _RayExecutor:
    def __init__(self, cfg: JobConfig):
        import ray

        self.ray = ray
        self.cfg = cfg
        # preflight: the work units of the `vlprep stats` pre-flight (pipeline.report.preflight_run)
        cpus = {"index": cfg.ray.index_num_cpus, "encode": cfg.ray.num_cpus, "preflight": cfg.ray.num_cpus}
        retries = {"encode": 0, "index": 0}   # both passes retry dead workers themselves (_run_isolated)
        self.remote = {stage: ray.remote(max_retries=retries.get(stage, MAX_RETRIES))(_call).options(
                           num_cpus=n, name=f"vlprep-{stage}") for stage, n in cpus.items()}
        total = max(1.0, ray.cluster_resources().get("CPU", 1.0))
        self.limit = {stage: int(cfg.ray.concurrency or max(2, 2 * total / n)) for stage, n in cpus.items()}
        self.lost: dict[str, str] = {}   # unit -> "crash" | "timeout" (of the last map call)

    def map(self, stage, fn, jobs, on_done, watch=None, watch_limit=0.0):
        """Run `fn(*args)` per job; returns [(unit, message)] of the units that failed.

        `watch(unit)`: seconds since that unit last made progress (None: not started); a running
        unit over `watch_limit` is killed (`ray.cancel(force=True)`). `self.lost` says which failed
        units lost their worker ("crash") or were killed ("timeout"), as opposed to raising."""
        ray = self.ray
        from ray.exceptions import OutOfMemoryError, TaskCancelledError, WorkerCrashedError

        queue = list(jobs)
        queue.reverse()
        pending: dict = {}
        killed: set = set()
        failed = []
        self.lost = {}
        while queue or pending:
            while queue and len(pending) < self.limit[stage]:
                unit, args = queue.pop()
                pending[self.remote[stage].remote(fn, *args)] = unit
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0 if watch else None)
            for ref in done:
                unit = pending.pop(ref)
                try:
                    on_done(unit, ray.get(ref))
                except Exception as exc:  # a crashed worker or a unit-level error: report, go on
                    failed.append((unit.name, f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"))
                    if ref in killed or isinstance(exc, TaskCancelledError):
                        self.lost[unit.name] = "timeout"
                    elif isinstance(exc, (WorkerCrashedError, OutOfMemoryError)):
                        self.lost[unit.name] = "crash"
            if watch and watch_limit > 0:
                for ref, unit in pending.items():
                    idle = watch(unit)
                    if ref not in killed and idle is not None and idle > watch_limit:
                        ray.cancel(ref, force=True)
                        killed.add(ref)
        return failed


def _call(fn, *args):
    return fn(*args)


class _executor:
    """Context manager yielding an executor; an embedded Ray is started and stopped here."""

    def __init__(self, kind: str, cfg: JobConfig):
        self.kind, self.cfg, self.owned = kind, cfg, False

    def __enter__(self):
        if self.kind == "local":
            return _LocalExecutor()
        if self.kind == "process":
            self.ex = _ProcessExecutor(int(self.cfg.ray.workers or os.cpu_count() or 1))
            return self.ex
        if self.kind != "ray":
            raise ConfigError(f"unknown executor {self.kind!r}: ray | local | process")
        import ray

        if not ray.is_initialized():
            addr = self.cfg.ray.address
            # workers on this machine import pipeline/processors from this checkout: the raylet
            # inherits the driver's environment (cheaper than a runtime_env, which costs a
            # per-worker setup)
            paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            if REPO_ROOT not in paths:
                os.environ["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, *paths])
            if addr:
                check_ray_address(addr)      # nothing (Ray) listening there: one line, not a minute's wait
                with ray_connection(addr):   # something answers there, but ray.init gave up
                    _connect(ray, addr)
            else:
                # address="local": always a fresh embedded instance, never a cluster that happens
                # to run on this machine (`ray start`, another job's test cluster)
                ray.init(address="local", num_cpus=self.cfg.ray.workers or os.cpu_count(), include_dashboard=False,
                         log_to_driver=True, logging_level="WARNING")
            self.owned = True
        return _RayExecutor(self.cfg)

    def __exit__(self, *exc):
        if self.kind == "process":
            self.ex.pool.shutdown()
        if self.owned:
            import ray

            ray.shutdown()


def _connect(ray, addr: str, attempts: int = 3) -> None:
    """ray.init on a cluster. Through Ray Client (`ray://`) the head starts a server per client, and
    Ray 2.60's proxy can lose a race with that server's start-up (`ZombieProcess` while it reads the
    starting process's command line) and abort the connection: try again, a few times."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=addr, log_to_driver=True, logging_level="WARNING")
            return
        except ConnectionAbortedError:
            if not addr.startswith("ray://") or attempt == attempts:
                raise
            if ray.is_initialized():
                ray.shutdown()
            time.sleep(2.0 * attempt)


open_executor = _executor   # shared with the stats pre-flight, which runs its work units the same way
