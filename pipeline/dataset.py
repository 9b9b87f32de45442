"""Training straight from prepared shards: a distributed, resumable, shuffling, packing IterableDataset.

    ds = ShardDataset("prepared/", seed=0, max_tokens=16384)      # packed rows, or batch_size=8 (padded)
    dl = ds.loader(num_workers=4)                                 # a torch DataLoader that tracks progress
    for batch in dl:
        loss = model(**batch).loss                                # HF names, Qwen2-VL / Qwen2.5-VL
    state = ds.state_dict()                                       # resume: ds.load_state_dict(state)

Who reads what. The shard list and per-shard sample counts come from the manifest (the selection's
manifest with `selection=True`); rank / world size from torch.distributed when it is initialised
(else the arguments, default 0 / 1); each DataLoader worker is one of `world_size × num_workers`
readers. With at least that many shards, the shards are dealt heaviest first to the rank, then the
reader of that rank, with the fewest samples (packs, tokens) so far (`balanced_split`); with fewer,
every reader streams all shards and keeps every G-th sample. Either way each sample is read by
exactly one reader per epoch.

Equal ranks (`equalize`, default on with several ranks). DDP's collectives hang when one rank runs
out of batches first, so every rank yields the smallest rank's batch count; `epoch_plan()` computes
every reader's count from the manifest (padded / samples), the pack plan, or a replay of the
shuffle + online packing on the manifest's n_tokens — no shard read, no communication. A longer
rank leaves out a random subset (drawn per seed, epoch and reader) of its readers' samples (padded)
or plan packs before the shuffle, or the last packs of its online-packed streams, and counts what it
left out (`dropped`, a log warning).

Order. Per epoch, the shard order is a permutation drawn from (seed, epoch), the same on every
rank; each reader then shuffles its stream through a buffer of `buffer_size` samples drawn from
(seed, epoch, reader). Memory is bounded by that buffer (plus the open packs), never by the corpus:
shards are read as streams through `ShardLoader.iter_shard`.

Resume. A reader's output is a pure function of (seed, epoch, world, num_workers, reader), so the
state is the epoch and how many batches each reader has delivered. `load_state_dict` makes every
reader skip (read but not collate) what it had delivered, and rotates the DataLoader's
round-robin so the next batch is the one that would have come next. Use `ds.loader(...)` (or
iterate `ds` itself) for the state to be tracked: a plain DataLoader runs the dataset in worker
processes the main process cannot see. Resume with the same world size and num_workers.

Checks (never a silent short epoch): a shard listed in the manifest but missing, a shard that ends
early or cannot be read (truncated, another format), a sample the selection or the pack plan lists
but the shard does not hold, a pack plan built from another manifest: each is a `ShardDataError`
naming the file.
"""
from __future__ import annotations

import os
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np

from .loader import PAD_ID, ShardLoader
from .storage import LazyFrames, StorageError
from .packing import OnlinePacker, PackedCollator, PaddedCollator, manifest_digest, read_plan

try:
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info
except ImportError:  # pragma: no cover - torch is a core dependency
    raise

STATE_VERSION = 2          # 2: shards dealt to readers by balanced_split (1: every G-th shard)
log = logging.getLogger("vlprep.dataset")


class ShardDataError(RuntimeError):
    """The shards, the manifest, the selection or the pack plan disagree; the message names the file."""


def out_tokenizer_path(out_dir: str | os.PathLike) -> str | None:
    """The tokenizer folder OUT was prepared with (OUT/job.json's `tokenizer:`, resolved as the job
    resolved it), or None for the built-in Qwen2 ranks."""
    import json

    from .config import JobConfig

    job = Path(out_dir) / "job.json"
    cfg = json.loads(job.read_text()) if job.exists() else {}
    if not cfg.get("tokenizer"):
        return None
    return str(JobConfig.from_dict(cfg).resolve_path(cfg["tokenizer"]))


def out_pad_id(out_dir: str | os.PathLike) -> int:
    """The pad id of the tokenizer OUT was prepared with: `<|endoftext|>` of job.json's `tokenizer:`
    folder (a Qwen3.5-style 248k vocabulary: 248044), else loader.PAD_ID (151643, the built-in ranks)."""
    from processors.tokenizer import get_tokenizer

    job = Path(out_dir) / "job.json"
    path = out_tokenizer_path(out_dir)
    if path is None:
        return PAD_ID
    try:
        return int(get_tokenizer(path).token_to_id("<|endoftext|>"))
    except (FileNotFoundError, KeyError) as exc:
        raise ShardDataError(f"{job} names tokenizer {path}, whose pad token cannot be read ({exc}); pass "
                             f"pad_id= (the tokenizer's <|endoftext|> id) to ShardDataset") from None


def dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world) from torch.distributed when initialised, else the arguments (default 0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        r, w = dist.get_rank(), dist.get_world_size()
        if (rank is not None and rank != r) or (world_size is not None and world_size != w):
            raise ValueError(f"rank={rank}, world_size={world_size} disagree with torch.distributed "
                             f"(rank {r} of {w}); leave them out when the process group is initialised")
        return r, w
    rank, world_size = (0 if rank is None else int(rank)), (1 if world_size is None else int(world_size))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0 … world_size-1 (got rank={rank}, world_size={world_size})")
    return rank, world_size


def sample_bytes(x) -> int:
    """Array bytes held by a sample (or a list of samples), its stored frames (pixels="frames") included."""
    if isinstance(x, list):
        return sum(sample_bytes(s) for s in x)
    n = sum(v.nbytes for v in x.values() if isinstance(v, np.ndarray))
    sp = x.get("stored_pixels")
    return n + sp.frames_nbytes if sp is not None else n


def buffer_shuffle(items, size: int, rng: np.random.Generator, max_bytes: int | None = None) -> Iterator:
    """Shuffle a stream through a buffer of at most `size` items and `max_bytes` array bytes
    (deterministic for a given rng state and stream): when the buffer is full, a random item
    leaves it for each one that enters."""
    buf: list = []
    held = 0
    for x in items:
        nb = sample_bytes(x) if max_bytes else 0
        while buf and (len(buf) >= size or (max_bytes and held + nb > max_bytes)):
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            out = buf.pop()
            held -= sample_bytes(out) if max_bytes else 0
            yield out
        buf.append(x)
        held += nb
    rng.shuffle(buf)
    yield from buf


@dataclass
class EpochPlan:
    """How many batches every reader yields in one epoch, computed from the manifest (and the pack plan)
    alone, the same on every rank and worker: `ShardDataset.epoch_plan()`.

    - batches: what every rank yields this epoch (equalised: the smallest rank's count).
    - rank_batches[r]: what rank r would yield without equalising.
    - quotas[r][w]: batches reader (r, w) yields; sum(quotas[r]) == batches when equalised.
    - dropped_batches[r], dropped_samples[r]: what rank r leaves out this epoch to match the others
      (samples longer than max_tokens are not in these counts: they are in `too_long`)."""

    epoch: int
    world_size: int
    num_workers: int
    equalize: bool
    batches: int
    rank_batches: list
    quotas: list
    dropped_batches: list
    dropped_samples: list


def equal_quotas(counts: list[int], target: int) -> list[int]:
    """Per-worker batch quotas ≤ counts summing to `target` (≤ sum(counts)): batches are taken off the
    worker with the most left (ties: the highest worker index), so the workers stay as even as they can."""
    q = list(counts)
    for _ in range(sum(q) - target):
        j = max(range(len(q)), key=lambda i: (q[i], i))
        q[j] -= 1
    return q


class ShardDataset(IterableDataset):
    """Samples (numpy dicts), padded batches (`batch_size`) or packed rows (`max_tokens`) of a prepared OUT.

    Parameters
    - out_dir: the `vlprep prepare` output directory.
    - seed, shuffle, buffer_size, buffer_bytes: the per-epoch shuffle (shard order + a buffer of at
      most buffer_size samples and buffer_bytes of their arrays, default 256 MiB per reader).
    - rank, world_size: taken from torch.distributed when it is initialised.
    - selection: train on `OUT/selection/manifest.parquet` (what `vlprep select` kept).
    - batch_size: padded batches of this many samples (PaddedCollator).
    - max_tokens: packed rows of at most this many tokens, packed online (best fit over
      `open_packs` open packs); with `pack_plan=True`, the packs `vlprep pack` wrote instead.
    - pad_id: the id padded rows are filled with; default: the `<|endoftext|>` of the tokenizer OUT
      was prepared with (`out_pad_id`: job.json's `tokenizer:` folder, else the Qwen2 151643).
    - preset: the manifest's preset by default. device / dtype / normalize / flash_kwargs go to the
      collator (normalize=False keeps pixels uint8; `pipeline.loader.normalize_pixels` on the GPU).
    - pixels: "frames" (with normalize=False) ships each sample's stored uint8 frames instead of
      pixel rows (half the bytes for images, no patchify in the workers); `to_device` rebuilds and
      normalises the rows on the device, bit-identical to the "rows" path.
    - collate: your own function list[sample] → batch, instead of the built-in collators.
    - equalize: every rank yields the same number of batches per epoch (DDP's collectives hang when
      one rank runs out first); the longer ranks drop their surplus, counted in `epoch_plan()` and
      `dropped`. Default: on when world_size > 1. Computed from the manifest (padded, samples), the
      pack plan (pack_plan=True) or a replay of the online packing on the manifest's token counts
      (max_tokens; the shuffle buffer is then bounded by buffer_size only, see docs/training.md).
    """

    def __init__(self, out_dir: str | os.PathLike, *, seed: int = 0, shuffle: bool = True, buffer_size: int = 256,
                 buffer_bytes: int = 256 << 20,
                 rank: int | None = None, world_size: int | None = None, selection: bool = False,
                 batch_size: int | None = None, max_tokens: int | None = None, pack_plan: bool = False,
                 open_packs: int = 8, preset=None, device="cpu", dtype=None, normalize: bool = True,
                 flash_kwargs: bool = False, collate=None, epoch: int = 0, pad_id: int | None = None,
                 pixels: str = "rows", equalize: bool | None = None):
        self.root = Path(out_dir)
        if pixels not in ("rows", "frames"):
            raise ValueError(f"pixels={pixels!r}: use 'rows' or 'frames'")
        if pixels == "frames" and normalize and collate is None:
            raise ValueError("pixels='frames' ships uint8 frames to be patchified on the training device: "
                             "give normalize=False and move batches with pipeline.dataset.to_device")
        self.pixels = pixels
        self.loader_ = ShardLoader(self.root)          # raises when OUT/shards is missing
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        self.seed, self.shuffle, self.buffer_size = int(seed), bool(shuffle), max(1, int(buffer_size))
        self.buffer_bytes = int(buffer_bytes) if buffer_bytes else None
        if batch_size is not None and (max_tokens is not None or pack_plan):
            raise ValueError("give batch_size (padded batches) or max_tokens / pack_plan (packed rows), not both")
        self.batch_size, self.max_tokens, self.open_packs = batch_size, max_tokens, open_packs
        self.selection = bool(selection)
        manifest_path = self.root / ("selection/manifest.parquet" if selection else "manifest.parquet")
        if not manifest_path.exists():
            hint = "run `vlprep select OUT --rule ...` first" if selection else "is OUT a finished `vlprep prepare`?"
            raise FileNotFoundError(f"{manifest_path} not found; {hint}")
        self.manifest_path = manifest_path
        import pyarrow.parquet as pq

        table = pq.read_table(manifest_path, columns=["id", "shard", "n_tokens", "preset"])
        self.shard_counts: dict[str, int] = dict(sorted(Counter(table.column("shard").to_pylist()).items()))
        self.num_samples = table.num_rows
        if not self.num_samples:   # an epoch of nothing would look like a working loader
            why = "`vlprep select` kept none" if selection else "every record was dropped or failed"
            raise ShardDataError(f"{manifest_path} lists no samples: {why}; see why with `vlprep stats {self.root}` "
                                 f"({self.root / 'ledger.parquet'})")
        self.preset = preset or (table.column("preset")[0].as_py() if table.num_rows else None)
        for shard in self.shard_counts:
            if not (self.root / shard).is_file():
                raise ShardDataError(f"shard {self.root / shard} is listed in {manifest_path} but missing; "
                                     f"re-run `vlprep prepare` on {self.root} to rebuild it")
        self.plan = None
        if pack_plan:
            self.plan = read_plan(self.root, self.selection)
            digest = manifest_digest(table)
            if self.plan.source != ("selection" if selection else "manifest") or self.plan.digest != digest:
                raise ShardDataError(
                    f"pack plan {self.plan.path} was built from {self.plan.source} with digest "
                    f"{self.plan.digest[:12]}, not from {manifest_path} (digest {digest[:12]}); re-run "
                    f"`vlprep pack {self.root} --max-tokens N{' --selection' if selection else ''}`")
            if max_tokens is not None and max_tokens != self.plan.max_tokens:
                raise ValueError(f"max_tokens={max_tokens} but the pack plan {self.plan.path} was built for "
                                 f"{self.plan.max_tokens}; leave max_tokens out or re-run `vlprep pack`")
            self.max_tokens = self.plan.max_tokens
        del table
        self.pad_id = pad_id
        if collate is not None:
            self.collate = collate
        elif self.max_tokens is not None:
            self.pad_id = out_pad_id(self.root) if pad_id is None else int(pad_id)
            self.collate = PackedCollator(self.preset, device, dtype, flash_kwargs=flash_kwargs, normalize=normalize,
                                          pad_id=self.pad_id)
        elif batch_size is not None:
            self.pad_id = out_pad_id(self.root) if pad_id is None else int(pad_id)
            self.collate = PaddedCollator(self.preset, device, dtype, normalize=normalize, pad_id=self.pad_id)
        else:
            self.collate = None
        self.equalize = self.world_size > 1 if equalize is None else bool(equalize)
        self._epoch_plans: dict[tuple[int, int], EpochPlan] = {}
        self._units: dict[str, np.ndarray] | None = None
        self._split: tuple = (None, None)     # ((epoch, G), balanced_split of that epoch)
        self.epoch = int(epoch)
        self.num_workers = 1
        self._consumed = [0]
        self._next = 0
        self._tracked = False
        self.lazy = True        # frames decoded in to_transfer (see _lazy_frames); False: the eager reference
        # slots per DataLoader worker for the batch hand-off (to_transfer / RingRef); None: the
        # loader's prefetch_factor + 2; 0: a fresh buffer per batch (the reference)
        self.ring_depth: int | None = None
        self._ring = 0
        self._shared_state = None      # persistent DataLoader workers read each epoch's state from it
        self._given_quotas = None      # a persistent worker: (epoch, num_workers, this rank's quotas) given to it
        self.too_long: list[str] = []

    # -- state -----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start the given epoch from its beginning (as DistributedSampler.set_epoch)."""
        self.epoch, self._consumed, self._next = int(epoch), [0] * self.num_workers, 0

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "seed": self.seed, "epoch": self.epoch, "rank": self.rank,
                "world_size": self.world_size, "num_workers": self.num_workers,
                "consumed": list(self._consumed), "next_worker": self._next, "equalize": self.equalize,
                "manifest": str(self.manifest_path.relative_to(self.root)), "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r} is not {STATE_VERSION}: saved by another vlprep")
        for key in ("seed", "world_size", "rank", "num_samples", "equalize"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"cannot resume: the state was saved with {key}={state.get(key)}, this dataset has "
                                 f"{key}={getattr(self, key)}; resume with the same {key}")
        self.epoch, self.num_workers = int(state["epoch"]), int(state["num_workers"])
        self._consumed, self._next = list(state["consumed"]), int(state["next_worker"])

    # -- iteration -------------------------------------------------------------------------------
    def loader(self, num_workers: int = 0, **kwargs) -> "StatefulLoader":
        """A torch DataLoader over this dataset (batch_size=None: the dataset batches) that keeps
        `state_dict()` up to date. Extra kwargs go to DataLoader (pin_memory, prefetch_factor, …)."""
        return StatefulLoader(self, num_workers=num_workers, **kwargs)

    def __iter__(self):
        info = get_worker_info()
        if info is None:          # iterated in this process: track progress here
            if self.num_workers != 1 and any(self._consumed):
                raise ValueError(f"this state was saved with num_workers={self.num_workers}; iterate it with "
                                 f"ds.loader(num_workers={self.num_workers})")
            self.num_workers = 1
            if len(self._consumed) != 1:
                self._consumed = [0]
            self._announce()
            for k, item in self._reader_stream(0, 1, self._consumed[0]):
                self._consumed[0] = k + 1
                yield item
            self.set_epoch(self.epoch + 1)
            return
        shared = getattr(self, "_shared_state", None)
        if shared is not None and shared.numel() == worker_state_len(info.num_workers, len(self.shard_counts)):
            # a persistent worker: this epoch's state from the training process
            self._take_worker_state(shared.tolist(), info.num_workers)
        if info.num_workers != self.num_workers:
            raise ValueError(f"the dataset expects num_workers={self.num_workers} (state saved so), the "
                             f"DataLoader has {info.num_workers}; use ds.loader(num_workers=...) with the same number")
        logical = (info.id + self._next) % info.num_workers
        for k, item in self._reader_stream(logical, info.num_workers, self._consumed[logical]):
            if not self._tracked:
                yield item
                continue
            try:
                item = to_transfer(item, self._ring)   # lazily read frames are decoded here (_lazy_frames)
            except StorageError as exc:       # names shard, sample and member; raised as the eager read does
                raise ShardDataError(f"{self.root}: {exc}; the shard is corrupt — re-run `vlprep prepare` "
                                     f"for it") from exc
            yield item, logical, k

    def _reader_stream(self, worker: int, num_workers: int, skip: int) -> Iterator[tuple[int, object]]:
        g, G = self.rank * num_workers + worker, self.world_size * num_workers
        rng = np.random.default_rng([self.seed, self.epoch, g])
        quota = self._quota(worker, num_workers)
        if self.plan is not None:
            groups = self._plan_groups(g, G)
            if quota is not None:
                groups = self._equalized(groups, g, G, quota)
            if self.shuffle:
                groups = buffer_shuffle(groups, max(1, self.buffer_size // 16), rng, self.buffer_bytes)
        else:
            samples = self._samples(g, G)
            if quota is not None and self.max_tokens is None:
                samples = self._equalized(samples, g, G, quota)
            if self.shuffle:
                samples = buffer_shuffle(samples, self.buffer_size, rng, self._shuffle_bytes())
            if self.max_tokens is not None:
                packer = OnlinePacker(self.max_tokens, self.open_packs)
                self.too_long = packer.stats.too_long
                groups = packer.pack(samples)
                if quota is not None:
                    groups = self._replayed(groups, quota, g)
            elif self.batch_size is not None:
                groups = _chunks(samples, self.batch_size)
            else:
                groups = samples
        for k, group in enumerate(groups):
            if k < skip:
                continue
            yield k, (self.collate(group) if self.collate is not None else group)

    def _equalized(self, units: Iterator, g: int, G: int, quota: int) -> Iterator:
        """Reader g's samples (padded, samples) or plan packs without the ones equalising drops: a random
        subset drawn per (seed, epoch, reader), so what is left out rotates across epochs even when a
        reader holds one shard; exactly `quota` batches remain."""
        total, keep = self._reader_units(self._reader_batch_sizes(g, G, self.epoch), quota)
        if keep >= total:
            yield from units
            return
        drop = set(self._drop_positions(g, self.epoch, total, keep).tolist())
        for i, x in enumerate(units):
            if i not in drop:
                yield x

    def _reader_units(self, sizes: list[int], quota: int) -> tuple[int, int]:
        """(units a reader streams, units it keeps for `quota` batches), from its batch sizes
        (`_reader_batch_sizes`): packs (pack plan) or samples (padded: quota × batch_size)."""
        if self.plan is not None:
            return len(sizes), min(len(sizes), quota)
        total = int(sum(sizes))
        return total, min(total, quota * (self.batch_size or 1))

    def _drop_positions(self, g: int, epoch: int, total: int, keep: int) -> np.ndarray:
        """Which of reader g's `total` units (stream positions) equalising leaves out in `epoch`."""
        rng = np.random.default_rng([self.seed, epoch, g, 1])
        return np.sort(rng.choice(total, total - keep, replace=False))

    def _shuffle_bytes(self) -> int | None:
        """The shuffle buffer's byte bound; none when equalised online packing replays the shuffle on
        the manifest's token counts (which cannot know the arrays' bytes): buffer_size bounds it then."""
        return None if (self.equalize and self.max_tokens is not None and self.plan is None) else self.buffer_bytes

    def _replayed(self, groups: Iterator[list], quota: int, g: int) -> Iterator[list]:
        """The first `quota` packs of an online-packed stream; fewer means the shards disagree with the
        manifest's n_tokens that the epoch plan was replayed from — an error, never a short rank (a hang)."""
        n = 0
        for n, group in enumerate(islice(groups, quota), 1):
            yield group
        if n < quota:
            raise ShardDataError(f"reader {g} of {self.root} packed {n} rows, but {self.manifest_path}'s n_tokens "
                                 f"give {quota}: the shards disagree with the manifest — re-run `vlprep prepare`")

    # -- the epoch's state for persistent DataLoader workers --------------------------------------
    def _worker_state(self) -> list[int]:
        """What a kept (persistent) DataLoader worker needs to start this epoch, written by the training
        process into the loader's shared tensor (`worker_state_len` values): [epoch, next worker, hand-off
        ring depth, consumed × workers, quota × workers, reader × shards]. The quotas are this rank's,
        from the epoch plan computed here (`_announce`), so a worker never computes the plan itself (with
        online packing: a replay of every reader's shuffle and packer); -1 without equalize. The readers
        are who reads each shard of the epoch's order (`balanced_split`, over every shard and rank); -1
        when every reader streams all shards (fewer shards than readers, or one reader)."""
        nw, G = self.num_workers, self.world_size * self.num_workers
        quotas = self.epoch_plan().quotas[self.rank] if self.equalize else [-1] * nw
        owners = [-1] * len(self.shard_counts)
        if self._dealt(G):
            reader = {s: g for g, mine in enumerate(self._readers_shards(G)) for s in mine}
            owners = [reader[s] for s in self._shard_order()]
        return [self.epoch, self._next, self._ring, *self._consumed, *quotas, *owners]

    def _take_worker_state(self, st: list[int], num_workers: int) -> None:
        """In a persistent worker: this epoch's state as `_worker_state` wrote it."""
        self.epoch, self._next, self._ring = st[:3]
        self._consumed, self.num_workers = st[3:3 + num_workers], num_workers
        self._given_quotas = (self.epoch, num_workers, st[3 + num_workers:3 + 2 * num_workers]) \
            if self.equalize else None
        G = self.world_size * num_workers
        if self._dealt(G):
            mine: list[list[str]] = [[] for _ in range(G)]
            for shard, g in zip(self._shard_order(), st[3 + 2 * num_workers:]):
                mine[g].append(shard)
            self._split = ((self.epoch, G), mine)

    def _quota(self, worker: int, num_workers: int) -> int | None:
        """Reader `worker`'s batch count this epoch (None without equalize): given to a persistent worker
        by the training process, else from epoch_plan() (computed by `_announce` in the training process
        and forked into fresh workers)."""
        if not self.equalize:
            return None
        given = self._given_quotas
        if given is not None and given[:2] == (self.epoch, num_workers):
            return given[2][worker]
        return self.epoch_plan(num_workers).quotas[self.rank][worker]

    # -- equal batches per rank ------------------------------------------------------------------
    def _announce(self) -> None:
        """Compute the epoch plan in the training process and say what equalising drops (never silently).
        Fresh DataLoader workers get the plan forked (or pickled) in; persistent ones their quotas through
        the loader's shared state (`_worker_state`): no worker computes it. The epoch's shard split is
        made here too, so fresh workers inherit it instead of each re-running `balanced_split`."""
        G = self.world_size * self.num_workers
        if self._dealt(G):
            self._readers_shards(G)
        if not self.equalize:
            return
        p = self.epoch_plan()
        if p.dropped_batches[self.rank]:
            log.warning("rank %d, epoch %d: %d samples (%d batches) left out so that all %d ranks yield %d batches; "
                        "ShardDataset.epoch_plan() has every rank's counts", self.rank, p.epoch,
                        p.dropped_samples[self.rank], p.dropped_batches[self.rank], p.world_size, p.batches)

    @property
    def dropped(self) -> int:
        """Samples this rank leaves out of the current epoch so that every rank yields the same number
        of batches (0 without equalize); see epoch_plan() for every rank's counts."""
        return self.epoch_plan().dropped_samples[self.rank]

    def epoch_plan(self, num_workers: int | None = None, epoch: int | None = None) -> EpochPlan:
        """Every reader's batch count for an epoch (default: the current one, this dataset's num_workers),
        computed from the manifest / pack plan without reading a shard; the same on every rank."""
        nw = self.num_workers if num_workers is None else max(1, int(num_workers))
        key = (self.epoch if epoch is None else int(epoch), nw)
        if key not in self._epoch_plans:
            self._epoch_plans = {key: self._compute_epoch_plan(*key)}
        return self._epoch_plans[key]

    def _compute_epoch_plan(self, epoch: int, nw: int) -> EpochPlan:
        W, G = self.world_size, self.world_size * nw
        sizes = [self._reader_batch_sizes(g, G, epoch) for g in range(G)]      # samples per batch, in order
        counts = [len(x) for x in sizes]
        rank_batches = [sum(counts[r * nw:(r + 1) * nw]) for r in range(W)]
        target = min(rank_batches) if self.equalize else None
        quotas = [equal_quotas(counts[r * nw:(r + 1) * nw], target) if self.equalize else counts[r * nw:(r + 1) * nw]
                  for r in range(W)]
        dropped_b = [rank_batches[r] - sum(quotas[r]) for r in range(W)]
        def dropped(g: int, q: int) -> int:
            if q >= len(sizes[g]):
                return 0
            if self.plan is None and self.max_tokens is not None:          # online: the packs after the quota
                return int(sum(sizes[g][q:]))
            total, keep = self._reader_units(sizes[g], q)
            if self.plan is None:
                return total - keep
            return int(np.asarray(sizes[g])[self._drop_positions(g, epoch, total, keep)].sum())

        dropped_s = [sum(dropped(r * nw + w, q) for w, q in enumerate(quotas[r])) for r in range(W)]
        return EpochPlan(epoch, W, nw, self.equalize, target if self.equalize else rank_batches[self.rank],
                         rank_batches, quotas, dropped_b, dropped_s)

    def _reader_batch_sizes(self, g: int, G: int, epoch: int) -> list[int]:
        """How many samples each batch reader g yields in `epoch` holds, in the order the stream yields
        them before the shuffle of packs (the order the equalising cut keeps them): a replay of
        `_reader_stream` on the manifest's counts, with the same shard assignment, shuffle and packer."""
        shards, strided = self._my_shards(g, G, epoch)
        if self.plan is not None:
            return _assigned(shards, strided, g, G, self._units_of()).tolist()
        if self.max_tokens is not None:
            lengths = _assigned(shards, strided, g, G, self._units_of()).tolist()
            if self.shuffle:
                lengths = buffer_shuffle(lengths, self.buffer_size, np.random.default_rng([self.seed, epoch, g]))
            return [len(p) for p in OnlinePacker(self.max_tokens, self.open_packs, length=int, name=str).pack(lengths)]
        total = sum(self.shard_counts[s] for s in shards)
        n = len(range(g, total, G)) if strided else total
        b = self.batch_size or 1
        return [b] * (n // b) + ([n % b] if n % b else [])

    def _units_of(self) -> dict[str, np.ndarray]:
        """Per shard, in stored order: the pack plan's pack sizes (with a pack plan; packs in the order
        `_plan_groups` yields them), else the manifest's n_tokens. Read once."""
        if self._units is None:
            import pyarrow.parquet as pq

            units: dict[str, list[int]] = {}
            if self.plan is not None:
                t = pq.read_table(self.plan.path, columns=["shard", "pack"])
                per: dict[str, dict[int, int]] = {}
                for shard, pack in zip(t.column("shard").to_pylist(), t.column("pack").to_pylist()):
                    if pack >= 0:
                        d = per.setdefault(shard, {})
                        d[pack] = d.get(pack, 0) + 1
                units = {s: np.asarray(list(d.values()), np.int32) for s, d in per.items()}
            else:
                t = pq.read_table(self.manifest_path, columns=["shard", "n_tokens"])
                shard = t.column("shard").combine_chunks().dictionary_encode()
                codes, ntok = shard.indices.to_numpy(), t.column("n_tokens").to_numpy().astype(np.int32)
                order = np.argsort(codes, kind="stable")          # stored order within each shard
                bounds = np.searchsorted(codes[order], np.arange(len(shard.dictionary) + 1))
                units = {name: ntok[order[bounds[i]:bounds[i + 1]]]
                         for i, name in enumerate(shard.dictionary.to_pylist())}
            self._units = units
        return self._units

    def _shard_order(self, epoch: int | None = None) -> list[str]:
        shards = list(self.shard_counts)
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch]).permutation(len(shards))
            shards = [shards[i] for i in perm]
        return shards

    def _my_shards(self, g: int, G: int, epoch: int | None = None) -> tuple[list[str], bool]:
        """(shards this reader opens, whether it must keep only every G-th item of them)."""
        if self._dealt(G):
            return self._readers_shards(G, epoch)[g], False
        return self._shard_order(epoch), G > 1

    def _dealt(self, G: int) -> bool:
        """Whether G readers are dealt shards of their own (balanced_split); else every reader streams
        all shards (one reader, or fewer shards than readers: every G-th item)."""
        return 1 < G <= len(self.shard_counts)

    def _readers_shards(self, G: int, epoch: int | None = None) -> list[list[str]]:
        """Every reader's shards in `epoch` (G readers, at most the number of shards): balanced_split of
        the epoch's order, kept for that (epoch, G)."""
        key = (self.epoch if epoch is None else int(epoch), G)
        if self._split[0] != key:
            shards = self._shard_order(epoch)
            self._split = (key, balanced_split(shards, [self._shard_weight(s) for s in shards],
                                               self.world_size, G // self.world_size))
        return self._split[1]

    def _shard_weight(self, shard: str) -> int:
        """What a shard adds to a reader's batch count: its packs (pack plan), tokens (online packing)
        or samples."""
        if self.plan is not None:
            return len(self._units_of().get(shard, ()))
        if self.max_tokens is not None:
            return int(self._units_of().get(shard, np.zeros(0, np.int32)).sum())
        return self.shard_counts[shard]

    def _samples(self, g: int, G: int) -> Iterator[dict]:
        shards, strided = self._my_shards(g, G)
        j = 0
        for shard in shards:
            for s in self._read_shard(shard):
                if strided:
                    j += 1
                    if (j - 1) % G != g:
                        continue
                yield s

    def _read_shard(self, shard: str) -> Iterator[dict]:
        """A shard's (selected) samples, checked against the manifest's count for it."""
        path = self.root / shard
        want = self.shard_counts[shard]
        keep = self._selected(shard) if self.selection else None
        n = 0
        try:
            for s in self.loader_.iter_shard(shard, pixels=self.pixels, lazy=self._lazy_frames()):
                if keep is not None:
                    if s["id"] not in keep:
                        continue
                    keep.discard(s["id"])
                n += 1
                yield s
        except ShardDataError:
            raise
        except Exception as exc:        # tarfile.ReadError, a missing member, a bad .npy header, …
            raise ShardDataError(f"shard {path} cannot be read after {n} samples ({type(exc).__name__}: {exc}); "
                                 f"it is truncated, corrupt or written by another vlprep format version — "
                                 f"re-run `vlprep prepare` for it") from exc
        if n != want:
            missing = f" (missing ids, e.g. {sorted(keep)[:3]})" if keep else ""
            raise ShardDataError(f"shard {path} holds {n} samples but {self.manifest_path} lists {want}{missing}; "
                                 f"the shard is truncated or stale — re-run `vlprep prepare` for it")

    def _lazy_frames(self) -> bool:
        """Read frames compressed (storage.LazyPixels) when they are decoded straight into the batch's
        transfer buffer: a StatefulLoader worker with a built-in collator of uint8 frames (to_transfer)."""
        return (self.lazy and self._tracked and self.pixels == "frames" and get_worker_info() is not None
                and isinstance(self.collate, (PaddedCollator, PackedCollator)) and not self.collate.normalize
                and str(self.collate.device) == "cpu")

    def _selected(self, shard: str) -> set[str]:
        import pyarrow.parquet as pq

        t = pq.read_table(self.manifest_path, columns=["id"], filters=[("shard", "==", shard)])
        return set(t.column("id").to_pylist())

    def _plan_groups(self, g: int, G: int) -> Iterator[list[dict]]:
        """The pack plan's packs for this reader, read shard by shard, window by window."""
        shards, strided = self._my_shards(g, G)
        j = 0
        for shard in shards:
            rows = self.plan.rows(shard)          # [(id, window, pack, n_tokens)] in stored order
            packs_of_window: dict[int, dict[int, list[int]]] = {}
            for i, (_, window, pack, _) in enumerate(rows):
                if pack >= 0:
                    packs_of_window.setdefault(window, {}).setdefault(pack, []).append(i)
            last_of_window = {w: i for i, (_, w, _, _) in enumerate(rows)}
            held: dict[int, dict] = {}
            i = 0
            for s in self._read_shard(shard):
                if i >= len(rows) or s["id"] != rows[i][0] or int(s["input_ids"].shape[0]) != rows[i][3]:
                    got = f"{s['id']!r} ({int(s['input_ids'].shape[0])} tokens)"
                    want = f"{rows[i][0]!r} ({rows[i][3]} tokens)" if i < len(rows) else "nothing"
                    raise ShardDataError(f"pack plan {self.plan.path} does not match shard {self.root / shard}: "
                                         f"sample {i} is {got}, the plan expects {want}; re-run `vlprep pack`")
                _, window, pack, _ = rows[i]
                if pack >= 0:
                    held[i] = s
                else:
                    self.too_long.append(s["id"])
                if last_of_window[window] == i:
                    for pack_rows in packs_of_window.get(window, {}).values():
                        if strided:
                            j += 1
                            if (j - 1) % G != g:
                                for r in pack_rows:
                                    held.pop(r)
                                continue
                        yield [held.pop(r) for r in pack_rows]
                i += 1


def balanced_split(shards: list[str], weights: list[int], world: int, workers: int) -> list[list[str]]:
    """The epoch's shards (in its order) dealt to world × workers readers (reader g = rank × workers +
    worker), longest-processing-time first: heaviest shard first (ties: the epoch's order), each to the
    rank with the least weight so far, then to that rank's reader with the least (ties: the lowest
    index). Each reader reads its shards in the epoch's order. Ranks end within about one light
    shard's weight of each other, so equalising drops little; a function of the manifest and the
    epoch's order alone."""
    rank_w = [0] * world
    reader_w = [0] * (world * workers)
    mine: list[list[int]] = [[] for _ in range(world * workers)]
    for i in sorted(range(len(shards)), key=lambda i: (-weights[i], i)):
        r = min(range(world), key=lambda k: (rank_w[k], k))
        g = min(range(r * workers, (r + 1) * workers), key=lambda k: (reader_w[k], k))
        rank_w[r] += weights[i]
        reader_w[g] += weights[i]
        mine[g].append(i)
    return [[shards[i] for i in sorted(m)] for m in mine]


def _assigned(shards: list[str], strided: bool, g: int, G: int, units: dict[str, np.ndarray]) -> np.ndarray:
    """A reader's units (tokens of samples, or samples of packs) of its shards in order; every G-th
    from g when strided (the same split `_samples` / `_plan_groups` make while reading)."""
    flat = np.concatenate([units.get(s, np.zeros(0, np.int32)) for s in shards] or [np.zeros(0, np.int32)])
    return flat[g::G] if strided else flat


def worker_state_len(num_workers: int, shards: int) -> int:
    """Values in a StatefulLoader's shared state for persistent workers (ShardDataset._worker_state)."""
    return 3 + 2 * num_workers + shards


def _chunks(items, n: int) -> Iterator[list]:
    chunk: list = []
    for x in items:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_ALIGN = 64        # byte offset of every tensor in a TransferBatch buffer (any dtype's view needs <= 8)
# a batch buffer up to this size crosses through the worker's pipe, a larger one as one shared-memory
# segment: the two cost the same CPU at ~4 MiB on this machine (docs/training.md "## Speed")
PIPE_MAX_BYTES = 4 << 20


class TransferBatch:
    """A Batch on its way from a DataLoader worker to the training process: ONE uint8 buffer plus a
    small spec (key, dtype, shape, offset), viewed back into bit-identical tensors on arrival.

    Why: torch moves every tensor a worker yields into its own shared-memory segment, and each
    segment's file descriptor is handed over through multiprocessing's resource sharer (a socket
    connection with an HMAC handshake per descriptor): measured 5-10 ms of CPU per segment on the
    loaded 2-core dev machine, more than reading a small sample. A padded batch has ~8 tensors, a frames batch
    one more per image or video. Here a batch is one buffer: up to `PIPE_MAX_BYTES` it is a numpy
    array pickled through the worker's result pipe (~0.1 ms for 64 KiB), above it one shared-memory
    segment (one handshake, no per-byte pipe copies). `pin_memory=True` pins the one buffer."""

    __slots__ = ("buf", "tensors", "frames", "plain", "ids", "geometry", "cls")

    def __init__(self, buf, tensors, frames, plain, ids, geometry, cls):
        self.buf, self.tensors, self.frames, self.plain = buf, tensors, frames, plain
        self.ids, self.geometry, self.cls = ids, geometry, cls

    def __getstate__(self):
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, state):
        for k, v in zip(self.__slots__, state):
            setattr(self, k, v)
        if isinstance(self.buf, RingRef):        # in the training process: a view of the worker's slot
            self.buf = self.buf.resolve()

    def pin_memory(self, device=None):
        buf = self._tensor()
        buf = buf.pin_memory(device) if device is not None else buf.pin_memory()
        return TransferBatch(buf, self.tensors, self.frames, self.plain, self.ids, self.geometry, self.cls)

    def _tensor(self):
        if isinstance(self.buf, RingRef):        # not pickled (same process): resolve here
            self.buf = self.buf.resolve()
        return torch.from_numpy(self.buf) if isinstance(self.buf, np.ndarray) else self.buf

    def unpack(self):
        buf = self._tensor()

        def view(spec):
            dtype, shape, off, nbytes = spec
            return buf[off:off + nbytes].view(dtype).view(shape)

        out = self.cls()
        for k, spec in self.tensors:
            out[k] = view(spec)
        out.update(self.plain)
        out.ids = self.ids
        out.frames = [(kind, view(spec)) for kind, spec in self.frames]
        out.geometry = self.geometry
        return out


# -- the worker's ring of shared-memory slots -----------------------------------------------------------
# A fresh shared-memory segment per batch costs, per batch: creating it in the worker (~9 ms CPU for
# ~20 MB), faulting its fresh pages in as the batch is written (~1 fault per 4 KiB), and handing its
# descriptor to the training process through multiprocessing's resource sharer (a socket connection
# with an HMAC handshake, 5-10 ms CPU); a batch up to PIPE_MAX_BYTES instead pays a pickle copy
# through the pipe on both sides. A worker instead writes its batches into a small ring of slots that
# stay mapped: each slot's descriptor crosses once (with the slot's first batch), later batches carry
# only (worker pid, slot, generation).
#
# Safety (a batch held by the training loop is never overwritten): byte 0 of a slot is its busy flag.
# The worker sets it before writing a batch and reuses only a slot whose flag is 0. The training
# process clears it in a weakref finalizer of a per-batch ndarray over the whole slot, the base of the
# batch's buffer and of every numpy view of it (torch.from_numpy holds the buffer until the last tensor,
# view or `.numpy()` of the batch is freed; RingRef.resolve says why not the buffer), so a slot is
# free again only when nothing of its batch is referenced any more. When every slot is busy (a loop
# that keeps many batches), the batch goes the old way (a fresh buffer): never a wait, never a reuse.
RING_HEADER = 64                   # slot bytes before the batch: [0] busy flag (1: in flight or held)
_RING_GRAIN = 1 << 20              # slot capacities are rounded up to this (a batch a bit larger reuses)
_WORKER_RING: "_Ring | None" = None
_RING_SLOTS: dict = {}             # training process: (worker pid, slot) -> (generation, uint8 tensor)


class RingRef:
    """What crosses the pipe instead of a batch buffer: which slot of which worker holds the batch
    (and the slot's shared tensor itself the first time it is used, or after it grew)."""

    __slots__ = ("pid", "slot", "gen", "size", "tensor")

    def __init__(self, pid, slot, gen, size, tensor):
        self.pid, self.slot, self.gen, self.size, self.tensor = pid, slot, gen, size, tensor

    def __getstate__(self):
        return (self.pid, self.slot, self.gen, self.size, self.tensor)

    def __setstate__(self, state):
        self.pid, self.slot, self.gen, self.size, self.tensor = state

    def resolve(self) -> np.ndarray:
        """The batch bytes as a fresh ndarray over the slot; the slot is released when it is freed."""
        import weakref

        key = (self.pid, self.slot)
        if self.tensor is not None:
            _RING_SLOTS[key] = (self.gen, self.tensor)
        gen, t = _RING_SLOTS.get(key, (None, None))
        if gen != self.gen:
            raise RuntimeError(f"DataLoader worker {self.pid}: slot {self.slot} generation {self.gen} was never "
                               f"received (have {gen}); batches must be unpickled in the order they were sent")
        # The finalizer goes on `whole`, a fresh ndarray per batch, not on `arr`: numpy collapses a
        # view's base to the first array that owns its memory or whose base is not an ndarray, so a
        # view of `arr` (arr[a:b], arr.view(...)) holds `whole` and not `arr`. Everything of the batch
        # (arr, its numpy views, torch.from_numpy(arr) and its views) keeps `whole` alive.
        whole = t.numpy()
        arr = whole[RING_HEADER:RING_HEADER + self.size]
        weakref.finalize(whole, _release_slot, t, os.getpid())
        return arr


_SHM_FULL_WARNED = False


def _new_shared_uint8(size: int):
    """A uint8 tensor over a fresh shared-memory segment of `size` bytes, or None where /dev/shm has
    no room (ENOSPC: a container's small /dev/shm): the caller sends the batch through the pipe."""
    global _SHM_FULL_WARNED
    try:
        storage = torch.UntypedStorage._new_shared(size)
    except (RuntimeError, OSError) as exc:
        if "No space left" not in str(exc) and "ENOSPC" not in str(exc) and "shared memory" not in str(exc):
            raise
        if not _SHM_FULL_WARNED:
            _SHM_FULL_WARNED = True
            print(f"vlprep: DataLoader worker {os.getpid()}: no room in /dev/shm for {size >> 20} MiB ({exc}); batches "
                  f"go through the pipe (slower): enlarge /dev/shm (docker --shm-size) or lower ds.ring_depth",
                  file=sys.stderr, flush=True)
        return None
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (size,), (1,))


def _release_slot(slot: torch.Tensor, owner: int) -> None:
    # only in the process that received the batch: a child forked from it (an eval loader's workers,
    # os.fork) inherits the batch and this finalizer, and its copy going says nothing about the parent's
    if os.getpid() == owner:
        slot[0] = 0                   # the busy flag: the worker may reuse the slot


def forget_ring_slots(pids) -> None:
    """Drop the training process's mappings of these (finished) workers' slots; batches still held
    keep their own slot alive."""
    pids = set(pids)
    for key in [k for k in _RING_SLOTS if k[0] in pids]:
        del _RING_SLOTS[key]


class _Ring:
    """A worker's slots (allocated on first need, up to `depth`): [tensor, capacity, generation]."""

    def __init__(self, depth: int):
        self.pid, self.depth = os.getpid(), depth
        self.slots: list = []
        self.fallbacks = 0
        self.shm_full = False

    def take(self, size: int):
        """(slot index, uint8 tensor of the whole slot, RingRef) for a batch of `size` bytes, the slot
        marked busy; None when every slot is busy (the caller sends a fresh buffer)."""
        free = [i for i, sl in enumerate(self.slots) if sl[0][0] == 0]
        fits = [i for i in free if self.slots[i][1] >= size]
        send = None
        if fits:
            i = min(fits, key=lambda i: self.slots[i][1])
        elif not self.shm_full and (len(self.slots) < self.depth or free):
            cap = -(-(size + RING_HEADER) * 5 // 4 // _RING_GRAIN) * _RING_GRAIN
            t = _new_shared_uint8(cap)
            if t is None:                           # /dev/shm is full: no new slots (the old ones stay)
                self.shm_full = True
                self.fallbacks += 1
                return None
            if free:                                # grow the smallest free slot
                i = min(free, key=lambda i: self.slots[i][1])
                self.slots[i] = [t, cap - RING_HEADER, self.slots[i][2] + 1]
            else:
                i = len(self.slots)
                self.slots.append([t, cap - RING_HEADER, 0])
            send = t
        else:
            self.fallbacks += 1
            return None
        t, _, gen = self.slots[i]
        t[0] = 1
        return t, RingRef(self.pid, i, gen, size, send)


def _worker_ring(depth: int) -> "_Ring":
    global _WORKER_RING
    if _WORKER_RING is None or _WORKER_RING.pid != os.getpid() or _WORKER_RING.depth != depth:
        _WORKER_RING = _Ring(depth)
    return _WORKER_RING


def to_transfer(item, ring: int = 0):
    """A built-in collator's Batch → TransferBatch (one buffer: a slot of this worker's ring of
    `ring` shared-memory slots when one is free, else pickled up to PIPE_MAX_BYTES, else one fresh
    shared-memory segment); anything else (a custom collate's output) as it is."""
    from .packing import Batch

    if not isinstance(item, Batch):
        return item
    frames = getattr(item, "frames", None) or []
    tensors = [(k, v) for k, v in item.items() if isinstance(v, torch.Tensor)]
    if any(v.device.type != "cpu" for _, v in tensors) or \
            any(not isinstance(f, LazyFrames) and f.device.type != "cpu" for _, f in frames):
        return item                   # collated onto an accelerator in the worker: leave it to torch
    specs, total = [], 0
    for t in [v for _, v in tensors] + [f for _, f in frames]:
        lazy = isinstance(t, LazyFrames)      # still compressed: decoded into the buffer below
        specs.append((torch.uint8 if lazy else t.dtype, tuple(t.shape), total, t.nbytes))
        total += -(-t.nbytes // _ALIGN) * _ALIGN
    size = max(total, 1)
    slot = _worker_ring(ring).take(size) if ring else None
    if slot is not None:                        # a reused slot: its pages are already mapped on both sides
        whole, arr = slot
        buf = whole[RING_HEADER:RING_HEADER + size]
    else:
        # one shared-memory segment above PIPE_MAX_BYTES, as torch's default_collate makes; the pipe
        # below it, or where /dev/shm is full
        arr = _new_shared_uint8(size) if size > PIPE_MAX_BYTES else None
        buf = arr
        if arr is None:
            arr = np.empty(size, np.uint8)      # pickled through the result pipe
            buf = torch.from_numpy(arr)
    try:
        for t, (_, _, off, nbytes) in zip([v for _, v in tensors] + [f for _, f in frames], specs):
            if isinstance(t, LazyFrames):
                if nbytes:
                    t.decode_into(buf[off:off + nbytes].numpy().reshape(t.shape))   # StorageError names the member
            elif nbytes:
                buf[off:off + nbytes].view(t.dtype).view(t.shape).copy_(t)
    except BaseException:
        if slot is not None:                    # the batch is not sent: its slot is free again
            slot[0][0] = 0
        raise
    n = len(tensors)
    return TransferBatch(arr, [(k, spec) for (k, _), spec in zip(tensors, specs[:n])],
                         [(kind, spec) for (kind, _), spec in zip(frames, specs[n:])],
                         {k: v for k, v in item.items() if not isinstance(v, torch.Tensor)},
                         list(getattr(item, "ids", [])), getattr(item, "geometry", None), type(item))


class StatefulLoader(DataLoader):
    """torch DataLoader over a ShardDataset that reports each delivered batch back to the dataset,
    so that `dataset.state_dict()` in the training process is exact, with any num_workers.

    `persistent_workers=True` keeps the workers (and their hand-off slots) across epochs: each epoch
    the training process writes the epoch, the resume position, the hand-off depth and its readers'
    batch quotas (from the epoch plan it computes once) into a small shared tensor that the workers
    read when they start the epoch's iteration, so every epoch has its own shuffle, `load_state_dict`
    works as without it, and no worker recomputes the epoch plan. When a kept worker has died (torch
    raises in the loop), iterating the loader again starts fresh workers at the batch after the last
    one delivered."""

    def __init__(self, dataset: ShardDataset, num_workers: int = 0, **kwargs):
        kwargs.setdefault("batch_size", None)
        if kwargs["batch_size"] is not None:
            raise ValueError("ShardDataset batches itself: give batch_size/max_tokens to the dataset, not the loader")
        super().__init__(dataset, num_workers=num_workers, **kwargs)
        # persistent workers: ShardDataset._worker_state (epoch, next worker, ring depth, consumed and quota
        # per worker, reader per shard), written here each epoch, read by the workers (which got it when started)
        self._shared = torch.zeros(worker_state_len(num_workers, len(dataset.shard_counts)),
                                   dtype=torch.int64).share_memory_() \
            if self.persistent_workers else None

    def __iter__(self):
        ds: ShardDataset = self.dataset
        if self.num_workers == 0:
            yield from ds
            return
        if ds.num_workers != self.num_workers:
            if any(ds._consumed):
                raise ValueError(f"the dataset's state was saved with num_workers={ds.num_workers}; resume with "
                                 f"ds.loader(num_workers={ds.num_workers})")
            ds.num_workers, ds._consumed, ds._next = self.num_workers, [0] * self.num_workers, 0
        ds._announce()                 # the epoch plan, once: forked into fresh workers, its quotas sent to kept ones below
        ds._tracked = True
        ds._ring = ds.ring_depth if ds.ring_depth is not None else (self.prefetch_factor or 2) + 2
        if self._shared is not None:
            self._shared.copy_(torch.tensor(ds._worker_state(), dtype=torch.int64))
        ds._shared_state = self._shared
        kept = self._iterator if self.persistent_workers else None
        if kept is not None and not all(w.is_alive() for w in getattr(kept, "_workers", [])):
            # a kept worker died (killed, out of memory) and torch would wait on it for good: start the
            # workers afresh, from the position the training process has (the batches it was handed)
            kept._shutdown_workers()
            self._iterator = None
        try:
            it = super().__iter__()
        finally:
            ds._tracked, ds._shared_state = False, None
        pids = [w.pid for w in getattr(it, "_workers", [])]
        if self.persistent_workers and getattr(self, "_ring_owner", None) is not it:
            import weakref

            self._ring_owner = it       # the kept workers' slots are forgotten when their iterator goes
            weakref.finalize(it, forget_ring_slots, pids)
        try:
            for item, logical, k in it:
                if isinstance(item, TransferBatch):
                    item = item.unpack()
                ds._consumed[logical] = k + 1
                ds._next = (logical + 1) % self.num_workers
                yield item
        finally:
            if not self.persistent_workers:
                forget_ring_slots(pids)
        ds.set_epoch(ds.epoch + 1)


def sample_from_webdataset(row: dict) -> dict:
    """A row decoded by `webdataset.WebDataset(urls).decode()` or `ray.data.read_webdataset(urls)`
    → the sample dict of `ShardLoader.iter_shard` (id, the 7 arrays, meta), ready for
    PaddedCollator / PackedCollator. (The arrays are .npy + .json members both libraries decode by
    extension; the pixels, stored once per frame (shard format 2), are rebuilt here from their raw
    members — decode without image handlers so they stay exact.)"""
    from .loader import ARRAYS

    if "pixels.json" in row:                 # shard format 2: pixels stored once per frame (storage.py)
        from .storage import pixels_from_row

        row = {**row, "pixel_values.npy": pixels_from_row(row)}
    missing = [f"{name}.npy" for name in ARRAYS if f"{name}.npy" not in row]
    if missing:
        raise KeyError(f"row {row.get('__key__')!r} from {row.get('__url__', '?')} lacks {missing}: not a "
                       f"vlprep shard of this format")
    if any(isinstance(row[f"{name}.npy"], (bytes, bytearray)) for name in ARRAYS):
        raise ValueError(f"row {row.get('__key__')!r} from {row.get('__url__', '?')} is not decoded: use "
                         f"webdataset.WebDataset(urls).decode() (ray.data.read_webdataset decodes by default)")
    meta = row.get("meta.json") or {}
    out = {name: np.asarray(row[f"{name}.npy"]) for name in ARRAYS}
    out["meta"] = meta
    out["id"] = meta.get("id", row.get("__key__"))
    return out


def to_device(batch: dict, device, preset=None, dtype=None, non_blocking: bool = True) -> dict:
    """Move a batch to `device`; uint8 pixel rows (a dataset built with normalize=False) are
    normalised there (pipeline.loader.normalize_pixels), so the host ships 1 byte per value, not 4."""
    from .loader import normalize_pixels

    out = type(batch)()
    if hasattr(batch, "ids"):
        out.ids = batch.ids
    frames = getattr(batch, "frames", None)
    if frames:                      # pixels="frames": patchify the stored frames here, then normalise
        from processors.patches import patchify_torch

        g = batch.geometry
        for key, kind in (("pixel_values", "image"), ("pixel_values_videos", "video")):
            parts = [patchify_torch(f.to(device, non_blocking=non_blocking), g.patch_size, g.merge_size,
                                    g.temporal_patch_size) for k, f in frames if k == kind]
            if parts:
                out[key] = normalize_pixels(parts[0] if len(parts) == 1 else torch.cat(parts), preset, dtype)
    for k, v in batch.items():
        if not isinstance(v, torch.Tensor):
            out[k] = v
            continue
        v = v.to(device, non_blocking=non_blocking)
        if k in ("pixel_values", "pixel_values_videos") and v.dtype == torch.uint8:
            v = normalize_pixels(v, preset, dtype)
        elif v.is_floating_point() and dtype is not None and k != "second_per_grid_ts":
            v = v.to(dtype)
        out[k] = v
    return out
