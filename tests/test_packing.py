"""pipeline.packing plans and the online packer, `vlprep pack`, and the dataset replaying a plan (issue #12)."""
from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataset_factory import make_out
from jobs.cli import main as cli
from pipeline.dataset import ShardDataError, ShardDataset
from pipeline.loader import ShardLoader
from pipeline.packing import OnlinePacker, plan_packs, read_plan
from pipeline.writer import ShardWriter
from processors.sample import EncodedSample

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


def test_plan_packs_bfd():
    lengths = [7, 5, 5, 4, 3, 3, 2, 1, 12]
    packs, too_long = plan_packs(lengths, 10)
    assert too_long == [8]
    assert sorted(i for p in packs for i in p) == list(range(8))
    assert all(sum(lengths[i] for i in p) <= 10 for p in packs)
    assert len(packs) == 3                                  # 30 tokens in 3 × 10: optimal
    assert packs == plan_packs(lengths, 10)[0]              # deterministic
    assert packs == sorted(packs, key=lambda p: p[0]) and all(p == sorted(p) for p in packs)
    with pytest.raises(ValueError, match="max_tokens"):
        plan_packs(lengths, 0)


def test_plan_packs_fill_on_a_realistic_mix():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(6.5, 0.8, 2000), 30, 16000).astype(int)
    packs, too_long = plan_packs(lengths, 16384)
    fill = lengths.sum() / (len(packs) * 16384)
    assert not too_long and fill > 0.99, fill


def test_online_packer():
    rng = np.random.default_rng(1)
    samples = [{"id": f"x{i}", "input_ids": np.zeros(int(n))} for i, n in enumerate(rng.integers(1, 120, 500))]
    samples.append({"id": "huge", "input_ids": np.zeros(400)})
    packer = OnlinePacker(256, open_packs=8)
    packs = list(packer.pack(samples))
    ids = [s["id"] for p in packs for s in p]
    assert sorted(ids) == sorted(s["id"] for s in samples[:-1]) and len(ids) == len(set(ids))
    assert all(sum(len(s["input_ids"]) for s in p) <= 256 for p in packs)
    assert packer.stats.too_long == ["huge"] and packer.stats.packs == len(packs)
    assert packer.stats.fill > 0.95, packer.stats.fill
    assert [[s["id"] for s in p] for p in OnlinePacker(256, 8).pack(samples)] == [[s["id"] for s in p] for p in packs]


@pytest.fixture()
def out(tmp_path):
    return make_out(tmp_path / "out", 300, per_shard=50, lengths=(20, 200), image_every=9)


def test_vlprep_pack_and_dataset_replay(out, capsys):
    assert cli(["pack", str(out), "--max-tokens", "512", "--window", "40"]) == 0
    printed = capsys.readouterr().out
    assert "fill" in printed and (out / "packs.parquet").exists()
    plan = pq.read_table(out / "packs.parquet")
    assert plan.column("id").to_pylist() == ShardLoader(out).ids()
    packs = {}
    for sid, p in zip(plan.column("id").to_pylist(), plan.column("pack").to_pylist()):
        packs.setdefault(p, set()).add(sid)
    assert -1 not in packs
    got = []
    for r in range(2):
        ds = ShardDataset(out, pack_plan=True, rank=r, world_size=2, seed=4, equalize=False)
        assert ds.max_tokens == 512
        for batch in ds.loader(num_workers=2):
            assert batch["input_ids"].shape[1] <= 512
            got.append(frozenset(batch.ids))
    assert Counter(got) == Counter(frozenset(v) for v in packs.values())
    # the plan is deterministic: a second run writes the same bytes
    first = (out / "packs.parquet").read_bytes()
    assert cli(["pack", str(out), "--max-tokens", "512", "--window", "40"]) == 0
    assert (out / "packs.parquet").read_bytes() == first


def test_too_long_samples_are_left_out_and_counted(out, capsys):
    assert cli(["pack", str(out), "--max-tokens", "150"]) == 0
    printed = capsys.readouterr().out
    plan = pq.read_table(out / "packs.parquet")
    long_ids = [i for i, n in zip(plan.column("id").to_pylist(), plan.column("n_tokens").to_pylist()) if n > 150]
    assert long_ids and f"left out {len(long_ids)} samples longer than 150" in printed
    ds = ShardDataset(out, pack_plan=True, shuffle=False)
    seen = [i for b in ds for i in b.ids]
    assert sorted(seen + long_ids) == sorted(ShardLoader(out).ids()) and sorted(ds.too_long) == sorted(long_ids)
    online = ShardDataset(out, max_tokens=150, shuffle=False)
    seen = [i for b in online for i in b.ids]
    assert sorted(seen + long_ids) == sorted(ShardLoader(out).ids()) and sorted(online.too_long) == sorted(long_ids)


def test_plan_not_matching_the_manifest(out, tmp_path):
    assert cli(["pack", str(out), "--max-tokens", "512"]) == 0
    with pytest.raises(ValueError, match="built for 512"):
        ShardDataset(out, pack_plan=True, max_tokens=1024)
    # the manifest changed after packing (a re-prepare dropped a sample)
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    m = pq.read_table(bad / "manifest.parquet")
    pq.write_table(m.slice(1), bad / "manifest.parquet")
    with pytest.raises(ShardDataError, match=r"packs.parquet was built from manifest .* re-run `vlprep pack"):
        ShardDataset(bad, pack_plan=True)
    # same manifest, but a shard rewritten in another order
    bad2 = tmp_path / "bad2"
    shutil.copytree(out, bad2)
    samples = list(ShardLoader(bad2).iter_shard("shards/u00002.tar"))[::-1]
    with ShardWriter(bad2 / "shards" / "u00002.tar") as w:
        for s in samples:
            w.write(s["id"], EncodedSample(s["id"], *(s[k] for k in EncodedSample.ARRAY_FIELDS)), s["meta"])
    with pytest.raises(ShardDataError, match=r"packs.parquet does not match shard .*u00002.tar"):
        list(ShardDataset(bad2, pack_plan=True, shuffle=False))


def test_pack_cli_errors(tmp_path, capsys):
    assert cli(["pack", str(tmp_path), "--max-tokens", "100"]) == 2
    assert "manifest.parquet not found" in capsys.readouterr().err
    assert cli(["pack", str(tmp_path), "--max-tokens", "0"]) == 2


def test_plan_for_a_selection(out):
    m = pq.read_table(out / "manifest.parquet")
    keep = pa.array([i % 4 != 1 for i in range(m.num_rows)])
    (out / "selection").mkdir()
    pq.write_table(m.filter(keep), out / "selection" / "manifest.parquet")
    assert cli(["pack", str(out), "--max-tokens", "512", "--selection"]) == 0
    assert read_plan(out, selection=True).source == "selection"
    with pytest.raises(FileNotFoundError, match="packs.parquet"):
        ShardDataset(out, pack_plan=True)
    seen = [i for b in ShardDataset(out, pack_plan=True, selection=True) for i in b.ids]
    assert sorted(seen) == sorted(m.filter(keep).column("id").to_pylist())
