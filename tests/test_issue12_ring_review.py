"""Issue 12 ring review: adversarial checks of the worker → training-process hand-off through the
ring of reused shared-memory slots (pipeline.dataset _Ring / RingRef).

A slot is reused only after the weakref finalizer of the ndarray behind a batch fires; these tests
hold a batch's memory in every way a training loop plausibly does (views, `.numpy()` and numpy views
of it, storages, DLPack, autograd's saved inputs, `default_collate` again, a shallow copy) with a ring
of ONE slot, so any hold that failed to keep the slot busy would see a later batch written over it,
and compare with the fresh-buffer reference (`ring_depth = 0`). A positive control (a raw pointer
that deliberately does not hold the batch) proves the check can see an overwrite. Then: a full
/dev/shm (ENOSPC) must not stop a loader that works without the ring.
"""
from __future__ import annotations

import copy
import ctypes
import gc
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import pipeline.dataset as D
from dataset_factory import assert_same_batch
from pipeline.dataset import ShardDataset
from test_dataset_lazy_issue12 import MODES, _make_out

MODE = MODES["packed rows"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return _make_out(tmp_path_factory.mktemp("ring_review") / "out")


@pytest.fixture(scope="module")
def ref(out):
    return _held(out, 0, lambda b: (b["input_ids"].clone(), b["pixel_values"].clone()))


def _held(out, depth, hold, workers=1, **loader_kw):
    ds = ShardDataset(out, seed=3, buffer_size=8, **MODE)
    ds.ring_depth = depth
    held = []
    for b in ds.loader(num_workers=workers, **loader_kw):
        held.append(hold(b))
        del b
        gc.collect()
    return held


def _raw(t):
    """A numpy array over t's memory that does NOT keep t alive (the positive control)."""
    buf = (ctypes.c_char * (t.numel() * t.element_size())).from_address(t.data_ptr())
    return np.frombuffer(buf, dtype=t.numpy().dtype).reshape(t.shape)


_W = torch.ones(1, requires_grad=True)
HOLDS = {
    # name: (what the loop keeps of batch b, how to read input_ids / pixel_values back from it)
    "slice": (lambda b: (b["input_ids"][:, 1:], b["pixel_values"][1:]),
              lambda h, i, p: (h[0], h[1], i[:, 1:], p[1:])),
    "as_strided": (lambda b: (b["input_ids"].as_strided(b["input_ids"].shape, b["input_ids"].stride()),
                              b["pixel_values"].as_strided((b["pixel_values"].shape[0],), (b["pixel_values"].stride(0),))),
                   lambda h, i, p: (h[0], h[1], i, p[:, 0])),
    "numpy": (lambda b: (b["input_ids"].numpy(), b["pixel_values"].numpy()),
              lambda h, i, p: (torch.from_numpy(h[0]), torch.from_numpy(h[1]), i, p)),
    "numpy view": (lambda b: (b["input_ids"].numpy()[:, 1:], np.asarray(b["pixel_values"])[1:].view(np.int32)),
                   lambda h, i, p: (torch.from_numpy(h[0]), torch.from_numpy(h[1]), i[:, 1:], p[1:].view(torch.int32))),
    "memoryview": (lambda b: (memoryview(b["input_ids"].numpy()), memoryview(b["pixel_values"].numpy())),
                   lambda h, i, p: (torch.from_numpy(np.asarray(h[0])), torch.from_numpy(np.asarray(h[1])), i, p)),
    "untyped_storage": (lambda b: (b["input_ids"].untyped_storage(), b["pixel_values"].untyped_storage(),
                                   b["input_ids"].storage_offset(), b["pixel_values"].storage_offset(),
                                   b["input_ids"].shape, b["pixel_values"].shape),
                        lambda h, i, p: (torch.tensor([], dtype=i.dtype).set_(h[0], h[2], h[4]),
                                         torch.tensor([], dtype=p.dtype).set_(h[1], h[3], h[5]), i, p)),
    "dlpack": (lambda b: (torch.utils.dlpack.to_dlpack(b["input_ids"]), np.from_dlpack(b["pixel_values"])),
               lambda h, i, p: (torch.from_dlpack(h[0]), torch.from_numpy(h[1]), i, p)),
    "to cpu / detach": (lambda b: (b["input_ids"].to("cpu"), b["pixel_values"].detach().requires_grad_()),
                        lambda h, i, p: (h[0], h[1].detach(), i, p)),
    "shallow copy": (lambda b: copy.copy(b), lambda h, i, p: (h["input_ids"], h["pixel_values"], i, p)),
    "default_collate again": (lambda b: torch.utils.data.default_collate([{k: b[k] for k in ("input_ids", "pixel_values")}]),
                              lambda h, i, p: (h["input_ids"][0], h["pixel_values"][0], i, p)),
    "share_memory_": (lambda b: (b["input_ids"].share_memory_(), b["pixel_values"].share_memory_()),
                      lambda h, i, p: (h[0], h[1], i, p)),
    # autograd saves pixel_values for the backward of p * p * w: the gradient reads them after the loop
    "autograd saved input": (lambda b: (b["input_ids"], (b["pixel_values"] * b["pixel_values"] * _W).sum()),
                             lambda h, i, p: (h[0], torch.autograd.grad(h[1], _W)[0], i, (p * p).sum().reshape(1))),
}


@pytest.mark.parametrize("name", list(HOLDS))
def test_every_way_of_holding_a_batch_keeps_its_slot(out, ref, name):
    hold, read = HOLDS[name]
    held = _held(out, 1, hold)
    assert len(held) == len(ref) > 3
    for h, (i, p) in zip(held, ref):
        a, b, ei, ep = read(h, i, p)
        assert torch.equal(a, ei), name
        if name == "autograd saved input":
            assert torch.allclose(b, ep, rtol=1e-6), name
        else:
            assert torch.equal(b, ep), name


def test_the_check_sees_an_overwrite(out, ref):
    """Positive control: a raw pointer that does not hold the batch IS overwritten by a later batch
    in the one slot (so the checks above would fail if a hold did not keep its slot). Read while the
    epoch runs: the slot is unmapped when its worker finishes."""
    ds = ShardDataset(out, seed=3, buffer_size=8, **MODE)
    ds.ring_depth = 1
    first, changed, n = None, False, 0
    for b in ds.loader(num_workers=1):
        if first is None:
            first = _raw(b["pixel_values"])
        n += 1
        del b
        gc.collect()
        changed |= not np.array_equal(first, ref[0][1].numpy())
    assert n == len(ref) > 3 and changed


def _enospc(size):
    raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1_2_3>: No space left on device (28)")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_dev_shm_falls_back_to_the_pipe(out, monkeypatch, workers):
    """No shared memory to be had (a container's small /dev/shm): the ring and the fresh segment
    fall back to the pipe, and the batches equal the reference (they did raise ENOSPC in the worker)."""
    ds = ShardDataset(out, seed=3, buffer_size=8, **MODE)
    ds.ring_depth = 0
    ref = list(ds.loader(num_workers=workers))
    monkeypatch.setattr(torch.UntypedStorage, "_new_shared", classmethod(lambda cls, size, **kw: _enospc(size)))
    monkeypatch.setattr(D, "PIPE_MAX_BYTES", 0)          # every fresh buffer wants a segment too
    for depth in (None, 0):
        ds = ShardDataset(out, seed=3, buffer_size=8, **MODE)
        ds.ring_depth = depth
        got = list(ds.loader(num_workers=workers))
        assert len(got) == len(ref) > 3
        for a, b in zip(got, ref):
            assert_same_batch(a, b)


SMALL_SHM = textwrap.dedent("""
    import sys, gc
    from pipeline.dataset import ShardDataset
    from test_dataset_lazy_issue12 import MODES
    from dataset_factory import assert_same_batch
    def run(depth):
        ds = ShardDataset(sys.argv[1], seed=3, buffer_size=8, **MODES["packed rows"]); ds.ring_depth = depth
        return list(ds.loader(num_workers=2))
    ref, got = run(0), run(None)
    assert len(got) == len(ref) > 3
    for a, b in zip(got, ref): assert_same_batch(a, b)
    print("OK", len(got))
""")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare(1) to mount a small /dev/shm")
def test_a_real_small_dev_shm(out):
    """A 2 MiB /dev/shm (a tmpfs in a private mount namespace): the ring's slots do not fit."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.path.join(os.getcwd(), "tests")]))
    r = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=2m tmpfs /dev/shm && exec "$@"', "sh",
                        sys.executable, "-c", SMALL_SHM, str(out)], capture_output=True, text=True, env=env, timeout=300)
    if r.returncode and "mount" in r.stderr and "OK" not in r.stdout and "Traceback" not in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_a_numpy_view_of_the_resolved_buffer_keeps_its_slot():
    """numpy collapses a view's base to the first array that owns its memory or whose base is not
    an ndarray: a view of the resolved batch buffer points past it (to the slot's whole ndarray),
    so a finalizer on the buffer alone fires while such a view still reads the slot."""
    t = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(1 << 20), 0, (1 << 20,), (1,))
    t[0] = 1                                                    # busy: the worker sent a batch in it
    arr = D.RingRef(os.getpid() + 10 ** 7, 0, 0, 1000, t).resolve()
    views = [arr[10:], arr.view(np.int32), np.asarray(arr)[::2]]
    del arr
    gc.collect()
    assert int(t[0]) == 1, "the slot was released while numpy views of its batch live"
    views.pop()
    views.pop()
    gc.collect()
    assert int(t[0]) == 1
    views.clear()
    gc.collect()
    assert int(t[0]) == 0                                       # released once nothing of the batch is left
    D.forget_ring_slots([os.getpid() + 10 ** 7])


def test_a_forked_child_does_not_release_the_parents_slot():
    """A process forked from the training process (an eval DataLoader's workers, os.fork) inherits
    the batches it holds and their finalizers; when the child drops its copy (or runs its exit
    hooks), the release must not write the shared busy flag while the parent still holds the batch."""
    t = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(1 << 20), 0, (1 << 20,), (1,))
    t[0] = 1
    pid = os.getpid() + 2 * 10 ** 7
    arr = D.RingRef(pid, 0, 0, 1000, t).resolve()
    child = os.fork()
    if child == 0:                                   # the child drops the inherited batch, then exits
        try:
            del arr
            gc.collect()
            import weakref
            weakref.finalize._exitfunc()             # what a normal interpreter exit runs
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    assert int(t[0]) == 1, "a forked child released a slot the training process still holds"
    del arr
    gc.collect()
    assert int(t[0]) == 0
    D.forget_ring_slots([pid])


def _ref_epochs(out, epochs=2):
    ds = ShardDataset(out, seed=3, buffer_size=8, **MODE)
    ds.ring_depth = 0
    dl = ds.loader(num_workers=2)
    return [[_copy(b) for b in dl] for _ in range(epochs)]


def _copy(b):
    c = type(b)({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in b.items()})
    c.ids, c.frames, c.geometry = list(b.ids), [(k, f.clone()) for k, f in (b.frames or [])], b.geometry
    return c


@pytest.mark.parametrize("persistent", [False, True])
def test_an_interrupted_epoch_then_the_next(out, persistent):
    """KeyboardInterrupt after 3 batches (kept), then the next epoch on the same loader (kept too):
    every kept batch, of both epochs, still equals the reference at the end."""
    ref = _ref_epochs(out)
    ds = ShardDataset(out, seed=3, buffer_size=8, **MODE)
    dl = ds.loader(num_workers=2, persistent_workers=persistent)
    held = []
    with pytest.raises(KeyboardInterrupt):
        for b in dl:
            held.append(b)
            if len(held) == 3:
                raise KeyboardInterrupt
    ds.set_epoch(1)
    nxt = list(dl)
    assert len(nxt) == len(ref[1])
    for a, r in zip(held + nxt, ref[0][:3] + ref[1]):
        assert_same_batch(a, r)


def test_a_killed_worker_leaves_held_batches_intact(out):
    """A worker SIGKILLed mid-epoch: the batches the loop holds stay intact, and the next epoch (new
    workers, new rings) equals the reference."""
    import signal

    ref = _ref_epochs(out, 1)[0]
    ds = ShardDataset(out, seed=3, buffer_size=8, **MODE)
    dl = ds.loader(num_workers=2)
    held, it = [], iter(dl)
    held.append(next(it))
    proc = [o for o in gc.get_objects() if type(o).__name__ == "_MultiProcessingDataLoaderIter" and o._workers][-1]._workers[0]
    # torch's SIGCHLD handler raises "DataLoader worker (pid N) is killed by signal" at whatever line
    # runs when the signal lands: everything up to the iterator's shutdown stays inside the try
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        for b in it:          # (no error if the killed worker had already sent all it had)
            held.append(b)
    except RuntimeError as exc:
        assert "DataLoader worker" in str(exc)
    finally:
        del it, proc
        gc.collect()
    ds.set_epoch(0)
    again = list(dl)
    assert len(again) == len(ref)
    for a, r in zip(held, ref):
        assert_same_batch(a, r)
    for a, r in zip(again, ref):
        assert_same_batch(a, r)
