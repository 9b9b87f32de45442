"""The shards are plain webdataset tars: `webdataset.WebDataset` and `ray.data.read_webdataset`
read them, and what they return feeds vlprep's collators unchanged (issue #12)."""
from __future__ import annotations

import numpy as np
import pytest

from dataset_factory import make_out
from pipeline.dataset import sample_from_webdataset
from pipeline.loader import ARRAYS, ShardLoader
from pipeline.packing import pack_collate


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return make_out(tmp_path_factory.mktemp("eco") / "out", 60, per_shard=20, image_every=4)


def _same(a: dict, b: dict):
    assert a["id"] == b["id"]
    for name in ARRAYS:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name], b[name])


def test_webdataset_reads_the_shards(out):
    import webdataset as wds

    loader = ShardLoader(out)
    urls = [str(out / s) for s in loader.shards()]
    got = [sample_from_webdataset(r) for r in wds.WebDataset(urls, shardshuffle=False).decode()]
    want = list(loader)
    assert len(got) == len(want) == 60
    for a, b in zip(got, want):
        _same(a, b)
    for key, arr in pack_collate(got[:5]).items():
        np.testing.assert_array_equal(arr, pack_collate(want[:5])[key])
    # node / worker splitting is webdataset's own
    halves = [[r["__key__"] for r in wds.WebDataset(urls, shardshuffle=False, nodesplitter=lambda s, r=r: list(s)[r::2])]
              for r in range(2)]
    assert sorted(halves[0] + halves[1]) == sorted(loader.ids()) and not set(halves[0]) & set(halves[1])
    with pytest.raises(ValueError, match="decode"):
        sample_from_webdataset(next(iter(wds.WebDataset(urls, shardshuffle=False))))


@pytest.mark.slow
def test_ray_data_reads_the_shards(out):
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        loader = ShardLoader(out)
        ds = ray.data.read_webdataset([str(out / s) for s in loader.shards()])
        rows = sorted((sample_from_webdataset(r) for r in ds.iter_rows()), key=lambda s: s["id"])
    finally:
        if started:
            ray.shutdown()
    want = sorted(loader, key=lambda s: s["id"])
    assert len(rows) == len(want) == 60
    for a, b in zip(rows, want):
        _same(a, b)
