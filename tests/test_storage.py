"""Issue 11: shard format 2 stores each pixel once, losslessly compressed; the loader rebuilds the
encoder's pixel_values bit for bit, reads format-1 shards, and names the shard + sample on damage."""
from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from media_factory import make_image, make_video
from pipeline.io import MANIFEST_SCHEMA
from pipeline.loader import ShardLoader, to_model_inputs
from pipeline.storage import CODECS, DESCRIPTOR, StorageError
from pipeline.writer import ShardWriter
from processors.encode import encode_sample
from processors.patches import patchify, stored_frames
from processors.presets import QWEN2_VL, QWEN3_VL, QWEN25_VL, QWEN_VL, Preset
from processors.sample import EncodedSample, ImagePart, MediaRef, Message, Sample, TextPart, VideoPart

P16 = Preset(name="test-p16", patch_size=16)   # a Qwen3-VL-like geometry: nothing may assume 14 / 1176


def _sample(sid, n_img=1, videos=(), size=(203, 157)):
    parts = [ImagePart(i) for i in range(n_img)] + [VideoPart(i) for i in range(len(videos))]
    return Sample(sid, [Message("user", [*parts, TextPart("what is here?")]), Message("assistant", [TextPart("things")])],
                  images=[MediaRef("image", path=f"img{i}.jpg") for i in range(n_img)],
                  videos=[MediaRef("video", path=v, options=o) for v, o in videos])


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    for i, (w, h) in enumerate([(203, 157), (640, 480), (90, 300)]):
        make_image(root / f"img{i}.jpg", w, h, seed=i, quality=90)
    make_video(root / "clip.mp4", width=160, height=120, num_frames=24, fps=8.0)
    return root


def _write(out: Path, items: list[tuple[str, EncodedSample]], codec: str, preset=None, fmt: int = 2) -> Path:
    (out / "shards").mkdir(parents=True, exist_ok=True)
    with ShardWriter(out / "shards" / "u0.tar", codec=codec, preset=preset, fmt=fmt) as w:
        for key, e in items:
            w.write(key, e, {**e.meta, "id": key})
    rows = [{"id": k, "shard": "shards/u0.tar", "key": k} for k, _ in items]
    schema = pa.schema([MANIFEST_SCHEMA.field(n) for n in ("id", "shard", "key")])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "manifest.parquet")
    return out / "shards" / "u0.tar"


def _members(tar_path: Path) -> dict[str, int]:
    with tarfile.open(tar_path) as tar:
        return {m.name: m.size for m in tar.getmembers()}


def _encoded(media: Path, preset) -> list[tuple[str, EncodedSample]]:
    out = [("one", encode_sample(_sample("one"), preset, media_root=media)),
           ("multi", encode_sample(_sample("multi", 3), preset, media_root=media)),
           ("text", encode_sample(Sample("text", [Message("user", [TextPart("hi")]),
                                                  Message("assistant", [TextPart("ho")])]), preset))]
    if preset.supports_video:
        out.append(("video", encode_sample(_sample("video", 1, [("clip.mp4", {"nframes": 6})]), preset, media_root=media)))
    return out


@pytest.mark.parametrize("preset", [QWEN25_VL, QWEN2_VL, QWEN_VL, QWEN3_VL, P16], ids=lambda p: p.name)
def test_rebuilt_pixel_values_equal_the_encoders_for_every_preset(tmp_path, media, preset):
    items = _encoded(media, preset)
    _write(tmp_path, items, "png", preset)
    loader = ShardLoader(tmp_path)
    got = {s["id"]: s for s in loader.iter_shard("shards/u0.tar")}
    for key, e in items:
        pv = got[key]["pixel_values"]
        assert pv.dtype == np.uint8 and pv.shape == e.pixel_values.shape
        assert np.array_equal(pv, e.pixel_values), key
        for name in EncodedSample.ARRAY_FIELDS:
            assert np.array_equal(got[key][name], getattr(e, name)), (key, name)
        assert np.array_equal(loader.get(key)["pixel_values"], e.pixel_values)
    if preset in (P16, QWEN3_VL):
        assert items[0][1].pixel_values.shape[1] == 3 * 2 * 16 * 16


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_round_trips_images_and_videos(tmp_path, media, codec):
    items = _encoded(media, QWEN25_VL)
    shard = _write(tmp_path, items, codec)
    for s, (key, e) in zip(ShardLoader(tmp_path).iter_shard("shards/u0.tar"), items):
        assert s["id"] == key and np.array_equal(s["pixel_values"], e.pixel_values)
    names = _members(shard)
    d = json.loads(tarfile.open(shard).extractfile("multi." + DESCRIPTOR).read())
    assert d["format"] == 2 and d["codec"] == codec and [it["kind"] for it in d["items"]] == ["image"] * 3
    assert not any(n.endswith("pixel_values.npy") for n in names)


def test_each_pixel_is_stored_once(tmp_path, media):
    """An image is one frame (not its temporal copy); a video its sampled frames, the padding repeat of
    an odd count left out; a static tail (two equal last frames) costs one frame and still rebuilds."""
    e = encode_sample(_sample("v", 1, [("clip.mp4", {"nframes": 6})]), QWEN25_VL, media_root=media)
    n_img = int(np.prod(e.image_grid_thw[0]))
    frames = stored_frames(e.pixel_values[n_img:], tuple(e.video_grid_thw[0]))
    assert frames.shape[0] == 6                       # sampled frames, all distinct
    odd = frames[:5]
    rows, grid = patchify(odd)                         # the encoder's padding of an odd count
    odd_e = replace(e, pixel_values=np.concatenate([e.pixel_values[:n_img], rows]),
                    video_grid_thw=np.asarray([grid], np.int32))
    still = np.concatenate([frames[:3], frames[2:3]])  # even count whose last two frames are equal
    rows2, grid2 = patchify(still)
    still_e = replace(e, pixel_values=np.concatenate([e.pixel_values[:n_img], rows2]),
                      video_grid_thw=np.asarray([grid2], np.int32))
    shard = _write(tmp_path, [("even", e), ("odd", odd_e), ("still", still_e)], "png")
    names = _members(shard)
    for key, n_frames in (("even", 6), ("odd", 5), ("still", 3)):
        assert sorted(n for n in names if n.startswith(f"{key}.vid000.")) == \
            [f"{key}.vid000.f{j:04d}.png" for j in range(n_frames)]
        assert [n for n in names if n.startswith(f"{key}.img")] == [f"{key}.img000.png"]
    got = {s["id"]: s["pixel_values"] for s in ShardLoader(tmp_path).iter_shard("shards/u0.tar")}
    assert np.array_equal(got["even"], e.pixel_values)
    assert np.array_equal(got["odd"], odd_e.pixel_values)
    assert np.array_equal(got["still"], still_e.pixel_values)
    # the image member is the resized frame itself: what a user opens in a viewer
    from PIL import Image
    import io

    img = np.asarray(Image.open(io.BytesIO(tarfile.open(shard).extractfile("even.img000.png").read())))
    assert img.shape == (*[int(v) * 14 for v in e.image_grid_thw[0][1:]], 3)
    assert np.array_equal(patchify(img[None])[0], e.pixel_values[:n_img])


def test_shards_are_byte_identical_across_runs(tmp_path, media):
    items = _encoded(media, QWEN25_VL)
    for codec in ("png", "webp", "zstd-delta"):
        a = _write(tmp_path / f"{codec}-a", items, codec).read_bytes()
        b = _write(tmp_path / f"{codec}-b", items, codec).read_bytes()
        assert a == b, codec


def test_format_1_shards_still_load(tmp_path, media):
    items = _encoded(media, QWEN25_VL)
    shard = _write(tmp_path, items, "png", fmt=1)
    assert "one.pixel_values.npy" in _members(shard)
    loader = ShardLoader(tmp_path)
    for s, (key, e) in zip(loader.iter_shard("shards/u0.tar"), items):
        assert np.array_equal(s["pixel_values"], e.pixel_values)
    assert np.array_equal(loader.get("video")["pixel_values"], items[3][1].pixel_values)


@pytest.mark.parametrize("preset", [QWEN25_VL, QWEN_VL, QWEN3_VL, P16], ids=lambda p: p.name)
def test_frames_mode_rebuilt_by_to_model_inputs_matches_rows_mode(tmp_path, media, preset):
    """pixels="frames" sends only the stored frames; to_model_inputs patchifies them with torch on the
    device: every tensor equal to the host-rebuilt rows' (and a batch mixing both modes too)."""
    import torch

    items = _encoded(media, preset)
    _write(tmp_path, items, "zstd-delta", preset)
    loader = ShardLoader(tmp_path)
    rows = list(loader.iter_shard("shards/u0.tar"))
    frames = list(loader.iter_shard("shards/u0.tar", pixels="frames"))
    assert "pixel_values" not in frames[0] and frames[0]["stored_pixels"].items[0][1].shape[0] == 1
    mixed = [frames[0], rows[1], *frames[2:]]
    a, b, c = (to_model_inputs(x, preset) for x in (rows, frames, mixed))
    assert a.keys() == b.keys() == c.keys() and "pixel_values" in a
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), k
    one = to_model_inputs(frames[1], preset)     # a single sample too
    assert torch.equal(one["pixel_values"], to_model_inputs(rows[1], preset)["pixel_values"])


def _damage(shard: Path, member_suffix: str, how: str) -> None:
    with tarfile.open(shard) as tar:
        m = next(m for m in tar.getmembers() if m.name.endswith(member_suffix))
    data = bytearray(shard.read_bytes())
    if how == "flip":
        data[m.offset_data + m.size // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:   # cut the file in the middle of that member
        shard.write_bytes(bytes(data[:m.offset_data + m.size // 2]))


@pytest.mark.parametrize("codec", ["png", "webp", "zstd-delta", "zstd", "npy"])
def test_corrupt_pixel_member_is_an_error_naming_shard_sample_and_member(tmp_path, media, codec):
    items = _encoded(media, QWEN25_VL)[:2]
    shard = _write(tmp_path, items, codec)
    ext = {"png": "png", "webp": "webp", "zstd-delta": "delta.zst", "zstd": "npy.zst", "npy": "npy"}[codec]
    _damage(shard, f"multi.img001.{ext}", "flip")
    loader = ShardLoader(tmp_path)
    with pytest.raises(StorageError, match=rf"shards/u0.tar, sample 'multi': member img001.{ext} is corrupt"):
        list(loader.iter_shard("shards/u0.tar"))
    with pytest.raises(StorageError, match="sample 'multi'"):
        loader.get("multi")
    assert np.array_equal(loader.get("one")["pixel_values"], items[0][1].pixel_values)


def test_truncated_shard_is_an_error_naming_shard_and_sample(tmp_path, media):
    items = _encoded(media, QWEN25_VL)
    shard = _write(tmp_path, items, "png")
    _damage(shard, "multi.img002.png", "cut")
    with pytest.raises(StorageError, match=r"shards/u0.tar, sample 'multi'.*truncated"):
        list(ShardLoader(tmp_path).iter_shard("shards/u0.tar"))
    with pytest.raises(StorageError, match=r"shards/u0.tar.*truncated"):
        ShardLoader(tmp_path).get("multi")


def test_corrupt_descriptor_and_unknown_format_are_clear(tmp_path, media):
    items = _encoded(media, QWEN25_VL)[:1]
    shard = _write(tmp_path, items, "png")
    data = shard.read_bytes().replace(b'"format":2', b'"format":9')
    shard.write_bytes(data)
    with pytest.raises(StorageError, match=r"sample 'one': shard format 9 is newer .* upgrade vlprep or re-run"):
        ShardLoader(tmp_path).get("one")


def test_storage_codec_config_key(tmp_path):
    from pipeline.config import ConfigError, JobConfig

    cfg = JobConfig.from_dict({"sources": ["x.jsonl"], "storage": {"codec": "webp"}})
    assert cfg.storage.codec == "webp" and '"codec": "webp"' in cfg.to_json()
    assert JobConfig.from_dict({"sources": ["x.jsonl"]}).storage.codec == "zstd-delta"
    with pytest.raises(ConfigError, match=r"storage.codec 'jpeg' is not one of \['png', 'webp'"):
        JobConfig.from_dict({"sources": ["x.jsonl"], "storage": {"codec": "jpeg"}})


def test_manifest_and_job_json_name_the_format_and_codec(tmp_path, media):
    from pipeline.io import read_manifest
    from pipeline.storage import FORMAT_VERSION

    assert MANIFEST_SCHEMA.metadata[b"vlprep.shard_format"] == str(FORMAT_VERSION).encode()
    (media / "rec.jsonl").write_text(json.dumps({"id": "r0", "image": "img0.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A gradient."}]}) + "\n")
    (tmp_path / "job.yaml").write_text(f"sources:\n  - path: {media / 'rec.jsonl'}\nstorage:\n  codec: webp\n")
    from pipeline.config import JobConfig
    from pipeline.runner import run_job

    r = run_job(JobConfig.from_yaml(tmp_path / "job.yaml"), out=tmp_path / "out", executor="local", progress=False)
    assert r.ok and r.accounting.kept == 1
    assert read_manifest(tmp_path / "out").schema.metadata[b"vlprep.shard_format"] == b"2"
    assert json.loads((tmp_path / "out" / "job.json").read_text())["storage"] == {"codec": "webp"}
    shard = next((tmp_path / "out" / "shards").glob("*.tar"))
    assert "r0.img000.webp" in _members(shard)
    s = ShardLoader(tmp_path / "out").get("r0")
    e = encode_sample(_sample("r0"), QWEN25_VL, media_root=media)
    assert np.array_equal(s["pixel_values"], e.pixel_values)


def test_scorer_batches_from_frames_equal_batches_from_rows(tmp_path, media):
    """The score stage reads pixels="frames" and patchifies on the device: the same uint8 rows and
    normalised pixel_values as from host-rebuilt rows, images then videos across the batch."""
    import torch

    from filters.reward.batching import HostBatch, text_only_sample

    items = _encoded(media, QWEN25_VL)
    _write(tmp_path, items, "zstd-delta")
    loader = ShardLoader(tmp_path)
    rows = list(loader.iter_shard("shards/u0.tar"))
    frames = list(loader.iter_shard("shards/u0.tar", pixels="frames"))
    a, b = HostBatch(rows, QWEN25_VL), HostBatch(frames, QWEN25_VL)
    assert torch.equal(a.uint8_patches(), b.uint8_patches())
    assert a.pixel_items() == b.pixel_items()
    for x, y in zip(a.normalized_patches(), b.normalized_patches()):
        assert torch.equal(x, y)
    t = text_only_sample(frames[1])
    assert t["pixel_values"].shape == (0, QWEN25_VL.patch_dim)
    mixed = HostBatch([t, frames[0]], QWEN25_VL)
    assert torch.equal(mixed.uint8_patches(), HostBatch([text_only_sample(rows[1]), rows[0]], QWEN25_VL).uint8_patches())
