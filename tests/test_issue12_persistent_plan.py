"""Issue 12 (review): persistent DataLoader workers take the epoch plan from the training process.

With `persistent_workers=True` a kept worker used to recompute the whole EpochPlan every epoch
(with online packing: a replay of the shuffle and the packer for every reader of every rank),
although it needs only its own reader's quota. Now the training process computes the plan once per
epoch (`_announce`) and writes each of its readers' quotas into the shared state with the epoch and
the resume position; a worker replays at most its own reader's batch sizes (padded / pack plan, for
the equalising cut). These tests count, through a real DataLoader with forked persistent workers,
which process computes what (each call appends a line to a file), and check that the batches are
byte-identical to workers started afresh every epoch: 3 epochs, 2 ranks (equalised, uneven shards),
padded / packed online / pack plan, and a resume mid-epoch into running workers.
"""
from __future__ import annotations

import os

import pytest

from dataset_factory import assert_same_batch
import pipeline.dataset as D
from pipeline.dataset import ShardDataset
from test_dataset_ranks_issue12 import FEW, MODES, make_uneven
from test_issue12_handoff import _clone

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")
WORLD, WORKERS, EPOCHS = 2, 2, 3


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return make_uneven(tmp_path_factory.mktemp("persistent_plan") / "out")


@pytest.fixture
def calls(tmp_path, monkeypatch):
    """Record (pid, what, args) of every full-plan computation and every reader-size replay, from
    whichever process makes it (forked workers inherit the wrappers and append to the same file)."""
    log = tmp_path / "calls.txt"
    plan, sizes, split = ShardDataset._compute_epoch_plan, ShardDataset._reader_batch_sizes, D.balanced_split

    def _note(what, *args):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {what} {' '.join(map(str, args))}\n")

    def compute_epoch_plan(self, epoch, nw):
        _note("plan", epoch, nw)
        return plan(self, epoch, nw)

    def reader_batch_sizes(self, g, G, epoch):
        _note("sizes", g, G, epoch)
        return sizes(self, g, G, epoch)

    def balanced_split(shards, weights, world, workers):
        _note("split", world * workers)
        return split(shards, weights, world, workers)

    monkeypatch.setattr(ShardDataset, "_compute_epoch_plan", compute_epoch_plan)
    monkeypatch.setattr(D, "balanced_split", balanced_split)
    monkeypatch.setattr(ShardDataset, "_reader_batch_sizes", reader_batch_sizes)

    def read():
        if not log.exists():
            return []
        rows = [line.split() for line in log.read_text().splitlines()]
        log.unlink()
        return [(int(r[0]), r[1], tuple(int(x) for x in r[2:])) for r in rows]

    return read


def _rank_epochs(out, mode, rank, persistent, epochs=EPOCHS):
    ds = ShardDataset(out, seed=11, buffer_size=8, rank=rank, world_size=WORLD, **MODES[mode])
    dl = ds.loader(num_workers=WORKERS, persistent_workers=persistent)
    return [[_clone(b) for b in dl] for _ in range(epochs)]


def _assert_same(got, ref):
    assert [[b.ids for b in e] for e in got] == [[b.ids for b in e] for e in ref]
    for e_got, e_ref in zip(got, ref):
        for a, b in zip(e_got, e_ref):
            assert_same_batch(a, b)


@pytest.mark.parametrize("mode", list(MODES))
def test_kept_workers_compute_only_their_own_reader(out, mode, calls):
    main = os.getpid()
    for rank in range(WORLD):
        ref = _rank_epochs(out, mode, rank, persistent=False)
        calls()
        got = _rank_epochs(out, mode, rank, persistent=True)
        log = calls()
        _assert_same(got, ref)
        assert sum(len(e) for e in got) > EPOCHS * 2
        # the training process: the whole plan once per epoch
        assert [c for c in log if c[0] == main and c[1] == "plan"] == [(main, "plan", (e, WORKERS))
                                                                         for e in range(EPOCHS)]
        in_workers = [c for c in log if c[0] != main]
        assert len({c[0] for c in log}) <= 1 + WORKERS
        assert not [c for c in in_workers if c[1] in ("plan", "split")], in_workers   # never the whole plan / split
        # a worker replays at most its own reader's sizes (the equalising cut of padded / plan), once an epoch
        mine = {(rank * WORKERS + w, WORLD * WORKERS, e) for w in range(WORKERS) for e in range(EPOCHS)}
        replays = [c[2] for c in in_workers if c[1] == "sizes"]
        assert set(replays) <= mine and len(replays) == len(set(replays)), replays
        if mode == "packed":            # online packing: the quota alone, no replay at all
            assert not replays


@pytest.mark.parametrize("mode", ["packed", "plan"])
def test_resume_into_kept_workers(out, mode, calls):
    """Epoch 0, three batches of epoch 1, state_dict; then iterating on, load_state_dict into the
    running workers and the rest: the same batches as fresh workers, and still no plan in a worker."""
    main = os.getpid()

    def scenario(persistent):
        ds = ShardDataset(out, seed=11, buffer_size=8, rank=1, world_size=WORLD, **MODES[mode])
        dl = ds.loader(num_workers=WORKERS, persistent_workers=persistent)
        first = [_clone(b) for b in dl]
        it = iter(dl)
        part = [_clone(next(it)) for _ in range(3)]
        state = ds.state_dict()
        del it
        rest = [_clone(b) for b in dl]
        ds.load_state_dict(state)
        again = [_clone(b) for b in dl]
        return [first, part, rest, again, [_clone(b) for b in dl]]

    ref = scenario(False)
    calls()
    got = scenario(True)
    assert not [c for c in calls() if c[0] != main and c[1] in ("plan", "split")]
    _assert_same(got, ref)
    first, part, rest, again, after = got
    assert [b.ids for b in again] == [b.ids for b in rest] and len(part) == 3 and after


def test_spawned_kept_workers(out):
    """The spawn start method: the shared state reaches workers started from a pickled dataset."""
    def run(**kw):
        ds = ShardDataset(out, seed=11, buffer_size=8, rank=0, world_size=WORLD, **MODES["packed"])
        dl = ds.loader(num_workers=WORKERS, **kw)
        return [[_clone(b) for b in dl] for _ in range(2)]

    _assert_same(run(persistent_workers=True, multiprocessing_context="spawn"), run())


@pytest.fixture(scope="module")
def out_few(tmp_path_factory):
    return make_uneven(tmp_path_factory.mktemp("persistent_plan_few") / "out", FEW)


@pytest.mark.parametrize("equalize", [True, False])
def test_fewer_shards_than_readers_and_no_equalize(out, out_few, equalize, calls):
    """5 shards for 2 ranks × 3 workers (every reader streams all shards, every G-th sample), and the
    10 uneven shards without equalize (no quotas, the shards still dealt by the training process)."""
    main = os.getpid()
    for root, workers in ((out_few, 3), (out, 2)):
        def run(persistent):
            ds = ShardDataset(root, seed=11, buffer_size=8, rank=1, world_size=WORLD, equalize=equalize,
                              **MODES["packed"])
            dl = ds.loader(num_workers=workers, persistent_workers=persistent)
            return [[_clone(b) for b in dl] for _ in range(EPOCHS)]

        ref = run(False)
        # fresh workers inherit the split made once in the training process (none re-splits)
        assert not [c for c in calls() if c[0] != main and c[1] == "split"]
        _assert_same(run(True), ref)
        assert not [c for c in calls() if c[0] != main and c[1] in ("plan", "split")]


def test_a_kept_worker_that_dies_mid_epoch(out):
    """A kept worker killed mid-epoch (SIGKILL, as the OOM killer does): torch raises in the loop; the
    next pass over the same loader starts fresh workers at the batch after the last one delivered, and
    the epoch and the next are the batches of an uninterrupted run (torch alone waits on the dead
    worker and raises again)."""
    import signal

    ref = _rank_epochs(out, "packed", 1, persistent=False)
    ds = ShardDataset(out, seed=11, buffer_size=8, rank=1, world_size=WORLD, **MODES["packed"])
    dl = ds.loader(num_workers=WORKERS, persistent_workers=True)
    first = [_clone(b) for b in dl]
    it = iter(dl)
    part = [_clone(next(it)) for _ in range(3)]
    victim = dl._iterator._workers[0]
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        while True:
            part.append(_clone(next(it)))
    del it
    rest = [_clone(b) for b in dl]
    assert victim.pid not in [w.pid for w in dl._iterator._workers]
    _assert_same([first, part + rest, [_clone(b) for b in dl]], ref)
