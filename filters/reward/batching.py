"""Token-budget batching and collation onto the device.

Samples of similar length go together (sorted by length, a new batch starts when the budget or
the padding cap would be exceeded), so padding stays under `max_padding` of the batch's tokens.
Packed mode concatenates samples into one row instead (no padding at all); it needs an attention
backend that keeps packed samples apart (FlashAttention-2 varlen via a 4-row position_ids, or the
block-diagonal mask transformers builds from text positions).

Pixels travel as uint8 (4x less host->device traffic than float32) and are normalised on the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from processors.collate import collate, device_pixel_rows, normalize_pixels, pack_collate
from processors.collate import plan_packs as _plan_packs
from processors.presets import ENDOFTEXT_ID, VISION_END_ID, VISION_START_ID, Preset

ARRAY_FIELDS = ("input_ids", "labels", "position_ids", "pixel_values", "image_grid_thw",
                "video_grid_thw", "second_per_grid_ts")


def plan_batches(lengths, budget_tokens: int, max_padding: float = 0.10) -> list[list[int]]:
    """Indices grouped into batches of at most `budget_tokens` padded tokens.

    Sorted by length (stable, so equal lengths keep shard order). A sample longer than the budget
    gets a batch of its own rather than being dropped: scoring must cover every kept sample.
    """
    if budget_tokens <= 0:
        raise ValueError(f"batch token budget must be positive, got {budget_tokens}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_sum = 0
    for i in order:
        n = int(lengths[i])
        if cur:
            width = max(n, int(lengths[cur[-1]]))  # sorted: the new sample is the longest
            padded = width * (len(cur) + 1)
            pad_share = 1.0 - (cur_sum + n) / padded
            if padded > budget_tokens or pad_share > max_padding:
                batches.append(cur)
                cur, cur_sum = [], 0
        cur.append(int(i))
        cur_sum += n
    if cur:
        batches.append(cur)
    return batches


def plan_packs(lengths, budget_tokens: int) -> list[list[int]]:
    """Indices grouped into packed rows of at most `budget_tokens` tokens: the loader's best-fit
    decreasing plan (processors.collate.plan_packs), except that a sample longer than the budget gets
    a row of its own rather than being left out (scoring must cover every kept sample)."""
    if budget_tokens <= 0:
        raise ValueError(f"batch token budget must be positive, got {budget_tokens}")
    packs, too_long = _plan_packs(lengths, budget_tokens)
    return packs + [[i] for i in too_long]


def padding_tokens(batch_lengths: list[int]) -> tuple[int, int]:
    """(real tokens, padded tokens) of one padded batch."""
    return int(sum(batch_lengths)), int(max(batch_lengths) * len(batch_lengths)) if batch_lengths else 0


def strip_vision(input_ids: np.ndarray, labels: np.ndarray, vision_start: int = VISION_START_ID,
                 vision_end: int = VISION_END_ID) -> tuple[np.ndarray, np.ndarray]:
    """Drop every <|vision_start|> ... <|vision_end|> block (inclusive) from ids and labels; the ids are
    the tokenizer's (processors.tokenizer.SpecialIds; default: Qwen2/Qwen3's)."""
    ids = np.asarray(input_ids)
    depth = np.cumsum((ids == vision_start).astype(np.int64) - np.r_[0, (ids[:-1] == vision_end)])
    keep = depth == 0
    return ids[keep], np.asarray(labels)[keep]


def text_only_sample(sample: dict[str, Any], special=None) -> dict[str, Any]:
    """The same conversation with its vision blocks removed and plain text positions (`special`: the
    tokenizer's SpecialIds; None = Qwen2/Qwen3's)."""
    vs = () if special is None else (special.vision_start, special.vision_end)
    ids, labels = strip_vision(sample["input_ids"], sample["labels"], *vs)
    pos = np.broadcast_to(np.arange(len(ids), dtype=np.int64), (3, len(ids)))
    empty_grid = np.zeros((0, 3), dtype=np.int32)
    return {
        "id": sample["id"], "input_ids": ids, "labels": labels, "position_ids": pos,
        "pixel_values": np.zeros((0, _patch_dim(sample)), dtype=np.uint8),
        "image_grid_thw": empty_grid, "video_grid_thw": empty_grid,
        "second_per_grid_ts": np.zeros((0,), dtype=np.float32), "meta": sample.get("meta", {}),
    }


def _patch_dim(sample: dict[str, Any]) -> int:
    if "pixel_values" in sample:
        return int(np.asarray(sample["pixel_values"]).shape[-1])
    return int(sample["stored_pixels"].geometry.patch_dim)


def has_vision(sample: dict[str, Any], vision_start: int = VISION_START_ID) -> bool:
    return bool(np.any(np.asarray(sample["input_ids"]) == vision_start))


def _rows(grid: np.ndarray) -> int:
    grid = np.asarray(grid).reshape(-1, 3)
    return int(np.prod(grid, axis=1).sum()) if len(grid) else 0


@dataclass
class HostBatch:
    """Samples (numpy, as the loader yields them) bound for one device; tensors are made lazily
    and cached so that every scorer of a batch shares one host->device copy."""

    samples: list[dict[str, Any]]
    preset: Preset
    device: Any = None  # torch.device; None -> cpu
    dtype: Any = None   # compute dtype of float tensors; None -> float32
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list[str]:
        return [s["id"] for s in self.samples]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s["input_ids"]) for s in self.samples], dtype=np.int64)

    def _torch(self):
        import torch

        dev = self.device if self.device is not None else torch.device("cpu")
        dtype = self.dtype if self.dtype is not None else torch.float32
        return torch, dev, dtype

    def _upload(self, arr: np.ndarray):
        torch, dev, _ = self._torch()
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if dev.type == "cuda":
            return t.pin_memory().to(dev, non_blocking=True)
        return t

    # -- pixels ---------------------------------------------------------------------------------
    def pixel_items(self) -> list[tuple[int, str, tuple[int, int, int], int, int]]:
        """(sample index, 'image'|'video', grid_thw, first row, end row) into `uint8_patches()`:
        all images of all samples first, then all videos — the order the model's masked scatter
        fills the placeholders of a right-padded batch in."""
        if "items" not in self._cache:
            items, row = [], 0
            for kind, key in (("image", "image_grid_thw"), ("video", "video_grid_thw")):
                for si, s in enumerate(self.samples):
                    for g in np.asarray(s[key]).reshape(-1, 3):
                        n = int(np.prod(g))
                        items.append((si, kind, tuple(int(v) for v in g), row, row + n))
                        row += n
            self._cache["items"] = items
        return self._cache["items"]

    def uint8_patches(self):
        """All patch rows of the batch as one uint8 tensor on the device [R, 3*tp*p*p]: images of all
        samples, then videos (processors.collate.device_pixel_rows, the loader's frames path).

        Samples read from shards with pixels="frames" (the stage does) upload only their stored
        frames (each pixel once) and are patchified on the device (processors.patches.patchify_torch)."""
        if "u8" not in self._cache:
            self._check_pixels()
            parts = [r for r in (device_pixel_rows(self.samples, kind, None, self._upload) for kind in ("image", "video"))
                     if r is not None]
            if not parts:
                self._cache["u8"] = self._upload(np.zeros((0, self.preset.patch_dim), dtype=np.uint8))
            else:
                torch, _, _ = self._torch()
                self._cache["u8"] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return self._cache["u8"]

    def _check_pixels(self) -> None:
        p = self.preset
        for s in self.samples:
            sp = s.get("stored_pixels")
            if sp is not None:
                g = sp.geometry
                if g.fixed_size is not None:
                    raise ValueError(f"sample {s['id']}: qwen-vl (v1) shards carry whole images and are not supported here")
                if (g.patch_size, g.merge_size, g.temporal_patch_size) != (p.patch_size, p.merge_size, p.temporal_patch_size):
                    raise ValueError(f"sample {s['id']}: stored with patch geometry {g} but scored with preset {p.name}")
                continue
            pv = np.asarray(s["pixel_values"])
            if pv.ndim != 2:
                raise ValueError(f"sample {s['id']}: pixel_values shape {pv.shape} is not [rows, patch_dim]; "
                                 "qwen-vl (v1) shards carry whole images and are not supported here")
            n_img, n_vid = _rows(s["image_grid_thw"]), _rows(s["video_grid_thw"])
            if n_img + n_vid != len(pv):
                raise ValueError(f"sample {s['id']}: {len(pv)} pixel rows but grids need "
                                 f"{n_img} image + {n_vid} video rows")

    def normalized_patches(self):
        """(image pixel_values, video pixel_values) normalised on the device in the compute dtype
        (processors.collate.normalize_pixels, the loader's normalisation)."""
        if "norm" not in self._cache:
            _, _, dtype = self._torch()
            x = normalize_pixels(self.uint8_patches(), self.preset, dtype)
            n_img = sum(e - s for _, k, _, s, e in self.pixel_items() if k == "image")
            self._cache["norm"] = (x[:n_img], x[n_img:])
        return self._cache["norm"]

    def grids(self):
        torch, dev, _ = self._torch()
        g = self._text("padded")  # grids are the same in both layouts
        img, vid = g["image_grid_thw"].astype(np.int64), g["video_grid_thw"].astype(np.int64)
        sec = g["second_per_grid_ts"].astype(np.float32)
        return (torch.from_numpy(img).to(dev) if len(img) else None,
                torch.from_numpy(vid).to(dev) if len(vid) else None,
                torch.from_numpy(sec).to(dev) if len(sec) else None)

    # -- text -----------------------------------------------------------------------------------
    def _samples3(self) -> list[dict[str, Any]]:
        """The samples with 3-row M-RoPE position ids (a 1-row text position repeated), checked."""
        return [s if np.asarray(s["position_ids"]).shape[0] == 3 and np.asarray(s["position_ids"]).ndim == 2
                and np.asarray(s["position_ids"]).shape[-1] == len(s["input_ids"])
                else {**s, "position_ids": _three_rows(s["position_ids"], len(s["input_ids"]), s["id"])}
                for s in self.samples]

    def _text(self, layout: str, pad_id: int = ENDOFTEXT_ID) -> dict[str, np.ndarray]:
        """The numpy batch of the loader's collators (no pixels): padded (`collate`) or packed (`pack_collate`);
        padded slots hold `pad_id` (the tokenizer's <|endoftext|>)."""
        key = f"np_{layout}_{pad_id}"
        if key not in self._cache:
            fn = collate if layout == "padded" else pack_collate
            self._cache[key] = fn(self._samples3(), pad_id=pad_id, pixels=False)
        return self._cache[key]

    def padded(self, pad_id: int = ENDOFTEXT_ID) -> dict[str, Any]:
        """Right-padded [B, L] ids/labels/mask and [3, B, L] M-RoPE positions (pipeline's `collate`); padded
        slots hold `pad_id` (the tokenizer's <|endoftext|>)."""
        if self._cache.get("pad_id", pad_id) != pad_id:
            self._cache.pop("padded", None)
        self._cache["pad_id"] = pad_id
        if "padded" not in self._cache:
            b = self._text("padded", pad_id)
            self._cache["padded"] = {
                "input_ids": self._upload(b["input_ids"]), "labels": self._upload(b["labels"]),
                "attention_mask": self._upload(b["attention_mask"]), "position_ids": self._upload(b["position_ids"]),
                "segment": None,
            }
        return self._cache["padded"]

    def packed(self) -> dict[str, Any]:
        """All samples in one row [1, T] (the loader's `pack_collate`); position_ids [4, 1, T] whose
        first row restarts at 0 for every sample, so that transformers builds per-sample attention
        (varlen / block mask); `segment` [1, T]: the sample index of every token."""
        if "packed" not in self._cache:
            b = self._text("packed")
            seg = np.repeat(np.arange(len(self.samples)), np.diff(b["cu_seq_lens"]))[None]
            self._cache["packed"] = {
                "input_ids": self._upload(b["input_ids"]), "labels": self._upload(b["labels"]), "attention_mask": None,
                "position_ids": self._upload(b["position_ids"]), "segment": self._upload(seg),
            }
        return self._cache["packed"]

    def text_only(self, special=None) -> "HostBatch":
        return HostBatch([text_only_sample(s, special) for s in self.samples], self.preset, self.device, self.dtype)


def _three_rows(position_ids, n: int, sid: str) -> np.ndarray:
    pos = np.asarray(position_ids, dtype=np.int64)
    if pos.ndim == 1:
        pos = pos[None]
    if pos.shape[-1] != n:
        raise ValueError(f"sample {sid}: position_ids cover {pos.shape[-1]} tokens, input_ids {n}")
    if pos.shape[0] == 1:  # plain positions (text-only / qwen-vl): the same id on all three axes
        pos = np.repeat(pos, 3, axis=0)
    if pos.shape[0] != 3:
        raise ValueError(f"sample {sid}: position_ids has {pos.shape[0]} rows; expected 3 (M-RoPE)")
    return pos
