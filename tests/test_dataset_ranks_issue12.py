"""Issue 12: every rank yields the same number of batches per epoch (equalize), so DDP's collectives
never wait on a rank that ran out. Uneven shards (10 shards of 2 … 200 samples, the largest more than any rank's fair share) over 2 and
3 ranks × 0/2/3 DataLoader workers, and 5 shards of 37, 5, 23, 61, 14 over more readers than shards, padded / packed online / packed from a plan: identical batch
counts per rank per epoch, every yielded sample once, the rest counted as dropped (or too long)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset import ShardDataset, equal_quotas
from pipeline.io import MANIFEST_SCHEMA, read_manifest, rows_to_table, write_table
from pipeline.loader import ShardLoader
from pipeline.packing import build_plan, manifest_digest, write_plan
from pipeline.writer import ShardWriter
from tests.dataset_factory import tiny_sample

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")
SIZES = (200, 5, 23, 30, 14, 2, 48, 9, 30, 11)      # 372 samples; one shard outweighs a rank's share
FEW = (37, 5, 23, 61, 14)                             # fewer shards than readers: every G-th sample
MAX_TOKENS = 300


def make_uneven(root: Path, sizes=SIZES, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows, i = [], 0
    for k, size in enumerate(sizes):
        unit = f"u{k:05d}"
        with ShardWriter(root / "shards" / f"{unit}.tar") as w:
            for _ in range(size):
                sid = f"s{i:06d}"
                e = tiny_sample(sid, int(rng.integers(8, 160)), rng, image=i % 5 == 0)
                w.write(sid, e, {"id": sid})
                L = len(e.input_ids)
                rows.append(dict(id=sid, source="gen.jsonl", record_index=i, unit=unit, shard=f"shards/{unit}.tar",
                                 key=sid, preset="qwen2.5-vl", n_tokens=L, n_text_tokens=L - 4 * len(e.image_grid_thw),
                                 n_image_tokens=4 * len(e.image_grid_thw), n_video_tokens=0,
                                 n_supervised_tokens=int((e.labels != -100).sum()), n_images=len(e.image_grid_thw),
                                 n_videos=0, n_boxes=0, pixel_rows=len(e.pixel_values)))
                i += 1
    write_table(rows_to_table(rows, MANIFEST_SCHEMA), root / "manifest.parquet")
    table = read_manifest(root)
    plan, _ = build_plan(table, MAX_TOKENS, window=8)
    write_plan(root, plan, source="manifest", digest=manifest_digest(table), max_tokens=MAX_TOKENS, window=8)
    return root


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return make_uneven(tmp_path_factory.mktemp("ranks") / "out")


@pytest.fixture(scope="module")
def out_few(tmp_path_factory):
    return make_uneven(tmp_path_factory.mktemp("ranks_few") / "out", FEW)


MODES = {"padded": dict(batch_size=4), "packed": dict(max_tokens=MAX_TOKENS), "plan": dict(pack_plan=True)}


def _run_epochs(out, mode, world, workers, epochs=2, **kw):
    """[epoch][rank] → list of batches (each a list of ids); and the datasets' epoch plans."""
    got = [[None] * world for _ in range(epochs)]         # epochs 0..epochs-1
    plans = [[None] * world for _ in range(epochs)]
    for r in range(world):
        ds = ShardDataset(out, seed=7, buffer_size=16, rank=r, world_size=world, **MODES[mode], **kw)
        dl = ds.loader(num_workers=workers)
        for e in range(epochs):
            plans[e][r] = ds.epoch_plan(max(1, workers))
            got[e][r] = [list(b.ids) for b in dl]
    return got, plans


def _check(out, got, plans, world, surplus=True, all_ids=None):
    """Equal counts per rank, each sample at most once, the rest exactly the counted drops."""
    all_ids = set(ShardLoader(out).ids()) if all_ids is None else all_ids
    dropped_sets = []
    for e in range(len(got)):
        p = plans[e][0]
        assert all(pl == p for pl in plans[e])                         # every rank computes the same plan
        counts = [len(got[e][r]) for r in range(world)]
        assert counts == [p.batches] * world, (e, counts, p)
        assert p.batches == min(p.rank_batches)
        assert [sum(q) for q in p.quotas] == [p.batches] * world
        assert [rb - p.batches for rb in p.rank_batches] == p.dropped_batches
        seen = Counter(i for r in range(world) for b in got[e][r] for i in b)
        assert set(seen.values()) == {1}                               # nothing twice
        missing = all_ids - set(seen)                                  # (all samples are ≤ 300 tokens here)
        assert len(missing) == sum(p.dropped_samples), (len(missing), p)
        assert (sum(p.dropped_samples) > 0) == (max(p.rank_batches) > min(p.rank_batches))
        dropped_sets.append(missing)
    if surplus:       # the shards are uneven: some epoch had a surplus, and what is dropped rotates with the shuffle
        assert any(dropped_sets), [pl[0] for pl in plans]
        assert dropped_sets[0] != dropped_sets[1]
    return dropped_sets


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("world", [2, 3])
def test_equal_batches_per_rank_every_sample_once_dropped_counted(out, mode, world, workers):
    got, plans = _run_epochs(out, mode, world, workers)
    _check(out, got, plans, world)


@pytest.mark.parametrize("mode", list(MODES))
def test_fewer_shards_than_readers(out_few, mode):
    got, plans = _run_epochs(out_few, mode, 2, 3)
    _check(out_few, got, plans, 2, surplus=False)


@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_selection_equalised(tmp_path, mode):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = make_uneven(tmp_path / "out")
    table = pq.read_table(root / "manifest.parquet")
    keep = pa.array([i % 3 != 0 for i in range(table.num_rows)])
    (root / "selection").mkdir()
    pq.write_table(table.filter(keep), root / "selection" / "manifest.parquet")
    want = set(table.filter(keep).column("id").to_pylist())
    got, plans = _run_epochs(root, mode, 2, 2, selection=True)
    _check(root, got, plans, 2, all_ids=want)


@pytest.mark.parametrize("mode", ["padded", "plan"])
def test_each_rank_drops_from_its_own_share(out, mode):
    """What a rank leaves out is the rest of its own (unequalised) share, and no more."""
    got, plans = _run_epochs(out, mode, 2, 2, epochs=1)
    share, _ = _run_epochs(out, mode, 2, 2, epochs=1, equalize=False)
    p = plans[0][0]
    for r in range(2):
        mine = {i for b in got[0][r] for i in b}
        full = {i for b in share[0][r] for i in b}
        assert mine <= full and len(full - mine) == p.dropped_samples[r]
        assert len(share[0][r]) == p.rank_batches[r]


@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_resume_keeps_the_equal_count(out, mode):
    kw = dict(seed=7, buffer_size=16, rank=0, world_size=2, **MODES[mode])
    full_ds = ShardDataset(out, **kw)
    full = [b.ids for b in full_ds.loader(num_workers=2)]
    assert len(full) == full_ds.epoch_plan(2, epoch=0).batches
    ds = ShardDataset(out, **kw)
    head = []
    for i, b in enumerate(ds.loader(num_workers=2)):
        head.append(b.ids)
        if i + 1 == 3:
            break
    state = ds.state_dict()
    assert state["equalize"] is True
    resumed = ShardDataset(out, **kw)
    resumed.load_state_dict(state)
    tail = [b.ids for b in resumed.loader(num_workers=2)]
    assert head + tail == full
    with pytest.raises(ValueError, match="equalize"):
        ShardDataset(out, **kw, equalize=False).load_state_dict(state)


def test_default_on_for_several_ranks_only(out):
    assert ShardDataset(out, batch_size=4).equalize is False
    assert ShardDataset(out, batch_size=4, rank=1, world_size=2).equalize is True
    off = ShardDataset(out, batch_size=4, rank=0, world_size=2, equalize=False)
    p = off.epoch_plan()
    assert p.dropped_samples == [0, 0] and p.rank_batches[0] != p.rank_batches[1]
    assert off.dropped == 0


def test_equal_quotas():
    assert equal_quotas([5, 3, 4], 12) == [5, 3, 4]
    assert equal_quotas([5, 3, 4], 9) == [3, 3, 3]
    assert equal_quotas([5, 3, 4], 7) == [3, 2, 2]          # ties: the highest worker gives first
    assert equal_quotas([0, 2], 0) == [0, 0]


def _ddp_worker(rank: int, world: int, out: str, init: str, result: str) -> None:
    import json

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        ds = ShardDataset(out, seed=3, max_tokens=MAX_TOKENS, buffer_size=16)    # rank/world from the group
        steps = []
        for epoch in range(2):
            n = 0
            for batch in ds.loader(num_workers=2):
                t = torch.tensor([float(batch["input_ids"].shape[1])])
                dist.all_reduce(t)                 # a rank that ran out first would leave the others waiting here
                n += 1
            steps.append(n)
        Path(result).write_text(json.dumps({"steps": steps, "dropped": ds.epoch_plan(2, epoch=0).dropped_samples}))
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_all_reduce_every_batch(out, tmp_path):
    """Two real torch.distributed (gloo) processes all-reduce once per batch over two epochs: the
    collectives pair up, so no rank waits (without equalize this OUT's ranks get different counts)."""
    import json

    import torch.multiprocessing as mp

    world = 2
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_ddp_worker, args=(r, world, str(out), f"file://{tmp_path / 'pg'}",
                                                    str(tmp_path / f"r{r}.json"))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    alive = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not alive, "a rank hung in all_reduce"
    assert [p.exitcode for p in procs] == [0, 0]
    res = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(world)]
    assert res[0]["steps"] == res[1]["steps"]
    off = ShardDataset(out, seed=3, max_tokens=MAX_TOKENS, buffer_size=16, rank=0, world_size=2, equalize=False)
    counts = [off.epoch_plan(2, epoch=e).rank_batches for e in range(2)]
    assert any(c[0] != c[1] for c in counts)                  # unequalised, the ranks would differ
    assert res[0]["steps"] == [min(c) for c in counts]


def test_manifest_token_counts_that_lie_are_an_error_not_a_short_rank(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.dataset import ShardDataError

    root = make_uneven(tmp_path / "out", FEW)
    t = pq.read_table(root / "manifest.parquet")
    t = t.set_column(t.schema.get_field_index("n_tokens"), "n_tokens", pa.array([290] * t.num_rows, pa.int64()))
    pq.write_table(t, root / "manifest.parquet")
    ds = ShardDataset(root, max_tokens=MAX_TOKENS, rank=0, world_size=2)
    with pytest.raises(ShardDataError, match="n_tokens"):
        list(ds)
