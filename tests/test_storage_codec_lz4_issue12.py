"""Issue 12 (loader speed): the `lz4-delta` codec — zstd-delta's filter (green subtracted from red and
blue, each row minus the row above, uint8 wrap-around), then an LZ4 raw block (pyarrow's liblz4, no
new dependency) instead of zstd: faster to decompress, more bytes (docs/storage.md "lz4-delta").

Lossless on every frame shape and content; a job prepared with `storage.codec: lz4-delta` loads
bit-identically to the default's through ShardLoader and ShardDataset (0 and 2 workers); the member
extension names the codec (`.delta.lz4`), so the shard format stays 2 and old shards keep loading;
a damaged member is an error naming shard, sample and member; the config key accepts the name.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from media_factory import make_image, make_video
from pipeline import storage
from pipeline.loader import ShardLoader
from pipeline.storage import StorageError, decode_frame, encode_frame


def _frames():
    rng = np.random.default_rng(12)
    smooth = np.linspace(0, 255, 37 * 53 * 3).reshape(37, 53, 3).astype(np.uint8)
    yield "random 28x56", rng.integers(0, 256, (28, 56, 3), dtype=np.uint8)
    yield "random odd 33x17", rng.integers(0, 256, (33, 17, 3), dtype=np.uint8)
    yield "all 0", np.zeros((29, 31, 3), np.uint8)
    yield "all 255", np.full((29, 31, 3), 255, np.uint8)
    yield "0/255 checker", (np.indices((30, 30)).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, 2)
    yield "1x1", rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)
    yield "1 row", rng.integers(0, 256, (1, 77, 3), dtype=np.uint8)
    yield "1 column", rng.integers(0, 256, (65, 1, 3), dtype=np.uint8)
    yield "smooth 37x53", smooth
    yield "large 1036x756 (undelta chunk edges)", np.cumsum(rng.integers(0, 3, (756, 1036, 3), dtype=np.uint8),
                                                             axis=1, dtype=np.uint8)


@pytest.mark.parametrize("name,frame", list(_frames()), ids=[n for n, _ in _frames()])
def test_lz4_delta_round_trips_bit_exactly(name, frame):
    ext, data = encode_frame(frame, "lz4-delta")
    assert ext == "delta.lz4"
    h, w = frame.shape[:2]
    assert np.array_equal(decode_frame(ext, data, (h, w)), frame)
    into = np.zeros_like(frame)
    assert decode_frame(ext, data, (h, w), into) is into and np.array_equal(into, frame)
    assert encode_frame(frame, "lz4-delta") == (ext, data)                  # deterministic


def test_lz4_delta_is_the_zstd_delta_filter_then_lz4():
    """The same filter as zstd-delta (one definition), only the entropy stage differs."""
    import pyarrow as pa

    frame = np.random.default_rng(3).integers(0, 256, (40, 24, 3), dtype=np.uint8)
    _, z = encode_frame(frame, "zstd-delta")
    _, l4 = encode_frame(frame, "lz4-delta")
    filtered = pa.Codec("zstd").decompress(z, frame.nbytes, asbytes=True)
    assert int.from_bytes(l4[:4], "little") == frame.nbytes
    assert pa.Codec("lz4_raw").decompress(l4[4:], frame.nbytes, asbytes=True) == filtered


def test_lz4_delta_wrong_size_or_garbage_is_a_storage_error():
    """A size that disagrees with the member's own length, or a cut block, never yields a frame
    (pyarrow's raw-LZ4 decompress would hand back a buffer of the asked size: the header guards it)."""
    frame = np.random.default_rng(4).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    ext, data = encode_frame(frame, "lz4-delta")
    for size in ((20, 21), (19, 20)):
        with pytest.raises(StorageError, match=r"lz4-delta frame holds 1200 bytes, expected"):
            decode_frame(ext, data, size)
    with pytest.raises(StorageError, match="holds -1 bytes"):
        decode_frame(ext, data[:3], (20, 20))
    with pytest.raises(OSError, match="Corrupt"):        # _decode_member turns it into a StorageError
        decode_frame(ext, data[: len(data) // 2], (20, 20))


def test_config_accepts_lz4_delta_and_still_refuses_unknown_names():
    from pipeline.config import ConfigError, JobConfig

    cfg = JobConfig.from_dict({"sources": ["x.jsonl"], "storage": {"codec": "lz4-delta"}})
    assert cfg.storage.codec == "lz4-delta" and '"codec": "lz4-delta"' in cfg.to_json()
    assert storage.check_codec("lz4-delta") == "lz4-delta"
    with pytest.raises(ConfigError, match=r"storage.codec 'lz4' is not one of .*'lz4-delta'"):
        JobConfig.from_dict({"sources": ["x.jsonl"], "storage": {"codec": "lz4"}})


# -- a prepared OUT ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The same corpus prepared twice by run_job: the default codec and lz4-delta."""
    from pipeline.config import JobConfig
    from pipeline.runner import run_job

    root = tmp_path_factory.mktemp("lz4")
    media = root / "media"
    media.mkdir()
    for i, (w, h) in enumerate([(203, 157), (640, 480), (90, 300), (333, 251)]):
        make_image(media / f"img{i}.jpg", w, h, seed=i, quality=90)
    make_video(media / "clip.mp4", width=160, height=120, num_frames=24, fps=8.0)
    recs = []
    for i in range(12):
        if i % 4 == 3:
            recs.append({"id": f"r{i:02d}", "video": "clip.mp4", "conversations": [
                {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": f"Motion {i}."}]})
        elif i % 4 == 2:
            recs.append({"id": f"r{i:02d}", "images": ["img0.jpg", "img2.jpg"], "conversations": [
                {"from": "human", "value": "<image><image>\nCompare."}, {"from": "gpt", "value": f"Two {i}."}]})
        else:
            recs.append({"id": f"r{i:02d}", "image": f"img{i % 4 if i % 4 < 2 else 3}.jpg", "conversations": [
                {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": f"A picture {i}."}]})
    (media / "recs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    outs = {}
    for codec in ("zstd-delta", "lz4-delta"):
        job = root / f"{codec}.yaml"
        job.write_text(f"sources:\n  - path: {media / 'recs.jsonl'}\nstorage:\n  codec: {codec}\n")
        r = run_job(JobConfig.from_yaml(job), out=root / codec, executor="local", progress=False)
        assert r.ok and r.accounting.kept == len(recs)
        outs[codec] = root / codec
    return outs


def _members(out: Path) -> list[str]:
    names = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            names += [m.name for m in tar.getmembers()]
    return names


def test_prepared_out_names_the_codec_in_members_descriptor_and_job(prepared):
    out = prepared["lz4-delta"]
    names = _members(out)
    assert any(n.endswith(".img000.delta.lz4") for n in names)
    assert any(".vid000.f" in n and n.endswith(".delta.lz4") for n in names)
    assert not any(n.endswith(".delta.zst") for n in names)
    assert json.loads((out / "job.json").read_text())["storage"] == {"codec": "lz4-delta"}
    shard = sorted((out / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        desc = next(json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".pixels.json"))
    assert desc["format"] == storage.FORMAT_VERSION == 2 and desc["codec"] == "lz4-delta"


def test_shard_loader_reads_lz4_delta_exactly_like_the_default(prepared):
    a, b = ShardLoader(prepared["zstd-delta"]), ShardLoader(prepared["lz4-delta"])
    ids = sorted(a.ids())
    assert ids == sorted(b.ids()) == [f"r{i:02d}" for i in range(12)]
    for sid in ids:
        for pixels in ("rows", "frames"):
            x, y = a.get(sid, pixels=pixels), b.get(sid, pixels=pixels)
            assert x.keys() == y.keys()
            for k in x:
                if isinstance(x[k], np.ndarray):
                    assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), (sid, pixels, k)
                elif k == "stored_pixels":
                    fx, fy = x[k].items, y[k].items
                    assert [kind for kind, _ in fx] == [kind for kind, _ in fy] and fx
                    assert all(np.array_equal(p, q) for (_, p), (_, q) in zip(fx, fy)), sid
                    assert x[k].geometry == y[k].geometry
                else:
                    assert x[k] == y[k], (sid, pixels, k)
            if pixels == "rows":
                assert x["pixel_values"].shape == y["pixel_values"].shape and len(x["pixel_values"]) > 0
    assert a.shards() == b.shards()
    for shard in a.shards():                          # the shards streamed, in order
        xs, ys = list(a.iter_shard(shard)), list(b.iter_shard(shard))
        assert [r["id"] for r in xs] == [r["id"] for r in ys] and xs
        assert all(np.array_equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(xs, ys))


MODES = {"padded rows": dict(batch_size=3), "padded uint8 frames": dict(batch_size=3, normalize=False, pixels="frames"),
         "packed rows": dict(max_tokens=2048), "packed uint8 frames": dict(max_tokens=2048, normalize=False, pixels="frames")}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("mode", list(MODES))
def test_shard_dataset_batches_equal_the_defaults(prepared, mode, workers):
    from pipeline.dataset import ShardDataset

    a = list(ShardDataset(prepared["zstd-delta"], seed=3, **MODES[mode]).loader(num_workers=workers))
    b = list(ShardDataset(prepared["lz4-delta"], seed=3, **MODES[mode]).loader(num_workers=workers))
    assert len(a) == len(b) >= 2
    assert sorted(i for x in b for i in x.ids) == [f"r{i:02d}" for i in range(12)]
    for x, y in zip(a, b):
        assert x.ids == y.ids and x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k
        fa, fb = getattr(x, "frames", []) or [], getattr(y, "frames", []) or []
        assert [k for k, _ in fa] == [k for k, _ in fb]
        assert all(torch.equal(p, q) for (_, p), (_, q) in zip(fa, fb))
    if "frames" in mode:
        assert any(k == "video" for x in b for k, _ in x.frames)


def test_a_damaged_lz4_delta_member_names_shard_sample_and_member(prepared, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(prepared["lz4-delta"], out)
    shard = sorted((out / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        m = next(m for m in tar.getmembers() if m.name.endswith(".img000.delta.lz4"))
    data = bytearray(shard.read_bytes())
    data[m.offset_data + m.size // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    key = m.name.split(".")[0]
    with pytest.raises(StorageError, match=rf"sample '{key}': member img000.delta.lz4 is corrupt"):
        list(ShardLoader(out).iter_shard(str(shard.relative_to(out))))
