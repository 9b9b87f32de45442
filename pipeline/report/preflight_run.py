"""Evaluate every record of a raw corpus for the pre-flight: on threads, in-process or on Ray.

`threads` reads all records in the driver and evaluates them on a thread pool that shares one
header cache (tiny corpora, tests, a quick look). `local` and `ray` go through the prepare job's
machinery instead: `pipeline.units.plan_units` cuts the sources into work units (record ranges,
`unit_size` records each) and the prepare job's executor (`pipeline.runner.open_executor`) runs
`evaluate.evaluate_unit` per unit, in this process or as Ray tasks (an embedded local Ray, or the
cluster at `address`); every worker reads its own records. The progress bar is the prepare job's.
Whatever the executor, results come back in record order, so the report is the same; only
`timing` differs. A unit that still fails after Ray's retries becomes one error row per record
(stage `preflight`, rule `unit_failed`, the failure in the message), never a lost record.
"""
from __future__ import annotations

import itertools
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline import stages
from pipeline.ledger import Outcome
from pipeline.progress import progress_bar
from pipeline.runner import open_executor
from pipeline.sources import iter_records
from pipeline.units import Unit, plan_units
from processors.errors import UserInputError

from .evaluate import Evaluated, RecordEvaluator, error_row, evaluate_unit, unpack
from .records import iter_sources

EXECUTORS = ("ray", "local", "threads")


@dataclass
class EvaluationRun:
    results: list[Evaluated]          # one per input record, in record order
    header_reads: int
    timing: dict
    failed_units: list[dict] = field(default_factory=list)


def default_threads() -> int:
    # Header reads wait on the disk far more than on the CPU: a few threads per core pays off.
    return min(32, 4 * (os.cpu_count() or 1))


def evaluate_corpus(cfg, *, executor: str = "threads", use_stages: bool = True, dedupe_media: bool = True,
                    limit: int | None = None, workers: int | None = None, address: str | None = None,
                    progress: bool = False) -> EvaluationRun:
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}: {' | '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise UserInputError(f"--address {address} needs the ray executor, not {executor!r}: drop --executor "
                             f"or --address")
    if executor == "threads":
        return _on_threads(cfg, use_stages, dedupe_media, limit, workers or default_threads(), progress)
    if address is not None:
        cfg.ray.address = address
    if workers is not None:
        cfg.ray.workers = int(workers)
    return _on_units(cfg, executor, use_stages, dedupe_media, limit, progress)


def _on_threads(cfg, use_stages, dedupe_media, limit, workers, progress) -> EvaluationRun:
    t0 = time.perf_counter()
    evaluate = RecordEvaluator(cfg.to_json(), use_stages, dedupe_media)
    items = list(itertools.islice(_iter_items(cfg), limit))
    t_read = time.perf_counter() - t0
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(progress) as bar:
        task = bar.add_task("pre-flight", total=len(items))
        for r in pool.map(evaluate, items, chunksize=64):
            results.append(r)
            bar.advance(task, 1)
    timing = {"seconds": time.perf_counter() - t0, "read_parse_seconds": t_read, "executor": "threads",
              "workers": workers}
    return EvaluationRun(results, evaluate.cache.reads, timing)


def _iter_items(cfg):
    for src, _path, fmt, media_root, raws in iter_sources(cfg):
        for raw in raws:
            yield src, fmt, media_root, raw


def _on_units(cfg, executor, use_stages, dedupe_media, limit, progress) -> EvaluationRun:
    t0 = time.perf_counter()
    planned = _plan(plan_units(cfg), limit)
    t_plan = time.perf_counter() - t0
    cfg_json = cfg.to_json()
    run_id = uuid.uuid4().hex
    done: dict[str, dict] = {}
    with open_executor(executor, cfg) as ex, progress_bar(progress) as bar:
        t_start = time.perf_counter() - t0 - t_plan
        task = bar.add_task("pre-flight", total=sum(_n(u, take) for u, take in planned))

        def on_done(unit: Unit, out: dict) -> None:
            done[unit.name] = out
            bar.advance(task, len(out["results"]))

        jobs = [(u, (u.to_dict(), cfg_json, use_stages, dedupe_media, run_id, take)) for u, take in planned]
        failed = dict(ex.map("preflight", evaluate_unit, jobs, on_done))
        workers = _parallelism(executor, cfg)
    results, failed_units = [], []
    for u, take in planned:
        if u.name in done:
            results.extend(unpack(t) for t in done[u.name]["results"])
        else:
            msg = failed.get(u.name, "no result")
            failed_units.append({"unit": u.name, "source": u.source.name, "start": u.start, "stop": u.stop,
                                 "error": msg})
            results.extend(_failed_unit_rows(u, take, msg))
    timing = {"seconds": time.perf_counter() - t0, "plan_seconds": t_plan, "startup_seconds": t_start,
              "executor": executor, "workers": workers, "units": len(planned)}
    return EvaluationRun(results, sum(d["header_reads"] for d in done.values()), timing, failed_units)


def _parallelism(executor: str, cfg) -> int:
    """Units that can run at once: the cluster's CPUs over the CPUs a task declares (1 in-process)."""
    if executor != "ray":
        return 1
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1.0) / cfg.ray.num_cpus))


def _plan(units: list[Unit], limit: int | None) -> list[tuple[Unit, int | None]]:
    """(unit, records to take: None = all) for the units that hold the first `limit` records."""
    if limit is None:
        return [(u, None) for u in units]
    out, left = [], limit
    for u in units:
        if left <= 0:
            break
        out.append((u, None if u.n_records <= left else left))
        left -= u.n_records
    return out


def _n(unit: Unit, take: int | None) -> int:
    return unit.n_records if take is None else min(take, unit.n_records)


def _failed_unit_rows(unit: Unit, take: int | None, msg: str) -> list[Evaluated]:
    src = unit.source
    try:  # reading is cheap and cannot hang on media; it gives the exact record indices (jsonl blank lines)
        indices = [raw.index for raw in itertools.islice(
            iter_records(src, start=unit.start, stop=unit.stop, byte_offset=unit.byte_offset), take)]
    except Exception:
        indices = list(range(unit.start, unit.stop))[:take]
    message = (f"work unit {unit.name} (records {unit.start}..{unit.stop - 1} of {src.name}) failed and was "
               f"not evaluated: {msg}")
    return [Evaluated(row=error_row(Outcome.error(stages.fallback_id(src.name, i), src.name, i, "preflight",
                                                  "unit_failed", message))) for i in indices]
