"""Issue 12 (follow-up): one collator for the training loader and the scorers' batching.

The scorer's HostBatch must feed exactly the tensors the dataset's collators build for the same
samples, padded and packed, from shard format 2 read as rows and as stored frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from filters.reward.batching import HostBatch, plan_packs as score_plan_packs
from pipeline.loader import ShardLoader
from pipeline.packing import PackedCollator, PaddedCollator, plan_packs
from pipeline.writer import ShardWriter
from processors.presets import get_preset
from test_reward_fixtures import encode_frames, photo


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_collator")
    rng = np.random.default_rng(3)
    video = np.stack([photo(56, 84, seed=s) for s in range(4)])
    video[2:] = np.clip(video[2:].astype(np.int16) + rng.integers(-3, 4, video[2:].shape), 0, 255).astype(np.uint8)
    enc = [
        encode_frames("img", "What is this?", "A photo.", images=[photo(56, 56, 1)]),
        encode_frames("txt", "Say hi.", "Hi there, friend."),
        encode_frames("vid", "What moves?", "Nothing much.", videos=[video], secs=[1.0]),
        encode_frames("both", "Compare.", "They look alike.", images=[photo(28, 84, 2), photo(56, 28, 5)],
                      videos=[video[:2]], secs=[0.5]),
    ]
    with ShardWriter(root / "shards" / "u00000.tar") as w:
        for e in enc:
            w.write(e.id, e, {"id": e.id})
    loader = ShardLoader(root)
    rows = list(loader.iter_shard("shards/u00000.tar"))
    frames = list(loader.iter_shard("shards/u00000.tar", pixels="frames"))
    assert all("stored_pixels" in s for s in frames) and [s["id"] for s in rows] == ["img", "txt", "vid", "both"]
    return rows, frames


def _equal(a, b, name):
    assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
    assert torch.equal(a.cpu(), b.cpu()), name


@pytest.mark.parametrize("pixels", ["rows", "frames"])
@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [1], [2, 0]])
def test_scorer_padded_batch_is_the_dataset_collators(shard, pixels, order):
    rows, frames = shard
    preset = get_preset("qwen2.5-vl")
    want = PaddedCollator(preset)([rows[i] for i in order])
    hb = HostBatch([(rows if pixels == "rows" else frames)[i] for i in order], preset)
    t = hb.padded()
    for k in ("input_ids", "attention_mask", "labels", "position_ids"):
        _equal(t[k], want[k], k)
    assert t["segment"] is None
    img_pv, vid_pv = hb.normalized_patches()
    img_grid, vid_grid, sec = hb.grids()
    if "pixel_values" in want:
        _equal(img_pv, want["pixel_values"], "pixel_values")
        _equal(img_grid, want["image_grid_thw"], "image_grid_thw")
    else:
        assert img_grid is None and img_pv.shape[0] == 0
    if "pixel_values_videos" in want:
        _equal(vid_pv, want["pixel_values_videos"], "pixel_values_videos")
        _equal(vid_grid, want["video_grid_thw"], "video_grid_thw")
        _equal(sec, want["second_per_grid_ts"], "second_per_grid_ts")
    else:
        assert vid_grid is None and vid_pv.shape[0] == 0


@pytest.mark.parametrize("pixels", ["rows", "frames"])
@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 1], [2]])
def test_scorer_packed_row_is_the_dataset_collators(shard, pixels, order):
    rows, frames = shard
    preset = get_preset("qwen2.5-vl")
    want = PackedCollator(preset, flash_kwargs=True)([rows[i] for i in order])
    hb = HostBatch([(rows if pixels == "rows" else frames)[i] for i in order], preset)
    t = hb.packed()
    for k in ("input_ids", "labels", "position_ids"):
        _equal(t[k], want[k], k)
    assert t["position_ids"].shape[0] == 4 and t["attention_mask"] is None
    # segment: the sample index of every token, the same boundaries as the flash-attention kwargs
    cu = want["cu_seq_lens_q"].numpy()
    assert np.array_equal(np.flatnonzero(np.diff(t["segment"][0].numpy(), prepend=-1)), cu[:-1])
    img_pv, vid_pv = hb.normalized_patches()
    if "pixel_values" in want:
        _equal(img_pv, want["pixel_values"], "pixel_values")
    if "pixel_values_videos" in want:
        _equal(vid_pv, want["pixel_values_videos"], "pixel_values_videos")


def test_text_only_batch_keeps_three_row_positions(shard):
    rows, frames = shard
    hb = HostBatch(frames, get_preset("qwen2.5-vl")).text_only()
    want = PaddedCollator("qwen2.5-vl")([{**s, "position_ids": np.asarray(s["position_ids"])} for s in hb.samples])
    _equal(hb.padded()["position_ids"], want["position_ids"], "position_ids")
    assert hb.uint8_patches().shape == (0, get_preset("qwen2.5-vl").patch_dim)


def test_scorer_pack_plan_is_the_loaders_plus_overlong_singletons():
    lengths = [900, 10, 300, 700, 2000, 50, 640, 5]
    packs, too_long = plan_packs(lengths, 1000)
    got = score_plan_packs(lengths, 1000)
    assert got == packs + [[i] for i in too_long] and too_long == [4]
    assert sorted(i for p in got for i in p) == list(range(len(lengths)))   # every sample scored once
    with pytest.raises(ValueError, match="budget"):
        score_plan_packs(lengths, 0)


def test_one_collator_module():
    """pipeline's public names are the shared functions themselves, not copies."""
    import filters.reward.batching as fb
    import pipeline.loader as pl
    import pipeline.packing as pp
    import processors.collate as pc

    assert pl.collate is pc.collate and pl.batch_to_model_inputs is pc.batch_to_model_inputs
    assert pl.normalize_pixels is pc.normalize_pixels and pp.pack_collate is pc.pack_collate
    assert pp.plan_packs is pc.plan_packs and fb.collate is pc.collate and fb.pack_collate is pc.pack_collate


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_frames_batches_rebuild_on_the_device_bit_identical(shard, packed):
    """pixels="frames" batches (stored frames in .frames) give, after to_device, exactly the rows path."""
    from pipeline.dataset import to_device

    rows, frames = shard
    make = (lambda: PackedCollator("qwen2.5-vl", normalize=False)) if packed else \
        (lambda: PaddedCollator("qwen2.5-vl", normalize=False))
    for order in ([0, 1, 2, 3], [2, 3], [1]):
        fb = make()([frames[i] for i in order])
        rb = make()([rows[i] for i in order])
        assert "pixel_values" not in fb and "pixel_values_videos" not in fb
        assert bool(fb.frames) == any(len(rows[i]["image_grid_thw"]) + len(rows[i]["video_grid_thw"]) for i in order)
        got, want = to_device(fb, "cpu", "qwen2.5-vl"), to_device(rb, "cpu", "qwen2.5-vl")
        assert sorted(got) == sorted(want) and got.ids == want.ids
        for k in want:
            if torch.is_tensor(want[k]):
                _equal(got[k], want[k], k)
            else:
                assert got[k] == want[k], k


def test_dataset_frames_mode_through_worker_processes(tmp_path):
    """ShardDataset(pixels="frames") through a 1-worker DataLoader: the same batches as pixels="rows"."""
    from dataset_factory import make_out
    from pipeline.dataset import ShardDataset, to_device

    out = make_out(tmp_path / "out", 24, per_shard=8, image_every=2)
    kw = dict(seed=1, batch_size=3, normalize=False)
    got = [to_device(b, "cpu") for b in ShardDataset(out, pixels="frames", **kw).loader(num_workers=1)]
    want = [to_device(b, "cpu") for b in ShardDataset(out, **kw).loader(num_workers=1)]
    assert [b.ids for b in got] == [b.ids for b in want] and len(got) == 8
    for g, w in zip(got, want):
        assert sorted(g) == sorted(w)
        for k in w:
            _equal(g[k], w[k], k)
    with pytest.raises(ValueError, match="normalize=False"):
        ShardDataset(out, pixels="frames", batch_size=3)
