"""One raw record's pre-flight fate, and a work unit's worth of them.

`RecordEvaluator` is what every pre-flight executor runs per record: a thread of the driver's pool,
the in-process loop or a Ray task (`evaluate_unit`: one work unit, a record range of one source,
read by the worker itself). A unit's results travel back as plain tuples (`pack` / `unpack`),
and the driver lays them out in unit order, so the report never depends on where a record ran.
"""
from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipeline import stages
from pipeline.config import JobConfig
from pipeline.ledger import Outcome
from pipeline.sources import iter_records
from pipeline.units import Unit
from processors.presets import get_preset
from processors.tokenizer import get_tokenizer

from .predict import MediaCache, Prediction, Predictor
from .records import parse_raw

_PREDICTION_FIELDS = tuple(f.name for f in fields(Prediction))


@dataclass
class Evaluated:
    """One input record's fate: a ledger row for a failure, or a prediction."""

    row: dict | None = None
    pred: Prediction | None = None
    media: list[tuple[str, str]] = field(default_factory=list)   # (kind, reference as written)


def pack(e: Evaluated) -> tuple:
    """A compact, picklable form (no per-record field names) for a task's return value."""
    pred = None if e.pred is None else tuple(getattr(e.pred, f) for f in _PREDICTION_FIELDS)
    return e.row, pred, e.media


def unpack(t: tuple) -> Evaluated:
    row, pred, media = t
    return Evaluated(row, None if pred is None else Prediction(*pred), media)


def error_row(o: Outcome) -> dict:
    return {"id": o.id, "source": o.source, "record_index": o.record_index, "status": o.status, "stage": o.stage,
            "rule": o.rule, "value": o.value, "message": o.message}


class RecordEvaluator:
    """Evaluates (source file, format, media root, raw record) items under one job config.

    `use_stages`: the job's own cheap stages (pipeline.stages.prepare) then the prediction;
    otherwise the lighter `--fast` chain. Header facts are cached per resolved path in `cache`,
    shared by the threads of one process.
    """

    def __init__(self, cfg_json: str, use_stages: bool = True, dedupe_media: bool = True):
        cfg = JobConfig.from_dict(json.loads(cfg_json))
        preset = get_preset(cfg.preset)
        if use_stages:
            self.ctx = stages.context_for(cfg_json)
            tokenizer = self.ctx.tokenizer
        else:
            self.ctx = None
            tokenizer = get_tokenizer(cfg.resolve_path(cfg.tokenizer) if cfg.tokenizer else None, preset=preset)
        self.cache = MediaCache(enabled=dedupe_media)
        self.predictor = Predictor(preset, cfg.encode_options(), cleaning=dict(cfg.cleaning or {}), tokenizer=tokenizer,
                                   cache=self.cache)

    def __call__(self, item) -> Evaluated:
        src, fmt, media_root, raw = item
        try:
            return self._evaluate(src, fmt, media_root, raw)
        except Exception as exc:  # a record the checks did not foresee is that record's error, never the job's
            return Evaluated(row=error_row(Outcome.error(stages.fallback_id(raw.source, raw.index), raw.source,
                                                         raw.index, "preflight", exc)))

    def _evaluate(self, src, fmt, media_root, raw) -> Evaluated:
        if self.ctx is not None:
            r = stages.prepare(raw, src, self.ctx)
            if isinstance(r, Outcome):  # read error, clean/media error or a filter drop
                return Evaluated(row=error_row(r))
            pred = self.predictor.predict(r.sample, media_root, image_sizes=r.image_sizes,
                                          video_infos=r.video_infos, clean=False)
            return Evaluated(pred=pred, media=_refs(r.sample))
        parsed = parse_raw(raw, fmt, media_root)
        if parsed.sample is None:
            return Evaluated(row={"id": stages.fallback_id(parsed.source, parsed.index), "source": parsed.source,
                                  "record_index": parsed.index, "status": "error", "stage": "read",
                                  "rule": parsed.error_type, "value": None, "message": parsed.error})
        return Evaluated(pred=self.predictor.predict(parsed.sample, media_root), media=_refs(parsed.sample))


def _refs(sample) -> list[tuple[str, str]]:
    return [(m.kind, m.path) for m in [*sample.images, *sample.videos] if m.path is not None]


@functools.lru_cache(maxsize=1)
def evaluator_for(cfg_json: str, use_stages: bool, dedupe_media: bool, run_id: str) -> RecordEvaluator:
    # One per process and run: the tasks of a run that land on the same worker share its header
    # cache; a new run (new run_id) starts a fresh one, so a file changed between runs is read again.
    return RecordEvaluator(cfg_json, use_stages, dedupe_media)


def evaluate_unit(unit_d: dict, cfg_json: str, use_stages: bool, dedupe_media: bool, run_id: str,
                  take: int | None = None) -> dict:
    """The packed results of a unit's first `take` records (all when None), and the header reads it cost."""
    unit = Unit.from_dict(unit_d)
    ev = evaluator_for(cfg_json, use_stages, dedupe_media, run_id)
    reads = ev.cache.reads
    src = unit.source
    media_root = Path(src.media_root)
    records = iter_records(src, start=unit.start, stop=unit.stop, byte_offset=unit.byte_offset)
    out = [pack(ev((src, src.format, media_root, raw))) for raw in itertools.islice(records, take)]
    expected = unit.n_records if take is None else min(take, unit.n_records)
    if len(out) != expected:
        raise RuntimeError(f"unit {unit.name}: read {len(out)} records from {src.path} [{unit.start}, {unit.stop}) "
                           f"but planning counted {expected}; did the source change during the pre-flight?")
    return {"results": out, "header_reads": ev.cache.reads - reads}
