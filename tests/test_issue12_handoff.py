"""Issue 12 (loader speed): the worker → training-process hand-off through a ring of reused
shared-memory slots (pipeline.dataset RingRef / _Ring).

A DataLoader worker writes each batch into one of a few shared-memory slots that stay mapped in both
processes; a slot is reused only after the training process has freed every tensor, view and
`.numpy()` of the batch in it (a weakref finalizer clears the slot's busy flag). These tests prove:
the batches are bit-identical to the fresh-buffer reference (`ds.ring_depth = 0`) in every pixels
mode, padded and packed, over two epochs and with 2 workers; a training loop that keeps its batches
(or only a view of one tensor) never sees them overwritten, even with a ring of 1 slot; slots are
reused and released; and the spawn start method works too.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

import pipeline.dataset as D
from dataset_factory import assert_same_batch
from pipeline.dataset import ShardDataset
from test_dataset_lazy_issue12 import MODES, _make_out


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return _make_out(tmp_path_factory.mktemp("handoff") / "out")


def _clone(b):
    """A deep copy of a batch that owns its memory (not a view of any slot)."""
    c = type(b)({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in b.items()})
    c.ids = list(b.ids)
    c.frames = [(k, f.clone()) for k, f in (getattr(b, "frames", None) or [])]
    c.geometry = getattr(b, "geometry", None)
    return c


def _epochs(out, mode, workers, ring_depth, epochs=2, keep=False, **loader_kw):
    ds = ShardDataset(out, seed=3, buffer_size=8, **mode)
    ds.ring_depth = ring_depth
    dl = ds.loader(num_workers=workers, **loader_kw)
    got = []
    for _ in range(epochs):
        for b in dl:
            got.append(b if keep else _clone(b))
    return got


@pytest.mark.parametrize("mode", list(MODES))
def test_ring_batches_equal_fresh_buffer_batches(out, mode):
    ref = _epochs(out, MODES[mode], 2, ring_depth=0)
    got = _epochs(out, MODES[mode], 2, ring_depth=None)
    assert len(got) == len(ref) > 4
    for a, b in zip(got, ref):
        assert_same_batch(a, b)


@pytest.mark.parametrize("via", ["pipe", "shm"])
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("mode", ["padded frames", "packed frames", "packed rows"])
def test_held_batches_are_never_overwritten(out, mode, depth, via, monkeypatch):
    """The loop keeps every batch (as a list of them): every slot stays busy, later batches take the
    fresh-buffer way (through the pipe or a fresh shared-memory segment), and at the end every kept
    batch still equals the reference."""
    monkeypatch.setattr(D, "PIPE_MAX_BYTES", 1 << 30 if via == "pipe" else 0)
    ref = _epochs(out, MODES[mode], 2, ring_depth=0)
    kept = _epochs(out, MODES[mode], 2, ring_depth=depth, keep=True)
    assert len(kept) == len(ref)
    for a, b in zip(kept, ref):
        assert_same_batch(a, b)


def test_a_held_view_keeps_its_slot(out):
    """Only a slice of one tensor and a `.numpy()` of another survive the loop's iteration: the slot
    under them must not be reused while they live."""
    mode = MODES["packed frames"]
    ref = _epochs(out, mode, 1, ring_depth=0, epochs=1)
    ds = ShardDataset(out, seed=3, buffer_size=8, **mode)
    ds.ring_depth = 1
    held = []
    for b in ds.loader(num_workers=1):
        held.append((b["input_ids"][0, 1:], b.frames[0][1].numpy() if b.frames else None))
        del b
        gc.collect()
    assert len(held) == len(ref) > 2
    for (ids, frame), r in zip(held, ref):
        assert torch.equal(ids, r["input_ids"][0, 1:])
        if frame is not None:
            assert np.array_equal(frame, r.frames[0][1].numpy())


def test_slots_are_reused_and_released(out):
    """A loop that drops each batch before the next gets its batches from slots (the default depth,
    prefetch_factor + 2, covers what is in flight) and at most that many slots per worker (the
    batches' memory repeats); every slot is free once nothing holds its batch."""
    ds = ShardDataset(out, seed=3, buffer_size=8, batch_size=2, normalize=False, pixels="frames")
    ptrs, n, in_slot, slots = set(), 0, 0, {}
    for b in ds.loader(num_workers=2):
        p = b["input_ids"].untyped_storage().data_ptr()
        ptrs.add(p)
        n += 1
        slots.update(D._RING_SLOTS)          # the mappings, while the epoch runs
        in_slot += any(t.data_ptr() <= p < t.data_ptr() + t.numel() for _, t in D._RING_SLOTS.values())
        del b
    gc.collect()
    # Nearly every batch comes from a slot: on a loaded machine a worker can, rarely, find all its
    # slots still busy (the training process has not yet dropped a batch) and take the fresh-buffer
    # fallback, which is correct behaviour — seen once in 18 at load 6.
    assert n == 18 and in_slot >= n - 3 and len(ptrs) <= 2 * 4 < n
    assert 2 <= len(slots) <= 2 * 4
    assert all(int(t[0]) == 0 for _, t in slots.values())          # every busy flag cleared
    assert not D._RING_SLOTS                                           # the finished workers' mappings dropped


def test_spawned_workers(out):
    mode = MODES["padded frames"]
    ref = _epochs(out, mode, 1, ring_depth=0, epochs=1)
    got = _epochs(out, mode, 1, ring_depth=None, epochs=1, multiprocessing_context="spawn")
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert_same_batch(a, b)


def test_the_ring_falls_back_when_every_slot_is_busy():
    """_Ring.take: a free slot that fits is reused, a free one too small grows (new generation, the
    tensor sent again), none free and none left to allocate → None (the caller's fresh buffer)."""
    ring = D._Ring(2)
    t0, r0 = ring.take(100)
    assert r0.slot == 0 and r0.gen == 0 and r0.tensor is t0 and int(t0[0]) == 1
    t1, r1 = ring.take(100)
    assert r1.slot == 1 and r1.tensor is t1
    assert ring.take(100) is None and ring.fallbacks == 1
    t0[0] = 0                                                   # the training process released slot 0
    t, r = ring.take(200)
    assert r.slot == 0 and r.gen == 0 and r.tensor is None and t is t0   # reused: nothing sent again
    t0[0] = 0
    t, r = ring.take(4 << 20)                                   # too big for slot 0: it grows
    assert r.slot == 0 and r.gen == 1 and r.tensor is t and t.numel() >= (4 << 20) + D.RING_HEADER


def _ids_per_epoch(dl, epochs):
    return [[list(b.ids) for b in dl] for _ in range(epochs)]


@pytest.mark.parametrize("mode", ["padded frames", "packed rows"])
def test_persistent_workers_give_every_epoch_its_own_order(out, mode):
    """persistent_workers=True: the same batches, epoch by epoch, as workers started afresh each
    epoch (so each epoch has its own shuffle), the batches bit-identical."""
    def run(persistent):
        ds = ShardDataset(out, seed=5, buffer_size=8, **MODES[mode])
        dl = ds.loader(num_workers=2, persistent_workers=persistent)
        return [[_clone(b) for b in dl] for _ in range(3)]

    ref, got = run(False), run(True)
    assert [[b.ids for b in e] for e in got] == [[b.ids for b in e] for e in ref]
    assert [b.ids for b in got[0]] != [b.ids for b in got[1]]
    for e_got, e_ref in zip(got, ref):
        for a, b in zip(e_got, e_ref):
            assert_same_batch(a, b)


def test_persistent_workers_resume(out):
    """Stopping mid-epoch, iterating again, and loading a saved state into a dataset whose persistent
    workers are already running give the same batches as workers started afresh: after
    load_state_dict exactly the remaining batches of the saved epoch, then the next epoch."""
    mode = MODES["padded frames"]
    ref_dl = ShardDataset(out, seed=5, buffer_size=8, **mode).loader(num_workers=2)
    ref = [[b.ids for b in ref_dl] for _ in range(2)]

    def scenario(persistent):
        ds = ShardDataset(out, seed=5, buffer_size=8, **mode)
        dl = ds.loader(num_workers=2, persistent_workers=persistent)
        it = iter(dl)
        first = [next(it).ids for _ in range(3)]
        state = ds.state_dict()
        del it
        rest = [b.ids for b in dl]                # iterating again continues where the dataset stands
        ds.load_state_dict(state)
        again = [b.ids for b in dl]
        return first, rest, again, [b.ids for b in dl]

    got = scenario(True)
    assert got == scenario(False)
    first, rest, again, after = got
    assert first == ref[0][:3] and again == ref[0][3:] and after == ref[1]


def test_persistent_loader_forgets_its_slots_when_it_goes(out):
    ds = ShardDataset(out, seed=3, buffer_size=8, batch_size=2, normalize=False, pixels="frames")
    dl = ds.loader(num_workers=2, persistent_workers=True)
    for _ in range(2):
        for b in dl:
            pass
    del b
    assert D._RING_SLOTS                       # kept across epochs with the workers
    del dl
    gc.collect()
    assert not D._RING_SLOTS


def test_a_damaged_member_frees_its_slot(out, tmp_path):
    """A batch whose frame does not decode is not sent, and its slot is not left busy."""
    from pipeline.storage import LazyFrames

    ds = ShardDataset(out, seed=3, buffer_size=8, batch_size=2, normalize=False, pixels="frames")
    b = ds.collate([s for _, s in zip(range(2), ds.loader_.iter_shard(ds.loader_.shards()[0], pixels="frames",
                                                                          lazy=True))])
    lf = next(f for _, f in b.frames if isinstance(f, LazyFrames))
    name, crc, data = lf.members[0]
    lf.members[0] = (name, crc, data[:-7] + b"garbage")
    D._WORKER_RING = None
    with pytest.raises(Exception, match="corrupt"):
        D.to_transfer(b, 2)
    ring = D._WORKER_RING
    assert ring is not None and len(ring.slots) == 1 and int(ring.slots[0][0][0]) == 0
    D._WORKER_RING = None
