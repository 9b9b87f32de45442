"""Packing samples into sequences of at most `max_tokens`, and the packed batch transformers reads.

A packed batch is one row [1, T] holding several samples back to back. For Qwen2-VL / Qwen2.5-VL,
transformers (5.x, `Qwen2VLTextModel.forward`) reads packing from a 4-row `position_ids`
[4, 1, T]: row 0 is the plain text position (0 … L_i-1, restarting at every sample), from which
`masking_utils.find_packed_sequence_indices` builds the block-diagonal causal mask (eager, sdpa and
flex attention alike; flash-attention 2 reads the same boundaries from it, or from the
`cu_seq_lens_*` kwargs); rows 1-3 are each sample's own M-RoPE ids (temporal, height, width), exactly
as stored in the shard. Pixel rows and grids are concatenated in sample order (the vision tower
already works image by image from the grids), `second_per_grid_ts` one value per video.
Qwen3-VL's `Qwen3VLTextModel` reads the same 4-row layout (tests/test_packing_equivalence.py and
tests/test_qwen3_followups.py: image, video with `<t seconds>` text, qwen3-vl and qwen3-vl-tf5).

Labels: the first label of every sample is set to -100. Run alone, a sample's first label is never
predicted (the loss shifts by one); packed, it would be predicted from the previous sample's last
token. With that, the packed loss equals the token-weighted mean of the samples' own losses.

A sample longer than `max_tokens` is never cut: packing skips it and counts it (`PackStats.too_long`,
and the pack plan lists it with pack = -1), so one outlier does not stop a training run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from processors.collate import PAD_ID, batch_to_model_inputs, collate, pack_collate, plan_packs  # noqa: F401
from processors.presets import get_preset


# -- plans --------------------------------------------------------------------------------------------

# plan_packs and pack_collate live in processors.collate (shared with the scorers' batching).


@dataclass
class PackStats:
    """Counts of one packing run: packs, samples, tokens, capacity (packs × max_tokens), skipped."""

    max_tokens: int
    packs: int = 0
    samples: int = 0
    tokens: int = 0
    too_long: list[str] = field(default_factory=list)

    @property
    def fill(self) -> float:
        """Share of the packed sequences' capacity holding real tokens (1.0 = no padding)."""
        return self.tokens / (self.packs * self.max_tokens) if self.packs else 0.0

    def add(self, lengths: Iterable[int]) -> None:
        lengths = list(lengths)
        self.packs += 1
        self.samples += len(lengths)
        self.tokens += int(sum(lengths))


class OnlinePacker:
    """Greedy online packing over a bounded set of open packs (deterministic for a given stream).

    Each sample goes into the fullest open pack that still takes it (best fit); when none does and
    `open_packs` packs are open, the fullest open pack is emitted first. Memory: at most
    `open_packs` packs of samples. `flush()` emits what is left, fullest first.
    """

    def __init__(self, max_tokens: int, open_packs: int = 8, length=lambda s: int(s["input_ids"].shape[0]),
                 name=lambda s: str(s.get("id"))):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be ≥ 1 (got {max_tokens})")
        self.max_tokens, self.open_packs = max_tokens, max(1, open_packs)
        self.length, self.name = length, name
        self.stats = PackStats(max_tokens)
        self._packs: list[list] = []
        self._used: list[int] = []

    def push(self, sample) -> Iterator[list]:
        n = self.length(sample)
        if n > self.max_tokens:
            self.stats.too_long.append(self.name(sample))
            return
        fits = [j for j in range(len(self._packs)) if self._used[j] + n <= self.max_tokens]
        if not fits:
            if len(self._packs) >= self.open_packs:
                yield self._emit(max(range(len(self._packs)), key=lambda j: (self._used[j], -j)))
            self._packs.append([sample])
            self._used.append(n)
            return
        j = max(fits, key=lambda j: (self._used[j], -j))
        self._packs[j].append(sample)
        self._used[j] += n

    def flush(self) -> Iterator[list]:
        while self._packs:
            yield self._emit(max(range(len(self._packs)), key=lambda j: (self._used[j], -j)))

    def _emit(self, j: int) -> list:
        pack = self._packs.pop(j)
        self._used.pop(j)
        self.stats.add(self.length(s) for s in pack)
        return pack

    def pack(self, samples: Iterable) -> Iterator[list]:
        for s in samples:
            yield from self.push(s)
        yield from self.flush()


# -- packed batches -----------------------------------------------------------------------------------

class Batch(dict):
    """A model-input dict (HF names, torch tensors) that also carries the ids of its samples in
    `.ids` (an attribute, not a key, so `model(**batch)` sees only model inputs)."""

    ids: list[str] = []
    frames: list = []        # stored uint8 frames still to patchify (pixels="frames", normalize=False)
    geometry = None


def _frames_batch(samples: list[dict], np_batch: dict, preset, device, dtype) -> "Batch | None":
    """With normalize=False and samples read with pixels="frames": model inputs without pixel rows,
    the stored uint8 frames riding along in `.frames` ([(kind, [n, H, W, 3] tensor)], images then
    videos, in sample order) with their `.geometry`; `pipeline.dataset.to_device` patchifies and
    normalises them on the training device. Each image pixel crosses processes once, not twice (the
    temporal patch repeats an image), and the worker does no patchify. None when a sample has rows."""
    import numpy as np
    import torch

    sps = [s.get("stored_pixels") for s in samples]
    if any(sp is None or sp.geometry.fixed_size is not None for sp in sps) or len({sp.geometry for sp in sps}) != 1:
        return None
    empty = np.zeros((0, 0), np.uint8)
    out = Batch(batch_to_model_inputs({**np_batch, "pixel_values": empty, "pixel_values_videos": empty},
                                      preset, device, dtype, normalize=False))
    # frames read lazily (storage.LazyPixels, only in ShardDataset's workers) stay compressed here:
    # pipeline.dataset.to_transfer decodes them straight into the batch's buffer
    if all(hasattr(sp, "lazy") for sp in sps):
        frames = [(lf.kind, lf) for kind in ("image", "video") for sp in sps for lf in sp.lazy if lf.kind == kind]
    else:
        frames = [(k, torch.from_numpy(np.ascontiguousarray(f))) for kind in ("image", "video")
                  for sp in sps for k, f in sp.items if k == kind]
    kinds = {k for k, _ in frames}
    if "image" in kinds:
        out["image_grid_thw"] = torch.from_numpy(np_batch["image_grid_thw"].astype(np.int64)).to(device)
    if "video" in kinds:
        out["video_grid_thw"] = torch.from_numpy(np_batch["video_grid_thw"].astype(np.int64)).to(device)
        out["second_per_grid_ts"] = torch.from_numpy(np_batch["second_per_grid_ts"].astype(np.float32)).to(device)
    out.frames, out.geometry = frames, sps[0].geometry
    return out


class PaddedCollator:
    """list of loaded samples → padded model inputs (torch), the same as `loader.to_model_inputs`."""

    def __init__(self, preset=None, device="cpu", dtype=None, pad_id: int = PAD_ID, normalize: bool = True):
        self.preset, self.device, self.dtype, self.pad_id, self.normalize = get_preset(preset), device, dtype, pad_id, normalize

    def __call__(self, samples: list[dict]) -> Batch:
        out = None
        if not self.normalize and "stored_pixels" in samples[0]:
            out = _frames_batch(samples, collate(samples, self.pad_id, pixels=False), self.preset, self.device, self.dtype)
        if out is None:
            out = Batch(batch_to_model_inputs(collate(samples, self.pad_id), self.preset, self.device, self.dtype,
                                              normalize=self.normalize))
        out.ids = [s["id"] for s in samples]
        return out


class PackedCollator:
    """list of loaded samples → one packed row of model inputs (torch) for Qwen2-VL / Qwen2.5-VL.

    `cu_seq_lens` is kept out of the model inputs unless `flash_kwargs=True` (then the
    flash-attention kwargs cu_seq_lens_q/k, max_length_q/k are added for attn_implementation
    "flash_attention_2"); eager/sdpa read the boundaries from position_ids row 0.
    """

    def __init__(self, preset=None, device="cpu", dtype=None, pad_to: int | None = None,
                 flash_kwargs: bool = False, pad_id: int = PAD_ID, normalize: bool = True):
        self.preset, self.device, self.dtype = get_preset(preset), device, dtype
        self.pad_to, self.flash_kwargs, self.pad_id, self.normalize = pad_to, flash_kwargs, pad_id, normalize

    def __call__(self, samples: list[dict]) -> Batch:
        import torch

        out = None
        if not self.normalize and "stored_pixels" in samples[0]:
            packed = pack_collate(samples, self.pad_to, self.pad_id, self.flash_kwargs, pixels=False)
            out = _frames_batch(samples, packed, self.preset, self.device, self.dtype)
        if out is None:
            packed = pack_collate(samples, self.pad_to, self.pad_id, self.flash_kwargs)
            out = Batch(batch_to_model_inputs(packed, self.preset, self.device, self.dtype, normalize=self.normalize))
        if self.flash_kwargs:
            for k in ("cu_seq_lens_q", "cu_seq_lens_k"):
                out[k] = torch.from_numpy(packed[k]).to(self.device)
            out["max_length_q"] = out["max_length_k"] = packed["max_length_q"]
        out["use_cache"] = False     # with a cache, transformers ignores the packed boundaries
        out.ids = [s["id"] for s in samples]
        return out


# -- the offline pack plan (`vlprep pack`) ----------------------------------------------------------

def plan_path(out_dir, selection: bool = False):
    """Where `vlprep pack` writes the plan: next to the manifest it was built from."""
    from pathlib import Path

    return Path(out_dir) / ("selection/packs.parquet" if selection else "packs.parquet")


def manifest_digest(table) -> str:
    """sha1 over a manifest's (id, shard, n_tokens) rows in order: what a pack plan was built from."""
    import hashlib

    h = hashlib.sha1()
    for col in ("id", "shard", "n_tokens"):
        for v in table.column(col).to_pylist():
            h.update(str(v).encode())
            h.update(b"\0")
        h.update(b"\1")
    return h.hexdigest()


def build_plan(table, max_tokens: int, window: int = 256):
    """Pack plan rows for a manifest table (columns id, shard, n_tokens; rows in stored order).

    Packs never cross a shard or a window of `window` consecutive samples of it, so the dataset
    replays a plan while streaming shards with at most one window of samples in memory.
    Returns (pyarrow table: shard, id, window, pack (-1: longer than max_tokens), n_tokens; PackStats).
    """
    import pyarrow as pa

    if window < 1:
        raise ValueError(f"window must be ≥ 1 (got {window})")
    ids = table.column("id").to_pylist()
    shards = table.column("shard").to_pylist()
    ntok = table.column("n_tokens").to_pylist()
    by_shard: dict[str, list[int]] = {}
    for i, s in enumerate(shards):
        by_shard.setdefault(s, []).append(i)
    stats = PackStats(max_tokens)
    window_of, pack_of = [0] * len(ids), [-1] * len(ids)
    next_pack = 0
    for shard in sorted(by_shard):
        rows = by_shard[shard]
        for w0 in range(0, len(rows), window):
            chunk = rows[w0:w0 + window]
            packs, too_long = plan_packs([ntok[r] for r in chunk], max_tokens)
            for r in chunk:
                window_of[r] = w0 // window
            for p in packs:
                for k in p:
                    pack_of[chunk[k]] = next_pack
                stats.add(ntok[chunk[k]] for k in p)
                next_pack += 1
            stats.too_long.extend(ids[chunk[k]] for k in too_long)
    out = pa.table({"shard": shards, "id": ids, "window": pa.array(window_of, pa.int64()),
                    "pack": pa.array(pack_of, pa.int64()), "n_tokens": pa.array(ntok, pa.int64())})
    return out, stats


class PackPlan:
    """A pack plan read back: metadata (source, digest, max_tokens, window) and per-shard rows."""

    def __init__(self, path, meta: dict):
        self.path = path
        self.source, self.digest = meta["source"], meta["digest"]
        self.max_tokens, self.window = int(meta["max_tokens"]), int(meta["window"])

    def rows(self, shard: str) -> list[tuple[str, int, int, int]]:
        """(id, window, pack, n_tokens) of one shard's samples, in stored order."""
        import pyarrow.parquet as pq

        t = pq.read_table(self.path, columns=["id", "window", "pack", "n_tokens"], filters=[("shard", "==", shard)])
        return list(zip(*(t.column(c).to_pylist() for c in ("id", "window", "pack", "n_tokens"))))


def write_plan(out_dir, plan_table, *, source: str, digest: str, max_tokens: int, window: int) -> "Path":
    import json

    from .io import write_table

    meta = {"source": source, "digest": digest, "max_tokens": max_tokens, "window": window, "version": 1}
    t = plan_table.replace_schema_metadata({b"vlprep.pack_plan": json.dumps(meta, sort_keys=True).encode()})
    path = plan_path(out_dir, source == "selection")
    write_table(t, path)
    return path


def read_plan(out_dir, selection: bool = False) -> PackPlan:
    import json

    import pyarrow.parquet as pq

    path = plan_path(out_dir, selection)
    if not path.exists():
        raise FileNotFoundError(f"no pack plan at {path}; run `vlprep pack {out_dir} --max-tokens N"
                                f"{' --selection' if selection else ''}` first")
    raw = (pq.read_schema(path).metadata or {}).get(b"vlprep.pack_plan")
    if raw is None:
        raise ValueError(f"{path} has no vlprep pack-plan metadata; re-run `vlprep pack`")
    meta = json.loads(raw)
    if meta.get("version") != 1:
        raise ValueError(f"{path} is pack plan version {meta.get('version')}, this vlprep reads version 1; re-run `vlprep pack`")
    return PackPlan(path, meta)
