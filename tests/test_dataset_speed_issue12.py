"""Issue 12 (speed): the faster shard-reading internals give exactly what the plain definitions give.

`storage.undelta` (blocked running sum, masked green add) against the row-by-row inverse it
replaced, on random frames and edge cases (1 row, 1 column, odd sizes, sizes around the green
chunk); `decode_frame(..., into=)` against a fresh decode; the DataLoader's one-buffer batch
transport against the batch the worker built.
"""
from __future__ import annotations

import numpy as np
import pytest

from dataset_factory import assert_same_batch
from pipeline import storage
from pipeline.storage import decode_frame, encode_frame, undelta


def undelta_rows(d: np.ndarray) -> np.ndarray:
    """The definition (and vlprep's implementation before the speed work): running sum down the
    rows, one numpy add per row, then green added back to red and blue, all uint8 wrap-around."""
    out = np.empty_like(d)
    out[0] = d[0]
    for i in range(1, len(d)):
        np.add(out[i - 1], d[i], out=out[i])
    out[..., 0] += out[..., 1]
    out[..., 2] += out[..., 1]
    return out


CHUNK_PX = storage._GREEN_CHUNK // 3
SIZES = [(1, 1), (1, 2), (1, 7), (2, 1), (7, 1), (100, 1), (2, 2), (3, 3), (4, 4), (5, 3), (17, 3), (28, 28),
         (29, 31), (168, 308), (301, 1), (1, CHUNK_PX), (1, CHUNK_PX + 1), (3, CHUNK_PX - 1), (2, CHUNK_PX + 5),
         (757, 1037)]


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("kind", ["random", "extremes", "photo-like"])
def test_undelta_equals_the_row_by_row_inverse(h, w, kind):
    rng = np.random.default_rng(h * 7919 + w)
    if kind == "random":
        d = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif kind == "extremes":          # every byte 0 or 255: the most wrap-arounds
        d = (rng.integers(0, 2, (h, w, 3), dtype=np.uint8) * 255).astype(np.uint8)
    else:                             # a smooth frame through the real filter
        yy, xx = np.mgrid[0:h, 0:w]
        frame = np.stack([(xx * 3 + yy) % 256, (yy * 5) % 256, (xx ^ yy) % 256], -1).astype(np.uint8)
        d = _filtered(frame)
        assert np.array_equal(undelta(d), frame)
    want = undelta_rows(d)
    got = undelta(d)
    assert got.dtype == np.uint8 and got.shape == d.shape and np.array_equal(got, want)
    into = np.full_like(d, 17)
    assert undelta(d, into) is into and np.array_equal(into, want)
    assert np.array_equal(d, d.copy())              # the input is left alone (read-only decompressed buffer)


def _filtered(frame: np.ndarray) -> np.ndarray:
    """The zstd-delta filter encode_frame applies, without the compression."""
    x = frame.copy()
    x[..., 0] -= frame[..., 1]
    x[..., 2] -= frame[..., 1]
    x[1:] -= x[:-1].copy()
    return x


def test_undelta_reads_a_read_only_buffer():
    d = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    ro = np.frombuffer(d.tobytes(), np.uint8).reshape(d.shape)
    assert not ro.flags.writeable
    assert np.array_equal(undelta(ro), undelta_rows(d))


@pytest.mark.parametrize("codec", storage.CODECS)
@pytest.mark.parametrize("h,w", [(1, 1), (1, 5), (6, 1), (28, 56), (33, 17)])
def test_decode_frame_into_equals_a_fresh_decode(codec, h, w):
    frame = np.random.default_rng(h + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ext, data = encode_frame(frame, codec)
    fresh = decode_frame(ext, data, (h, w))
    into = np.zeros((h, w, 3), np.uint8)
    assert decode_frame(ext, data, (h, w), into) is into
    assert np.array_equal(fresh, frame) and np.array_equal(into, frame)


# -- the DataLoader hand-off: one shared-memory buffer per batch ---------------------------------------

MODES = {"padded rows": dict(batch_size=3), "padded uint8": dict(batch_size=3, normalize=False),
         "padded frames": dict(batch_size=3, normalize=False, pixels="frames"),
         "packed frames": dict(max_tokens=300, normalize=False, pixels="frames"),
         "packed flash": dict(max_tokens=300, flash_kwargs=True)}


@pytest.mark.parametrize("via", ["pipe", "shm"])
@pytest.mark.parametrize("mode", list(MODES))
def test_worker_batches_equal_in_process_batches(tmp_path, monkeypatch, mode, via):
    """A batch that crossed from a DataLoader worker (TransferBatch: one buffer, through the pipe or
    one shared-memory segment, viewed back) is bit-identical to the batch built in the training
    process: keys, dtypes, ids, frames."""
    from dataset_factory import make_out

    import pipeline.dataset as D
    from pipeline.dataset import ShardDataset

    monkeypatch.setattr(D, "PIPE_MAX_BYTES", 1 << 30 if via == "pipe" else 0)

    out = make_out(tmp_path / "out", 40, per_shard=15, image_every=2, lengths=(8, 40))
    here = list(ShardDataset(out, seed=3, **MODES[mode]))
    ds = ShardDataset(out, seed=3, **MODES[mode])
    there = list(ds.loader(num_workers=1))
    assert len(here) == len(there) > 1
    for a, b in zip(here, there):
        assert_same_batch(a, b)
    assert ds.state_dict()["consumed"] == [len(here)] or ds.epoch == 1


@pytest.mark.parametrize("via", ["pipe", "shm"])
def test_transfer_batch_round_trip_and_alignment(monkeypatch, via):
    import pickle

    import torch

    import pipeline.dataset as D
    from pipeline.dataset import TransferBatch, to_transfer
    from pipeline.packing import Batch

    monkeypatch.setattr(D, "PIPE_MAX_BYTES", 1 << 30 if via == "pipe" else 0)
    b = Batch(input_ids=torch.arange(7, dtype=torch.int64)[None], attention_mask=torch.ones(1, 7, dtype=torch.int64),
              second_per_grid_ts=torch.tensor([0.5, 1.0]), pixel_values=torch.zeros((0, 1176), dtype=torch.uint8),
              image_grid_thw=torch.tensor([[1, 2, 2]]), use_cache=False, max_length_q=7)
    b.ids = ["a"]
    b.frames = [("image", torch.randint(0, 256, (1, 5, 3, 3), dtype=torch.uint8)),
                ("video", torch.randint(0, 256, (3, 2, 7, 3), dtype=torch.uint8))]
    b.geometry = "g"
    t = to_transfer(b)
    assert isinstance(t, TransferBatch)
    assert isinstance(t.buf, np.ndarray) if via == "pipe" else t.buf.is_shared()
    assert all(spec[2] % 64 == 0 for _, spec in t.tensors + t.frames)
    assert_same_batch(b, pickle.loads(pickle.dumps(t)).unpack())
    assert to_transfer([1, 2]) == [1, 2]            # not a built-in collator's batch: left to torch


def test_tar_header_checksum_equals_the_byte_sum():
    """loader._header_sum (two Adler-32 halves) = the ustar definition: the byte sum with the
    checksum field read as 8 spaces, on random, all-zero and all-0xFF headers."""
    import os

    from pipeline.loader import _header_sum

    headers = [os.urandom(512) for _ in range(500)] + [bytes(512), b"\xff" * 512, b"\x00" * 256 + b"\xff" * 256]
    for h in headers:
        assert _header_sum(h) == sum(h[:148]) + 8 * 32 + sum(h[156:])


def test_load_npy_header_cache_gives_each_members_own_array():
    """Members sharing a header (the cache hit) still get their own bytes; a cut-short member whose
    header is cached still raises like np.load."""
    import io

    from pipeline.storage import load_npy

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        return buf.getvalue()

    a, b = np.arange(12, dtype=np.int32).reshape(3, 4), -np.arange(12, dtype=np.int32).reshape(3, 4)
    for _ in range(2):
        got_a, got_b = load_npy(npy(a)), load_npy(npy(b))
        assert np.array_equal(got_a, a) and np.array_equal(got_b, b) and got_a.flags.writeable
    with pytest.raises((ValueError, OSError, EOFError)):
        load_npy(npy(a)[:-4])


def test_shuffle_buffer_counts_stored_frames(tmp_path):
    """buffer_bytes bounds the shuffle buffer in pixels="frames" mode too: a sample's stored frames
    are counted (they were not, so frames-mode buffers could hold far more than buffer_bytes)."""
    from dataset_factory import make_out

    from pipeline.dataset import sample_bytes
    from pipeline.loader import ShardLoader

    out = make_out(tmp_path / "out", 4, image_every=1)
    loader = ShardLoader(out)
    rows = next(loader.iter_shard(loader.shards()[0]))
    frames = next(loader.iter_shard(loader.shards()[0], pixels="frames"))
    pixels = sum(f.nbytes for _, f in frames["stored_pixels"].items)
    assert pixels > 0
    assert sample_bytes(frames) == sample_bytes(rows) - rows["pixel_values"].nbytes + pixels
