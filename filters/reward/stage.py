"""The score stage: shards -> token-budget batches -> scorers on one device -> scores/{unit}.parquet.

One `ScoreWorker` owns one device and its loaded scorers; it scores whole work units (one shard each)
and writes `scores/{unit}.parquet` atomically (temporary name, then rename), so a killed run resumes
at the first unit without a finished file. A unit whose file lacks some requested columns (e.g. `vlm`
added later) is scored by the missing scorers only, and the columns are merged.

Executors (the stage says what it needs; the runner decides placement):
  local  the worker in this process (CPU, a single GPU, tests)
  ray    on a cluster with GPUs, floor(1 / num_gpus) actors on every whole GPU (a fractional actor
         lives on one GPU; `num_gpus` is in (0, 1], see `gpu_actor_plan`), each capped to its share of
         that GPU's memory; `workers` CPU actors when the cluster has no GPU. An actor that fails to
         start (no GPU, wrong checkpoint, out of memory at load) ends the run with one ScorerError line.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from processors.presets import get_preset

from .batching import HostBatch, plan_batches, plan_packs
from .protocol import DTYPES, ScorerError, compute_dtype, parse_device, resolve_device

SCORER_NAMES = ("text", "pixels", "vlm", "category", "verify", "vlm_category", "grounding", "query")
MODEL_SCORERS = ("vlm", "verify", "vlm_category", "grounding", "query")  # need --model
DEFAULT_SCORERS = ("text", "pixels")


@dataclass
class ScoreConfig:
    out_dir: str
    scorers: tuple[str, ...] = DEFAULT_SCORERS
    model: str | None = None
    preset: str = "qwen2.5-vl"
    batch_tokens: int = 16384
    max_padding: float = 0.10
    device: str = "auto"
    dtype: str = "auto"            # auto | bf16 | fp16 | fp32 (protocol.compute_dtype)
    pack: str = "auto"             # vlm only: auto = packed rows when FlashAttention-2 is in use
    text_model: str | None = None  # sentence model folder; None = the bundled all-MiniLM-L6-v2
    overwrite: bool = False
    visual_gain: bool = True       # vlm: the second, text-only pass
    taxonomy: str | None = None    # category: taxonomy YAML; None = filters/reward/taxonomy_default.yaml
    max_new_tokens: int = 128      # verify: greedy answer length
    iou_threshold: float = 0.5     # verify: box answers match at IoU >= this
    tokenizer: str | None = None   # the shards' tokenizer folder (OUT/job.json `tokenizer:`); None = built-in

    def __post_init__(self):
        self.scorers = tuple(self.scorers)
        unknown = [s for s in self.scorers if s not in SCORER_NAMES]
        if unknown:
            raise ScorerError(f"unknown scorer(s) {unknown}; choose from {list(SCORER_NAMES)}")
        if any(s in MODEL_SCORERS for s in self.scorers) and not self.model:
            first = next(s for s in self.scorers if s in MODEL_SCORERS)
            raise ScorerError(f"the {first} scorer needs --model PATH "
                              "(a local Qwen2-VL / Qwen2.5-VL checkpoint folder)")
        if self.batch_tokens <= 0:
            raise ScorerError(f"--batch-tokens must be positive, got {self.batch_tokens}")
        if not 0 <= self.max_padding < 1:
            raise ScorerError(f"--max-padding is a share of a batch's tokens in [0, 1), got {self.max_padding}")
        if self.dtype not in DTYPES:
            raise ScorerError(f"--dtype {self.dtype!r}: choose from {list(DTYPES)}")
        if self.device.lower() != "auto":
            parse_device(self.device)


@dataclass
class Unit:
    unit: str
    shard: str              # relative to out_dir, as the manifest writes it
    expected: int | None = None  # manifest row count, to recognise a stale scores file


@dataclass
class UnitResult:
    unit: str
    samples: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    seconds: float = 0.0
    skipped: bool = False
    columns: list[str] = field(default_factory=list)


def scores_path(out_dir, unit: str) -> Path:
    return Path(out_dir) / "scores" / f"{unit}.parquet"


def make_scorer(name: str, cfg: ScoreConfig):
    if name == "text":
        from .text_scorer import TextScorer

        return TextScorer(cfg.text_model, tokenizer=cfg.tokenizer)
    if name == "pixels":
        from .pixel_scorer import PixelScorer

        return PixelScorer()
    if name == "category":
        from .category_scorer import CategoryScorer

        return CategoryScorer(cfg.taxonomy, cfg.text_model, tokenizer=cfg.tokenizer)
    if name == "vlm_category":
        from .vlm_category import VLMCategoryScorer

        return VLMCategoryScorer(cfg.model, cfg.taxonomy, batch_tokens=cfg.batch_tokens, dtype=cfg.dtype,
                                 tokenizer=cfg.tokenizer)
    if name in ("grounding", "query"):
        from .grounding_scorer import GroundingScorer
        from .query_scorer import QueryScorer

        return (GroundingScorer if name == "grounding" else QueryScorer)(cfg.model, batch_tokens=cfg.batch_tokens,
                                                                         dtype=cfg.dtype, tokenizer=cfg.tokenizer)
    if name == "verify":
        from .verify import VerifyScorer

        return VerifyScorer(cfg.model, max_new_tokens=cfg.max_new_tokens, iou_threshold=cfg.iou_threshold,
                            dtype=cfg.dtype, tokenizer=cfg.tokenizer, engine=getattr(cfg, "engine", "auto"))
    from .vlm_scorer import VLMScorer

    return VLMScorer(cfg.model, pack=cfg.pack, visual_gain=cfg.visual_gain, dtype=cfg.dtype, tokenizer=cfg.tokenizer)


def existing_columns(path: Path, expected: int | None) -> set[str]:
    """Columns already scored for a unit; empty when absent or stale (row count != manifest's)."""
    if not path.exists():
        return set()
    meta = pq.read_metadata(path)
    if expected is not None and meta.num_rows != expected:
        return set()
    return set(meta.schema.names) - {"id"}


def base_columns(name: str, visual_gain: bool = True) -> list[str]:
    """Columns a scorer always writes (known before loading any weights)."""
    if name == "vlm" and not visual_gain:
        return ["vlm.mean_logprob"]
    if name == "verify":
        from .verify import COLUMNS  # the verify scorer owns its column list

        return list(COLUMNS)
    return {
        "text": ["text.qa_relevance", "text.informativeness", "text.lexical_diversity"],
        "pixels": ["pixels.blank", "pixels.luma_std", "pixels.sharpness", "pixels.brightness", "pixels.clipped"],
        "vlm": ["vlm.mean_logprob", "vlm.text_only_logprob", "vlm.visual_gain"],
        "category": ["category.coarse", "category.fine", "category.confidence", "category.coarse_confidence"],
        "vlm_category": ["vlm_category.coarse", "vlm_category.fine", "vlm_category.confidence",
                         "vlm_category.coarse_confidence"],
        "grounding": ["grounding.box_margin", "grounding.box_rank"],
        "query": ["query.logprob", "query.visual_relevance"],
    }[name]


def pending(cfg: ScoreConfig, units: Iterable[Unit]) -> list[Unit]:
    """Units that still need at least one requested scorer."""
    out = []
    for u in units:
        have = set() if cfg.overwrite else existing_columns(scores_path(cfg.out_dir, u.unit), u.expected)
        if any(not set(base_columns(s, cfg.visual_gain)) <= have for s in cfg.scorers):
            out.append(u)
    return out


def _write_atomic(table: pa.Table, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


class ScoreWorker:
    """Scorers loaded on one device; `run_unit` scores one shard. Also the body of a Ray actor."""

    def __init__(self, cfg: ScoreConfig, loader_factory: Callable[[str], object], gpu_share: float | None = None):
        self.cfg = cfg
        self.loader = loader_factory(cfg.out_dir)
        self.preset = get_preset(cfg.preset)
        self.device = resolve_device(cfg.device)
        self.dtype = compute_dtype(self.device, cfg.dtype)
        # Actors sharing a GPU: each may allocate only its share, so one cannot starve (OOM) the others.
        self.memory_fraction = gpu_share if self.device.type == "cuda" and gpu_share and gpu_share < 1 else None
        if self.memory_fraction is not None:
            import torch

            torch.cuda.set_per_process_memory_fraction(self.memory_fraction, self.device)
        from .vlm_scorer import ModelCache

        self.scorers = {name: make_scorer(name, cfg) for name in cfg.scorers}
        # one load per checkpoint: the checkpoint scorers set up here share the worker's models
        self.models = ModelCache()
        with self.models:
            for s in self.scorers.values():
                s.setup(self.device)
        vlm = self.scorers.get("vlm")
        self.pack = bool(vlm is not None and vlm.pack)
        self.warnings = [w for w in [vlm.check_preset(self.preset.name)] if w] if vlm is not None else []

    def describe(self) -> dict:
        return {"device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""), "pack": self.pack,
                "columns": [c for s in self.scorers.values() for c in s.columns()], "warnings": self.warnings,
                "memory_fraction": self.memory_fraction, "model_loads": self.models.loads}

    def run_unit(self, unit: Unit, progress: Callable[[int, int], None] | None = None) -> UnitResult:
        t0 = time.perf_counter()
        path = scores_path(self.cfg.out_dir, unit.unit)
        have = set() if self.cfg.overwrite else existing_columns(path, unit.expected)
        todo = [s for name, s in self.scorers.items() if not set(base_columns(name, self.cfg.visual_gain)) <= have]
        if not todo:
            return UnitResult(unit.unit, skipped=True)
        # frames, not rows: each pixel crosses to the device once and is patchified there
        samples = list(self.loader.iter_shard(unit.shard, pixels="frames"))
        if unit.expected is not None and len(samples) != unit.expected:
            raise ScorerError(f"shard {unit.shard} holds {len(samples)} samples but the manifest lists {unit.expected} "
                              f"for unit {unit.unit}; re-run `vlprep prepare` on {self.cfg.out_dir}")
        res = UnitResult(unit.unit, samples=len(samples))
        lengths = np.array([len(s["input_ids"]) for s in samples], dtype=np.int64)
        groups = (plan_packs(lengths, self.cfg.batch_tokens) if self.pack
                  else plan_batches(lengths, self.cfg.batch_tokens, self.cfg.max_padding))
        cols: dict[str, np.ndarray] = {}
        for group in groups:
            batch = HostBatch([samples[i] for i in group], self.preset, self.device, self.dtype)
            for scorer in todo:
                for name, values in scorer.score(batch).items():
                    values = np.asarray(values)
                    if name not in cols:  # label columns (category.coarse ...) are strings, the rest float64
                        cols[name] = (np.full(len(samples), None, dtype=object) if values.dtype == object
                                      else np.full(len(samples), np.nan))
                    cols[name][group] = values
            real = int(lengths[group].sum())
            res.tokens += real
            res.padded_tokens += real if self.pack else int(lengths[group].max()) * len(group)
            res.batches += 1
            if progress is not None:
                progress(len(group), real)
        table = pa.table({"id": pa.array([s["id"] for s in samples], pa.string()),
                          **{k: pa.array(v, pa.string() if v.dtype == object else pa.float64())
                             for k, v in cols.items()}})
        if have and path.exists():  # merge with the columns a previous run wrote
            old = pq.read_table(path)
            if old.column("id").to_pylist() != table.column("id").to_pylist():
                raise ScorerError(f"{path}: ids differ from shard {unit.shard}; delete the file or use --overwrite")
            for name in old.schema.names:
                if name != "id" and name not in table.schema.names:
                    table = table.append_column(name, old.column(name))
        _write_atomic(table, path)
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        res.seconds = time.perf_counter() - t0
        res.columns = [c for c in table.schema.names if c != "id"]
        return res


@dataclass
class StageReport:
    units: int
    skipped: int
    samples: int
    tokens: int
    padded_tokens: int
    seconds: float
    workers: list[dict]

    @property
    def padding_share(self) -> float:
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "padding_share": self.padding_share}


def run_local(cfg: ScoreConfig, units: list[Unit], loader_factory, progress=None) -> StageReport:
    t0 = time.perf_counter()
    todo = pending(cfg, units)
    if not todo:
        return StageReport(len(units), len(units), 0, 0, 0, 0.0, [])
    worker = ScoreWorker(cfg, loader_factory)
    results = [worker.run_unit(u, progress) for u in todo]
    return _report(units, results, [worker.describe()], time.perf_counter() - t0)


def check_num_gpus(num_gpus: float) -> None:
    """--num-gpus is one actor's share of one GPU: (0, 1]. An actor scores on one device (the whole
    model on its cuda:0), so a share above 1 would reserve GPUs it never uses; 1.5 cannot be placed."""
    if not 0 < num_gpus <= 1:
        raise ScorerError(f"--num-gpus {num_gpus:g}: each Ray actor scores on one GPU, so give its share of a GPU "
                          "in (0, 1] (1 = an actor per GPU, 0.5 = two actors per GPU); a model that needs several "
                          "GPUs is not supported by `vlprep score`")


def gpu_actor_plan(nodes: list[dict], num_gpus: float) -> tuple[int, float]:
    """(actors, CPUs per actor) for GPU actors of share `num_gpus` on alive nodes' resource dicts.

    Ray places a fractional GPU request on one GPU: 2 GPUs x 0.4 is 2 actors per GPU = 4, not
    int(2 / 0.4) = 5 (the fifth would wait for ever). CPUs per actor are at most 1, less where a
    node has more actors than CPUs, so that CPUs never keep a GPU actor from being placed.
    """
    check_num_gpus(num_gpus)
    per_gpu = int(1 / num_gpus + 1e-9)
    actors, cpus = 0, 1.0
    for res in nodes:
        fit = int(float(res.get("GPU", 0.0)) + 1e-9) * per_gpu
        if fit:
            actors += fit
            cpus = min(cpus, float(res.get("CPU", 0.0)) / fit)
    return actors, int(cpus * 10_000) / 10_000  # Ray's resource granularity


class _ScoreActor:
    """The Ray actor body: a ScoreWorker whose start-up error is kept and reported by `describe`
    (as one line) instead of killing the actor with a traceback."""

    def __init__(self, cfg: ScoreConfig, loader_factory, gpu_share: float | None):
        self.worker, self.error = None, None
        try:
            self.worker = ScoreWorker(cfg, loader_factory, gpu_share)
        except Exception as exc:  # noqa: BLE001 - every start-up failure reaches the driver as one line
            self.error = _one_line(exc)

    def describe(self) -> dict:
        import ray

        where = {"node": ray.get_runtime_context().get_node_id()[:8], "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
        if self.error is not None:
            return {"error": self.error, **where}
        return {**self.worker.describe(), **where}

    def run_unit(self, unit: Unit) -> UnitResult:
        return self.worker.run_unit(unit)


def run_ray(cfg: ScoreConfig, units: list[Unit], loader_factory, *, address: str | None = None,
            num_gpus: float = 1.0, workers: int | None = None, progress=None) -> StageReport:
    """Score on a Ray cluster: floor(1 / num_gpus) actors per GPU (`gpu_actor_plan`), else CPU actors."""
    import ray
    from ray.util import ActorPool

    t0 = time.perf_counter()
    check_num_gpus(num_gpus)
    if workers is not None and workers < 1:
        raise ScorerError(f"--workers {workers}: give at least 1 CPU actor")
    todo = pending(cfg, units)
    if not todo:
        return StageReport(len(units), len(units), 0, 0, 0, 0.0, [])
    if not ray.is_initialized():
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=True,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    gpus = sum(float(r.get("GPU", 0.0)) for r in nodes)
    device = cfg.device.lower()
    if gpus > 0 and device != "cpu":
        if device not in ("auto", "cuda"):
            raise ScorerError(f"--device {cfg.device}: a Ray GPU actor sees only its own GPU (as cuda); "
                              "use --device auto or cuda and choose GPUs with CUDA_VISIBLE_DEVICES / the cluster")
        n, cpus = gpu_actor_plan(nodes, num_gpus)
        if n == 0:
            raise ScorerError(f"the Ray cluster has {gpus:g} GPUs but no node with a whole GPU to share "
                              f"out in --num-gpus {num_gpus:g} parts")
        opts, share = {"num_gpus": num_gpus, "num_cpus": cpus}, num_gpus
    else:
        if device.startswith("cuda"):
            raise ScorerError(f"--device {cfg.device} but the Ray cluster ({address or 'local'}) has no GPU; "
                              "use --device auto or cpu, or a cluster with GPUs")
        n, opts, share = workers or 1, {"num_cpus": 1}, None
    n = min(n, len(todo))
    actor_cls = ray.remote(**opts)(_ScoreActor)
    actors = [actor_cls.remote(cfg, loader_factory, share) for _ in range(n)]
    try:
        described = _ray_call(ray, [a.describe.remote() for a in actors], "starting a score actor")
        failed = [d for d in described if "error" in d]
        if failed:
            d = failed[0]
            raise ScorerError(f"{len(failed)} of {n} score actors failed to start (node {d['node']}, "
                              f"GPU {','.join(d['gpu_ids']) or 'none'}): {d['error']}")
        results = []
        pool = ActorPool(actors)
        try:
            for res in pool.map_unordered(lambda a, u: a.run_unit.remote(u), todo):
                results.append(res)
                if progress is not None:
                    progress(res.samples, res.tokens)
        except ray.exceptions.RayError as exc:
            raise ScorerError(f"a score actor failed: {_ray_error_line(exc)}") from None
    finally:
        for a in actors:
            ray.kill(a)
    return _report(units, results, described, time.perf_counter() - t0)


def _ray_call(ray, refs, what: str):
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as exc:
        raise ScorerError(f"{what}: {_ray_error_line(exc)}") from None


def _ray_error_line(exc) -> str:
    """One line for a Ray error: the task's own exception when there is one, else the actor's death."""
    import ray

    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
        return _one_line(cause)
    if isinstance(exc, ray.exceptions.RayActorError):
        return (f"{type(exc).__name__}: the actor process died ({_one_line(exc)}); "
                "its log is under /tmp/ray/session_latest/logs")
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    """`Type: first line of the message` (a ScorerError's message alone: it already says what to do)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if isinstance(exc, ScorerError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _report(units, results: list[UnitResult], workers: list[dict], seconds: float) -> StageReport:
    done = [r for r in results if not r.skipped]
    return StageReport(
        units=len(units), skipped=len(units) - len(done), samples=sum(r.samples for r in done),
        tokens=sum(r.tokens for r in done), padded_tokens=sum(r.padded_tokens for r in done),
        seconds=seconds, workers=workers)
