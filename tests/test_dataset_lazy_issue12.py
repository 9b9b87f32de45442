"""Issue 12 (loader speed): frames decoded lazily, straight into the batch's transfer buffer.

In a StatefulLoader worker with a built-in collator of uint8 frames, samples are read with their
frames still compressed (storage.LazyPixels) and `to_transfer` decodes them into the batch's one
buffer. The batches must be bit-identical to the eager reference (`ds.lazy = False`) in every pixels
mode, padded and packed, 0 and 2 workers, images and multi-frame videos; a damaged member must
still raise a StorageError naming shard, sample and member, from inside the worker (never a short
epoch); everything else that reads samples keeps getting decoded frames.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset_factory import assert_same_batch
from pipeline.io import MANIFEST_SCHEMA, rows_to_table, write_table
from pipeline.writer import ShardWriter
from processors.patches import patchify
from processors.presets import IMAGE_PAD_ID, VIDEO_PAD_ID, VISION_END_ID, VISION_START_ID
from processors.rope import get_rope_index
from processors.sample import EncodedSample


def _sample(sid: str, rng: np.random.Generator, image: bool, video: bool) -> EncodedSample:
    ids = list(rng.integers(0, 151000, int(rng.integers(6, 30))))
    rows, igrid, vgrid, spg = [], np.zeros((0, 3), np.int32), np.zeros((0, 3), np.int32), np.zeros(0, np.float32)
    if image:                 # one 56x84 frame: grid 1x4x6, 6 placeholder tokens
        pv, g = patchify(rng.integers(0, 256, (1, 56, 84, 3)).astype(np.uint8))
        rows.append(pv)
        igrid = np.array([g], np.int32)
        ids = ids[:2] + [VISION_START_ID] + [IMAGE_PAD_ID] * (g[1] * g[2] // 4) + [VISION_END_ID] + ids[2:]
    if video:                 # 4 distinct 56x56 frames: grid 2x4x4, 8 placeholder tokens, 4 frame members
        pv, g = patchify(rng.integers(0, 256, (4, 56, 56, 3)).astype(np.uint8))
        rows.append(pv)
        vgrid = np.array([g], np.int32)
        spg = np.array([1.0], np.float32)
        ids = ids + [VISION_START_ID] + [VIDEO_PAD_ID] * (g[0] * g[1] * g[2] // 4) + [VISION_END_ID]
    ids = np.asarray(ids, np.int32)
    labels = np.where(np.arange(len(ids)) >= len(ids) // 2, ids, -100).astype(np.int32)
    pos, delta = get_rope_index(ids, igrid, vgrid, spg)
    pv = np.concatenate(rows) if rows else np.zeros((0, 1176), np.uint8)
    return EncodedSample(sid, ids, labels, np.asarray(pos, np.int32), pv, igrid, vgrid, spg, int(delta), {"id": sid})


def _make_out(root, n: int = 36, per_shard: int = 12, codec: str = "zstd-delta"):
    rng = np.random.default_rng(7)
    rows = []
    for u0 in range(0, n, per_shard):
        unit = f"u{u0 // per_shard:05d}"
        with ShardWriter(root / "shards" / f"{unit}.tar", codec=codec) as w:
            for i in range(u0, min(n, u0 + per_shard)):
                sid = f"s{i:06d}"
                e = _sample(sid, rng, image=i % 3 != 2, video=i % 3 != 0)
                w.write(sid, e, {"id": sid})
                L = len(e.input_ids)
                n_img, n_vid = int((e.input_ids == IMAGE_PAD_ID).sum()), int((e.input_ids == VIDEO_PAD_ID).sum())
                rows.append(dict(id=sid, source="gen.jsonl", record_index=i, unit=unit, shard=f"shards/{unit}.tar",
                                 key=sid, preset="qwen2.5-vl", n_tokens=L, n_text_tokens=L - n_img - n_vid,
                                 n_image_tokens=n_img, n_video_tokens=n_vid,
                                 n_supervised_tokens=int((e.labels != -100).sum()), n_images=len(e.image_grid_thw),
                                 n_videos=len(e.video_grid_thw), n_boxes=0, pixel_rows=len(e.pixel_values)))
    write_table(rows_to_table(rows, MANIFEST_SCHEMA), root / "manifest.parquet")
    return root


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return _make_out(tmp_path_factory.mktemp("lazy") / "out")


MODES = {"padded rows": dict(batch_size=4), "padded uint8 rows": dict(batch_size=4, normalize=False),
         "padded frames": dict(batch_size=4, normalize=False, pixels="frames"),
         "packed rows": dict(max_tokens=200), "packed uint8 rows": dict(max_tokens=200, normalize=False),
         "packed frames": dict(max_tokens=200, normalize=False, pixels="frames")}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("via", ["pipe", "shm"])
def test_lazy_batches_equal_eager_batches(out, monkeypatch, mode, workers, via):
    import pipeline.dataset as D
    from pipeline.dataset import ShardDataset

    monkeypatch.setattr(D, "PIPE_MAX_BYTES", 1 << 30 if via == "pipe" else 0)
    eager = ShardDataset(out, seed=5, **MODES[mode])
    eager.lazy = False
    lazy = ShardDataset(out, seed=5, **MODES[mode])
    assert lazy.lazy
    a = list(eager.loader(num_workers=workers))
    b = list(lazy.loader(num_workers=workers))
    assert len(a) == len(b) > 2
    assert sorted(i for x in b for i in x.ids) == [f"s{i:06d}" for i in range(36)]
    for x, y in zip(a, b):
        assert_same_batch(x, y)
    if "frames" in mode:    # every sample's frames are there: images and videos, patchified = the rows
        assert any(k == "video" for x in b for k, _ in x.frames) and any(k == "image" for x in b for k, _ in x.frames)


def test_the_lazy_path_is_taken_only_where_the_buffer_decodes(out, monkeypatch):
    """Lazy reads happen in StatefulLoader workers with a built-in uint8-frames collator, and the
    batch then carries LazyFrames into to_transfer; in process, frames arrive decoded."""
    import pipeline.dataset as D
    from pipeline.dataset import ShardDataset, to_transfer
    from pipeline.storage import LazyFrames, LazyPixels, StoredPixels

    ds = ShardDataset(out, seed=1, batch_size=4, normalize=False, pixels="frames")
    assert not ds._lazy_frames()                       # in process: eager
    monkeypatch.setattr(D, "get_worker_info", lambda: object())
    ds._tracked = True
    assert ds._lazy_frames()
    group = list(ds.loader_.iter_shard(ds.loader_.shards()[0], pixels="frames", lazy=True))[:4]
    assert all(isinstance(s["stored_pixels"], LazyPixels) for s in group)
    batch = ds.collate(group)
    assert batch.frames and all(isinstance(f, LazyFrames) for _, f in batch.frames)
    eager = ds.collate(list(ds.loader_.iter_shard(ds.loader_.shards()[0], pixels="frames"))[:4])
    assert all(isinstance(f, torch.Tensor) for _, f in eager.frames)
    assert_same_batch(to_transfer(eager).unpack(), to_transfer(batch).unpack())
    ds.lazy = False
    assert not ds._lazy_frames()
    # a custom collate or normalised pixels: never lazy
    assert not ShardDataset(out, batch_size=4, normalize=False)._lazy_frames()
    eager_sp = next(ds.loader_.iter_shard(ds.loader_.shards()[0], pixels="frames"))["stored_pixels"]
    assert isinstance(eager_sp, StoredPixels)


def test_lazy_pixels_materialise_on_access_like_eager(out):
    """Anything else that reads a lazily read sample (.items, .pixel_values(), the shuffle buffer's
    byte count, the rows collator) gets exactly what the eager read gives."""
    from pipeline.dataset import sample_bytes
    from pipeline.loader import ShardLoader
    from processors.collate import collate

    loader = ShardLoader(out)
    for shard in loader.shards():
        for e, z in zip(loader.iter_shard(shard, pixels="frames"), loader.iter_shard(shard, pixels="frames", lazy=True)):
            assert sample_bytes(e) == sample_bytes(z)
            assert np.array_equal(e["stored_pixels"].pixel_values(), z["stored_pixels"].pixel_values())
            assert [(k, f.shape) for k, f in e["stored_pixels"].items] == [(k, f.shape) for k, f in z["stored_pixels"].items]
            assert all(np.array_equal(f, g) for (_, f), (_, g) in zip(e["stored_pixels"].items, z["stored_pixels"].items))
            ce, cz = collate([e]), collate([z])
            assert all(np.array_equal(ce[k], cz[k]) for k in ce)
    # rows mode ignores lazy
    r = next(loader.iter_shard(loader.shards()[0], lazy=True))
    assert "pixel_values" in r and "stored_pixels" not in r


def _damage(out, sample: str):
    """Flip a byte in one frame member of `sample` in place (the tar stays well formed)."""
    path = out / "shards" / "u00001.tar"
    data = bytearray(path.read_bytes())
    name = f"{sample}.img000.delta.zst".encode()
    i = data.index(name)
    start = i + 512                     # member data follows its 512-byte header
    data[start + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    return "shards/u00001.tar", "img000.delta.zst"


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("mode", ["padded frames", "packed frames"])
def test_a_damaged_member_raises_naming_shard_sample_member(tmp_path, mode, workers):
    """Eager (0 workers: at read) or lazy (2 workers: in to_transfer, inside the worker) alike: a
    ShardDataError naming the shard, the sample and the member; the epoch does not end short."""
    from pipeline.dataset import ShardDataError, ShardDataset

    out = _make_out(tmp_path / "out")
    shard, member = _damage(out, "s000013")
    ds = ShardDataset(out, seed=5, **MODES[mode])
    got = []
    with pytest.raises(ShardDataError) as ei:
        for b in ds.loader(num_workers=workers):
            got += b.ids
    msg = str(ei.value)
    assert shard in msg and "'s000013'" in msg and member in msg and "crc32" in msg
    assert "s000013" not in got and len(got) < 36
