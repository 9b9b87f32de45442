"""Pipeline parts without Ray: config, sources, units, writer, loader, dedup decisions, local runs."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from corpus_factory import make_mixed_corpus
from media_factory import make_image
from pipeline.config import ConfigError, JobConfig, apply_overrides
from pipeline.dedup import Deduper
from pipeline.loader import ShardLoader, collate, iter_batches, to_model_inputs
from pipeline.paths import MediaMissingError, PathEscapeError, resolve_media
from pipeline.runner import run_job
from pipeline.sources import SourceSpec, iter_records
from pipeline.units import plan_units, unit_name
from pipeline.writer import ShardWriter, sanitize_key
from processors.patches import normalize_patches
from processors.presets import CLIP_MEAN, CLIP_STD
from processors.sample import EncodedSample


# -- config ---------------------------------------------------------------------------------------

def _yaml(tmp_path, text: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def test_config_overrides_are_yaml_typed_and_paths_relative_to_the_yaml(tmp_path):
    p = _yaml(tmp_path, "sources: [{path: a.jsonl}]\nmax_length: 100\n")
    cfg = JobConfig.from_yaml(p, ["max_length=4096", "dedup.phash=true", "video.fps=1.5",
                                  "sources.0.media_root=imgs", "filters={image_min_side: 28}"])
    assert cfg.max_length == 4096 and cfg.dedup.phash is True and cfg.video.fps == 1.5
    assert cfg.filters == {"image_min_side": 28}
    assert cfg.resolve_path(cfg.sources[0].media_root) == tmp_path / "imgs"
    assert json.loads(cfg.to_json())["max_length"] == 4096


def test_fast_media_options_reach_the_encoder(tmp_path):
    from processors.encode import EncodeOptions

    cfg = JobConfig.from_yaml(_yaml(tmp_path, "sources: [a.jsonl]\n"), ["video.fast=true", "image.fast=true"])
    opts = EncodeOptions.from_dict(cfg.encode_options())
    assert opts.video_resize == "transformers" and opts.fast_images is True  # video.fast: deprecated alias
    assert EncodeOptions.from_dict(JobConfig.from_yaml(_yaml(tmp_path, "sources: [a.jsonl]\n")).encode_options()).video_resize == "qwen-vl-utils"


def test_config_unknown_keys_name_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['max_lenght'\].*'max_length'"):
        JobConfig.from_yaml(_yaml(tmp_path, "sources: [a.jsonl]\nmax_lenght: 5\n"))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['fsp'\] in video.*'fps'"):
        JobConfig.from_yaml(_yaml(tmp_path, "sources: [a.jsonl]\nvideo: {fsp: 2}\n"))
    with pytest.raises(ConfigError, match="filters: unknown filter config key 'image_min_sid'"):
        JobConfig.from_yaml(_yaml(tmp_path, "sources: [a.jsonl]\nfilters: {image_min_sid: 3}\n"))
    with pytest.raises(ConfigError, match="kind 'csv' is not one of"):
        JobConfig.from_yaml(_yaml(tmp_path, "sources: [{path: a.csv, kind: csv}]\n"))
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["max_length"])


# -- sources and paths ----------------------------------------------------------------------------

def test_jsonl_bad_line_is_one_error_record_with_line_number(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"id": "x", "messages": []}\n{"broken\n\n[1, 2]\n{"id": "y"}\n')
    recs = list(iter_records(SourceSpec(str(f), kind="jsonl")))
    assert [r.index for r in recs] == [0, 1, 3, 4]
    assert recs[0].record == {"id": "x", "messages": []}
    assert recs[1].error_type == "json_decode" and recs[1].error.startswith("line 2: invalid JSON")
    assert recs[2].error_type == "format" and "line 4" in recs[2].error
    assert recs[3].record == {"id": "y"}
    # a unit starting mid-file (the planner gives the byte offset) sees the same records
    cfg = JobConfig.from_dict({"sources": [str(f)], "unit_size": 2}, base_dir=tmp_path)
    units = plan_units(cfg)
    assert [(u.start, u.stop, u.n_records) for u in units] == [(0, 2, 2), (2, 4, 1), (4, 5, 1)]
    got = [r.index for u in units for r in iter_records(u.source, start=u.start, stop=u.stop, byte_offset=u.byte_offset)]
    assert got == [0, 1, 3, 4]
    assert units[0].name == unit_name("a.jsonl", 0) == f"a-{hashlib.sha1(b'a.jsonl').hexdigest()[:8]}-00000"


def test_webdataset_truncated_tar_keeps_samples_before_the_damage(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for k in range(3):
            for ext, data in (("jpg", b"\xff\xd8" + bytes(3000)), ("txt", f"cap {k}".encode())):
                info = tarfile.TarInfo(f"{k:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "t.tar").write_bytes(buf.getvalue()[:5000])
    recs = list(iter_records(SourceSpec(str(tmp_path / "t.tar"), kind="webdataset")))
    assert recs[0].sample.messages[1].text == "cap 0"
    assert recs[-1].error_type == "tar_corrupt" and "truncated or corrupt" in recs[-1].error
    assert [r.index for r in recs] == list(range(len(recs)))


def test_resolve_media_refuses_escapes_and_missing_files(tmp_path):
    root = tmp_path / "root"
    make_image(root / "a.jpg", 30, 30)
    make_image(tmp_path / "out.jpg", 30, 30)
    (root / "link.jpg").symlink_to(tmp_path / "out.jpg")
    assert resolve_media("a.jpg", root) == (root / "a.jpg").resolve()
    assert resolve_media("sub/../a.jpg", root) == (root / "a.jpg").resolve()
    for ref in ("../out.jpg", str(tmp_path / "out.jpg"), "link.jpg"):
        with pytest.raises(PathEscapeError, match="outside the media root"):
            resolve_media(ref, root)
    with pytest.raises(MediaMissingError, match="not found"):
        resolve_media("nope.jpg", root)


# -- writer and loader -------------------------------------------------------------------------

def _enc(sid: str, n_img: int = 1, L: int = 12, seed: int = 0) -> EncodedSample:
    rng = np.random.default_rng(seed)
    grid = np.array([[1, 4, 6]] * n_img, np.int32).reshape(-1, 3)
    return EncodedSample(
        id=sid, input_ids=rng.integers(0, 1000, L).astype(np.int32),
        labels=np.where(np.arange(L) > L // 2, rng.integers(0, 1000, L), -100).astype(np.int32),
        position_ids=np.tile(np.arange(L, dtype=np.int32), (3, 1)),
        pixel_values=rng.integers(0, 256, (24 * n_img, 1176)).astype(np.uint8),
        image_grid_thw=grid, video_grid_thw=np.zeros((0, 3), np.int32),
        second_per_grid_ts=np.zeros((0,), np.float32), meta={"id": sid})


def _write(path: Path, samples):
    with ShardWriter(path) as w:
        for s in samples:
            w.write(sanitize_key(s.id), s, {"id": s.id, "n": int(s.input_ids.size)})


def test_shard_bytes_are_deterministic_and_members_sorted(tmp_path):
    samples = [_enc("a/b.c", seed=1), _enc("plain", n_img=2, seed=2)]
    _write(tmp_path / "one.tar", samples)
    _write(tmp_path / "two.tar", samples)
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    with tarfile.open(tmp_path / "one.tar") as tar:
        members = tar.getmembers()
    key = sanitize_key("a/b.c")
    assert key.startswith("a_b_c-") and "." not in key
    names = [m.name for m in members]
    # shard format 2 (pipeline/storage.py): pixels as frame members + pixels.json, not pixel_values.npy
    arrays = [f"{a}.npy" for a in EncodedSample.ARRAY_FIELDS if a != "pixel_values"]
    frames = ["img000.f0000.delta.zst", "img000.f0001.delta.zst"]   # random rows: the two temporal copies differ
    assert names[:10] == sorted(f"{key}.{n}" for n in [*arrays, *frames, "pixels.json", "meta.json"])
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o644)}
    assert not list(tmp_path.glob("*.tmp-*"))


def test_failed_shard_never_appears_under_its_final_name(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "x.tar") as w:
            w.write("a", _enc("a"), {})
            raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []


def test_loader_reads_back_by_shard_and_id_and_builds_model_inputs(tmp_path):
    import pyarrow as pa

    from pipeline.io import MANIFEST_SCHEMA

    samples = [_enc("s1", 1, 10, 1), _enc("s2", 2, 14, 2)]
    (tmp_path / "shards").mkdir()
    _write(tmp_path / "shards" / "u.tar", samples)
    rows = [{"id": s.id, "shard": "shards/u.tar", "key": s.id} for s in samples]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([MANIFEST_SCHEMA.field(n) for n in ("id", "shard", "key")])),
                   tmp_path / "manifest.parquet")
    loader = ShardLoader(tmp_path)
    assert loader.shards() == ["shards/u.tar"]
    seq = list(loader.iter_shard("shards/u.tar"))
    assert [s["id"] for s in seq] == ["s1", "s2"]
    got = loader.get("s2")
    for name in EncodedSample.ARRAY_FIELDS:
        assert np.array_equal(got[name], getattr(samples[1], name)) and got[name].dtype == getattr(samples[1], name).dtype
    with pytest.raises(KeyError, match="ledger"):
        loader.get("missing")

    x = to_model_inputs(got, "qwen2.5-vl")
    assert x["input_ids"].dtype == torch.int64 and x["input_ids"].shape == (1, 14)
    assert x["position_ids"].shape == (3, 1, 14)
    want = normalize_patches(samples[1].pixel_values, CLIP_MEAN, CLIP_STD)
    assert x["pixel_values"].dtype == torch.float32
    assert np.abs(x["pixel_values"].numpy() - want).max() <= 1e-6
    assert x["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 6]]
    assert "pixel_values_videos" not in x

    b = to_model_inputs(seq, "qwen2.5-vl", dtype=torch.bfloat16)
    assert b["input_ids"].shape == (2, 14) and b["pixel_values"].dtype == torch.bfloat16
    assert b["input_ids"][0, 10:].tolist() == [151643] * 4 and b["labels"][0, 10:].tolist() == [-100] * 4
    assert b["attention_mask"].sum(1).tolist() == [10, 14]
    assert b["pixel_values"].shape == (72, 1176) and b["image_grid_thw"].shape == (3, 3)
    np_batch = collate(seq, side="left")
    assert np_batch["input_ids"][0, :4].tolist() == [151643] * 4
    assert [len(bt) for bt in iter_batches(seq + seq, max_tokens=30)] == [2, 2]


# -- dedup decisions ---------------------------------------------------------------------------

def test_deduper_keeps_first_occurrence_and_makes_ids_unique():
    d = Deduper(exact=True, phash=True, threshold=4)
    assert d.feed("s", 0, "a", "k1", 0b1111) == {}
    assert d.feed("s", 1, "b", "k1", None)["drop"][0] == "exact_dup"
    near = d.feed("s", 2, "c", "k2", 0b1110)
    assert near["drop"][:2] == ("near_dup", 1.0) and "a's" in near["drop"][2]
    renamed = d.feed("t", 3, "a", "k3", (1 << 63) | 0xF0F0F0)
    assert renamed["id"].startswith("a~") and "drop" not in renamed
    assert d.feed("s", 4, "z", None, None) == {}          # failed earlier: nobody's first occurrence


# -- a whole job in-process (the Ray runs are in test_pipeline_ray.py) --------------------------

def test_local_run_accounts_every_record_and_resume_skips_done_units(tmp_path, capsys):
    cfg_path, expected = make_mixed_corpus(tmp_path)
    r = run_job(JobConfig.from_yaml(cfg_path), executor="local", progress=False)
    assert r.ok and r.accounting.balanced and r.accounting.inputs == len(expected) + 1
    ledger = pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()
    got = {(x["source"], x["record_index"]): (x["status"], x["stage"], x["rule"]) for x in ledger}
    assert {k: got[k] for k in expected if expected[k] is not None} == {k: v for k, v in expected.items() if v}
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    r2 = run_job(JobConfig.from_yaml(cfg_path), executor="local", progress=False)
    assert r2.units_run == 0 and r2.units_skipped == r.units_total
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    from jobs.cli import main

    assert main(["inspect", str(tmp_path / "out"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert "<|vision_start|><|image_pad|>×" in shown["text"] and shown["supervised_text"].endswith("<|im_end|>\n")
    assert shown["tokens"]["n_tokens"] == shown["shapes"]["input_ids"][0][0]
    assert main(["inspect", str(tmp_path / "out"), "--id", "nope"]) == 2
    with pytest.raises(ConfigError, match="different job configuration"):
        run_job(JobConfig.from_yaml(cfg_path, ["max_length=100"]), executor="local", progress=False)


def test_filters_see_the_jobs_image_band(tmp_path):
    """max_visual_tokens must count tokens with the band the encoder uses, not the preset default."""
    import json as _json

    from filters.base import FilterContext, run_filters
    from pipeline.config import JobConfig
    from pipeline.stages import context_for
    from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart

    cfg = JobConfig.from_dict({"sources": [{"path": str(tmp_path / "x.jsonl")}], "image": {"max_pixels": 28 * 28 * 100},
                               "filters": {"max_visual_tokens": 150}}, base_dir=tmp_path)
    ctx = context_for(_json.dumps(cfg.to_dict(), sort_keys=True))
    assert ctx.preset.max_pixels == 28 * 28 * 100 and ctx.preset.name == "qwen2.5-vl"
    s = Sample("s", [Message("user", [ImagePart(0), TextPart("?")]), Message("assistant", [TextPart("A.")])],
               images=[MediaRef("image", path="a.jpg")])
    # 1080x1920 is 2691 tokens in the checkpoints' band but at most 100 in this job's band: kept
    assert run_filters(ctx.filters, s, FilterContext(preset=ctx.preset, image_sizes=[(1080, 1920)]), "media") is None


def test_phash_dedup_job_finds_multi_image_near_duplicates(tmp_path):
    # Near-duplicates: same number of images, each image a recompressed/resized copy, in order.
    from test_filters_dedup import jpeg_bytes, scene

    media = tmp_path / "m"
    media.mkdir()
    for name, seed, q, size in [("a", 1, 95, (320, 240)), ("a_copy", 1, 60, (300, 225)), ("b", 2, 95, (320, 240)),
                                ("c", 3, 95, (320, 240)), ("b_copy", 2, 70, (280, 210)), ("c_copy", 3, 70, (320, 240)),
                                ("d", 4, 95, (320, 240))]:
        (media / f"{name}.jpg").write_bytes(jpeg_bytes(scene(seed).resize(size), q))

    def rec(images, q):
        return {"messages": [{"role": "user", "content": "<image>" * len(images) + q},
                             {"role": "assistant", "content": f"An answer about {q}."}],
                "images": [f"m/{i}.jpg" for i in images]}

    records = [rec(["a"], "one"), rec(["a_copy"], "two"),            # 1: near-dup of 0
               rec(["b", "c"], "three"), rec(["b_copy", "c_copy"], "four"),  # 3: near-dup of 2
               rec(["b_copy", "d"], "five"),                          # second image differs: kept
               rec(["c", "b"], "six"),                                # order differs: kept
               rec(["b"], "seven")]                                   # one image vs two: kept
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = JobConfig.from_yaml(_yaml(tmp_path, "sources: [{path: c.jsonl, media_root: .}]\nout: out\nunit_size: 3\n"
                                    "dedup: {phash: true}\n"))
    r = run_job(cfg, executor="local", progress=False)
    assert r.ok and r.accounting.balanced
    ledger = {x["record_index"]: x for x in pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()}
    dropped = {i: x for i, x in ledger.items() if x["status"] == "dropped"}
    assert sorted(dropped) == [1, 3], {i: (x["status"], x["rule"]) for i, x in ledger.items()}
    assert all(x["rule"] == "near_dup" for x in dropped.values())
    assert "each of the 2 images" in dropped[3]["message"] and "image within" in dropped[1]["message"]


def test_ray_client_connection_aborts_are_retried(monkeypatch):
    # Ray 2.60's client proxy can abort a connection while its per-client server starts
    # (tests/test_pipeline_ray_client.py hit it under load); only ray:// addresses are retried.
    from pipeline import runner

    monkeypatch.setattr(runner.time, "sleep", lambda s: None)

    class FlakyRay:
        def __init__(self, failures):
            self.failures, self.calls, self.shutdowns = failures, 0, 0

        def init(self, **kw):
            self.calls += 1
            if self.calls <= self.failures:
                raise ConnectionAbortedError("Initialization failure from server: ZombieProcess")

        def is_initialized(self):
            return False

        def shutdown(self):
            self.shutdowns += 1

    ok = FlakyRay(2)
    runner._connect(ok, "ray://head:10001")
    assert ok.calls == 3
    with pytest.raises(ConnectionAbortedError):
        runner._connect(FlakyRay(5), "ray://head:10001")
    plain = FlakyRay(1)
    with pytest.raises(ConnectionAbortedError):
        runner._connect(plain, "10.0.0.1:6379")
    assert plain.calls == 1


def test_index_parts_of_another_version_are_recomputed_on_resume(tmp_path):
    # An index written before multi-image pHash / per-item options in the key (no version metadata,
    # phash a single uint64) must not be trusted by a resumed job.
    from pipeline.io import Layout
    from pipeline.work import index_current

    make_image(tmp_path / "a.jpg", 64, 48, seed=1)
    rec = {"messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "A."}],
           "images": ["a.jpg"]}
    (tmp_path / "c.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(rec) + "\n")
    cfg = _yaml(tmp_path, "sources: [{path: c.jsonl, media_root: .}]\nout: out\n")
    assert run_job(JobConfig.from_yaml(cfg), executor="local", progress=False).ok
    layout = Layout(tmp_path / "out")
    (part,) = sorted(layout.index_parts.glob("*.parquet"))
    assert index_current(part)
    old = pa.table({"source": ["c.jsonl"] * 2, "record_index": [0, 1], "id": ["x", "y"], "key": [None, None],
                    "phash": pa.array([None, None], pa.uint64())})
    pq.write_table(old, part)
    assert not index_current(part)
    for p in list(layout.shards.glob("*")) + list(layout.manifest_parts.glob("*")) + list(layout.ledger_parts.glob("*")):
        p.unlink()
    r = run_job(JobConfig.from_yaml(cfg), executor="local", progress=False)
    assert r.ok and index_current(part)
    ledger = pq.read_table(layout.ledger).to_pylist()
    assert [x["rule"] for x in ledger] == [None, "exact_dup"]   # the stale keys (None) would have kept both
