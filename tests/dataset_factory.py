"""Prepared output directories generated cheaply for the dataset/packing tests and bench/loader.py.

Samples are tiny but well formed (the 7 arrays with the shard dtypes, M-RoPE ids, an image on
every `image_every`-th sample), written with pipeline.writer.ShardWriter and listed in a manifest
with the real schema: the same tar layout and manifest `vlprep prepare` writes, without running
prepare 50 000 times.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.io import MANIFEST_SCHEMA, rows_to_table, write_table
from pipeline.writer import ShardWriter
from processors.presets import IMAGE_PAD_ID, VISION_END_ID, VISION_START_ID
from processors.rope import get_rope_index
from processors.sample import EncodedSample


def tiny_sample(sid: str, n_text: int, rng: np.random.Generator, image: bool = False) -> EncodedSample:
    ids = rng.integers(0, 151000, n_text).astype(np.int32)
    grid = np.zeros((0, 3), np.int32)
    pv = np.zeros((0, 1176), np.uint8)
    if image:   # 1×4×4 patches → 4 placeholder tokens after the first 3 text tokens
        ids = np.concatenate([ids[:3], [VISION_START_ID], [IMAGE_PAD_ID] * 4, [VISION_END_ID], ids[3:]]).astype(np.int32)
        grid = np.array([[1, 4, 4]], np.int32)
        pv = rng.integers(0, 256, (16, 1176)).astype(np.uint8)
    labels = np.where(np.arange(len(ids)) >= len(ids) // 2, ids, -100).astype(np.int32)
    pos, delta = get_rope_index(ids, grid, None, None)
    return EncodedSample(sid, ids, labels, np.asarray(pos, np.int32), pv, grid, np.zeros((0, 3), np.int32),
                         np.zeros((0,), np.float32), int(delta), {"id": sid})


def make_out(root, n: int, per_shard: int = 100, seed: int = 0, lengths=(8, 64), image_every: int = 0,
             preset: str = "qwen2.5-vl", templates: int = 509) -> Path:
    """OUT with n samples (ids s000000…) in ceil(n / per_shard) shards; lengths: uniform text length range.
    Beyond `templates` samples the arrays repeat (sample i reuses sample i % templates's arrays under its
    own id), which keeps a 50 000-sample OUT cheap to generate."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    pool: dict[int, EncodedSample] = {}
    rows = []
    for u0 in range(0, n, per_shard):
        unit = f"u{u0 // per_shard:05d}"
        with ShardWriter(root / "shards" / f"{unit}.tar") as w:
            for i in range(u0, min(n, u0 + per_shard)):
                sid = f"s{i:06d}"
                t = i % templates
                if t not in pool:
                    pool[t] = tiny_sample(sid, int(rng.integers(lengths[0], lengths[1] + 1)), rng,
                                          image=bool(image_every) and i % image_every == 0)
                e = pool[t]
                w.write(sid, e, {"id": sid})
                L = len(e.input_ids)
                rows.append(dict(id=sid, source="gen.jsonl", record_index=i, unit=unit, shard=f"shards/{unit}.tar",
                                 key=sid, preset=preset, n_tokens=L, n_text_tokens=L - 4 * len(e.image_grid_thw),
                                 n_image_tokens=4 * len(e.image_grid_thw), n_video_tokens=0,
                                 n_supervised_tokens=int((e.labels != -100).sum()), n_images=len(e.image_grid_thw),
                                 n_videos=0, n_boxes=0, pixel_rows=len(e.pixel_values)))
    write_table(rows_to_table(rows, MANIFEST_SCHEMA), root / "manifest.parquet")
    return root


def assert_same_batch(a, b) -> None:
    """Two loader batches (Batch / PackedBatch, as collated or after the worker hand-off) hold the same
    keys, ids, tensors (dtype, shape, values), stored frames and geometry."""
    import torch

    assert type(a) is type(b) and a.keys() == b.keys() and a.ids == b.ids
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k
    fa, fb = getattr(a, "frames", []) or [], getattr(b, "frames", []) or []
    assert [k for k, _ in fa] == [k for k, _ in fb]
    for (_, x), (_, y) in zip(fa, fb):
        assert isinstance(x, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
    assert getattr(a, "geometry", None) == getattr(b, "geometry", None)
