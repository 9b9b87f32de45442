"""Hostile input through the whole prepare job: every bad record gets one specific ledger row, the
good records beside it (same unit) are still kept, and nothing escapes OUT.

One in-process job (`--executor local`, the stages are what is under test, not Ray) over a
generated jsonl whose records are all in ONE work unit, good samples interleaved with: forged
decompression-bomb headers, absurd aspect ratios, empty / mislabelled / fake images, a
16000x16 clip and an audio-only file, JSON that is valid but not a record, invalid UTF-8, a
10 MB text field, 1 000- and 100 000-level nesting, content and media entries of the wrong type,
NUL / empty / directory / looping / `~` / 5 000-character / Windows-style paths, NaN, Infinity,
negative and inverted boxes, and ids that are huge or look like paths.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from corpus_factory import has_video
from media_factory import make_image
from pipeline.config import JobConfig
from pipeline.runner import run_job

GOOD = ("kept", None, None, None)
HUGE_ID = "a" * 200_000
PATHY_ID = "../../../../escaped/..//id"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def forged_png(width: int, height: int) -> bytes:
    """A few-byte PNG whose IHDR claims width x height (RGB, 8 bit) with one tiny IDAT: a
    decompression bomb as far as any header reader can tell."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def _rec(user: str, answer: str, images=None, videos=None, **extra) -> dict:
    rec = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    if images is not None:
        rec["images"] = images
    if videos is not None:
        rec["videos"] = videos
    rec.update(extra)
    return rec


def make_hostile_corpus(root: Path) -> tuple[Path, dict, dict]:
    """Writes root/hostile.jsonl, its media and job.yaml; returns (config path, expected, names).

    expected[record_index] = (status, stage, rule, a fragment the message must contain or None).
    """
    media = root / "media"
    media.mkdir(parents=True)
    lines: list[bytes] = []
    expected: dict[int, tuple] = {}
    names: dict[str, int] = {}
    n_good = 0

    def add(name: str, record, outcome, raw: bytes | None = None):
        idx = len(lines)
        lines.append(raw if raw is not None else json.dumps(record).encode())
        expected[idx] = outcome
        names[name] = idx

    def good():
        nonlocal n_good
        i = n_good
        n_good += 1
        make_image(media / f"good{i}.jpg", 64 + 4 * i, 56, seed=i)
        add(f"good{i}", _rec(f"<image>What is in picture {i}?", f"Gradient number {i}.",
                             images=[f"media/good{i}.jpg"]), GOOD)

    def img(name: str, ref, outcome, user="<image>What is this?"):
        good()
        add(name, _rec(user, "Something.", images=[ref] if not isinstance(ref, list) else ref), outcome)

    # -- images ------------------------------------------------------------------------------------
    (media / "bomb.png").write_bytes(forged_png(50_000, 50_000))
    img("bomb_50k", "media/bomb.png", ("error", "clean", "image_too_large", "2500000000 pixels"))
    (media / "bomb_8k.png").write_bytes(forged_png(8_000, 8_000))     # under Pillow's limit, over the job's
    img("bomb_over_job_limit", "media/bomb_8k.png", ("error", "clean", "image_too_large", "40,000,000"))
    make_image(media / "thin.png", 3, 1000)
    img("ratio_333", "media/thin.png", ("dropped", "filter", "image_max_ratio", "333"))
    (media / "empty.jpg").write_bytes(b"")
    img("zero_bytes", "media/empty.jpg", ("error", "clean", "image_decode", "empty (0 bytes)"))
    make_image(media / "really_png.jpg", 60, 50, fmt="PNG")
    img("png_named_jpg", "media/really_png.jpg", GOOD)
    (media / "text.png").write_text("this is a text file, not a PNG\n")
    img("text_named_png", "media/text.png", ("error", "clean", "image_decode", "not a recognised image format"))

    # -- videos ------------------------------------------------------------------------------------
    if has_video():
        from video_factory import make_audio_only, make_clip

        try:
            make_clip(media / "wide.mp4", width=16000, height=16, num_frames=4)
        except Exception:  # an encoder build that refuses 16000-wide frames: nothing to test
            pass
        else:
            good()
            add("video_16000x16", _rec("<video>What happens?", "Nothing.", videos=["media/wide.mp4"]),
                ("dropped", "filter", "video_max_ratio", "1000"))
        make_audio_only(media / "audio.mkv")
        good()
        add("video_audio_only", _rec("<video>What happens?", "Silence.", videos=["media/audio.mkv"]),
            ("error", "clean", "video_decode", "no video stream"))

    # -- JSON hostility --------------------------------------------------------------------------
    good()
    add("json_list", None, ("error", "read", "format", "got list"), raw=b"[1, 2, 3]")
    add("json_number", None, ("error", "read", "format", "got int"), raw=b"42")
    add("json_null", None, ("error", "read", "format", "got NoneType"), raw=b"null")
    add("bad_utf8", None, ("error", "read", "json_decode", "utf-8"),
        raw=b'{"messages": [{"role": "user", "content": "caf\xe9 \xff\xfe"}]}')
    good()
    add("text_10mb", _rec("<image>" + "Describe the scene in detail please. " * 283_000, "A gradient.",
                          images=["media/good0.jpg"]), ("dropped", "filter", "max_length", "never truncated"))
    for depth, outcome in ((500, ("error", "read", "format", "a part must be an object")),
                           (1000, ("error", "read", "json_decode", "nested too deeply")),
                           (100_000, ("error", "read", "json_decode", "nested too deeply"))):
        deep = ("[" * depth + "]" * depth).encode()
        add(f"nested_{depth}", None, outcome, raw=b'{"messages": [{"role": "user", "content": ' + deep + b'}, '
                                                  b'{"role": "assistant", "content": "x"}]}')
    good()
    add("content_dict", {"messages": [{"role": "user", "content": {"text": "hi"}},
                                      {"role": "assistant", "content": "x"}]},
        ("error", "read", "format", "content must be a string"))
    add("content_int", {"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "x"}]},
        ("error", "read", "format", "content must be a string"))
    add("image_int", _rec("<image>Hi", "x", images=[12]), ("error", "read", "format", "image 0"))
    add("image_dict_no_path", _rec("<image>Hi", "x", images=[{"name": "a.jpg"}]),
        ("error", "read", "format", "needs 'path' or 'bytes'"))
    add("image_none", _rec("<image>Hi", "x", images=[None]), ("error", "read", "format", "NoneType"))

    # -- paths -------------------------------------------------------------------------------------
    img("path_nul", "media/good0.jpg\x00.png", ("error", "clean", "path_escape", "NUL"))
    img("path_empty", "", ("error", "read", "format", "empty image path"))
    (media / "adir.jpg").mkdir()
    img("path_directory", "media/adir.jpg", ("error", "clean", "media_missing", "not a regular file"))
    os.symlink("loop_b.jpg", media / "loop_a.jpg")
    os.symlink("loop_a.jpg", media / "loop_b.jpg")
    img("path_symlink_loop", "media/loop_a.jpg", ("error", "clean", "media_missing", "symlink loop"))
    img("path_tilde", "~/good0.jpg", ("error", "clean", "media_missing", "not found"))
    img("path_5000", "media/" + "x" * 5000 + ".jpg", ("error", "clean", "media_missing", "too long"))
    img("path_windows", "..\\..\\secret.jpg", ("error", "clean", "media_missing", "not found"))

    # -- grounding (source format qwen2.5-vl: bbox_2d in pixels of the resized image) ---------------
    def boxed(name, box_json: str, outcome):
        good()
        add(name, _rec("<image>Where is it?", box_json, images=["media/good1.jpg"]), outcome)

    boxed("box_negative", '{"bbox_2d": [-20, -20, 30, 30], "label": "it"}',
          ("dropped", "filter", "box_in_image", "outside"))
    boxed("box_nan", '{"bbox_2d": [NaN, 1, 20, 30], "label": "it"}', ("error", "filter", "grounding", "[nan, 1, 20, 30] has a coordinate that is not a finite"))
    boxed("box_inf", '[{"bbox_2d": [1, 1, Infinity, 30], "label": "it"}]', ("error", "filter", "grounding", "[1, 1, inf, 30] has a coordinate that is not a finite"))
    boxed("box_inverted", '{"bbox_2d": [40, 1, 20, 30], "label": "it"}', ("dropped", "filter", "box_min_side", "side"))

    # -- ids -------------------------------------------------------------------------------------
    good()
    add("id_huge", _rec("<image>Huge id?", "Yes.", images=["media/good2.jpg"], id=HUGE_ID), GOOD)
    add("id_pathy", _rec("<image>Pathy id?", "Yes.", images=["media/good3.jpg"], id=PATHY_ID), GOOD)
    good()
    add("id_lone_surrogate", None, ("error", "read", "json_decode", "surrogate"),
        raw=b'{"id": "x\\ud800y", ' + json.dumps(_rec("<image>Hi", "x", images=["media/good4.jpg"]))[1:].encode())
    add("text_lone_surrogate", None, ("error", "read", "json_decode", "surrogate"),
        raw=json.dumps(_rec("<image>Hi \udfff there", "x", images=["media/good4.jpg"])).encode())
    good()

    (root / "hostile.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    cfg = {"sources": [{"path": "hostile.jsonl", "format": "auto"}], "unit_size": 10_000, "max_length": 4096,
           "grounding_format": "qwen2.5-vl", "image": {"max_image_pixels": 40_000_000},
           "dedup": {"exact": True}, "out": "out"}
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, expected, names


@pytest.fixture(scope="module")
def hostile_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    cfg_path, expected, names = make_hostile_corpus(root)
    result = run_job(JobConfig.from_yaml(cfg_path), executor="local", progress=False)
    ledger = pq.read_table(root / "out" / "ledger.parquet").to_pylist()
    manifest = pq.read_table(root / "out" / "manifest.parquet").to_pylist()
    return root, result, expected, names, ledger, manifest


def test_job_finishes_and_accounts_for_every_record(hostile_job):
    root, result, expected, names, ledger, manifest = hostile_job
    assert result.failed == [] and result.units_total == 1
    acc = result.accounting
    assert acc.balanced and acc.inputs == len(expected) == len(ledger)
    assert sorted(r["record_index"] for r in ledger) == sorted(expected)


def test_every_hostile_record_gets_its_specific_row(hostile_job):
    root, result, expected, names, ledger, manifest = hostile_job
    by_index = {r["record_index"]: r for r in ledger}
    got = {name: (by_index[i]["status"], by_index[i]["stage"], by_index[i]["rule"]) for name, i in names.items()}
    want = {name: expected[i][:3] for name, i in names.items()}
    assert got == want
    for name, i in names.items():
        fragment = expected[i][3]
        if fragment is not None:
            assert fragment in by_index[i]["message"], (name, by_index[i]["message"])


def test_good_samples_beside_the_hostile_ones_are_kept(hostile_job):
    root, result, expected, names, ledger, manifest = hostile_job
    kept = {r["record_index"] for r in manifest}
    assert kept == {i for i, e in expected.items() if e[0] == "kept"}
    assert sum(n.startswith("good") for n in names) >= 20


def test_hostile_ids_give_bounded_keys_and_nothing_escapes_out(hostile_job):
    root, result, expected, names, ledger, manifest = hostile_job
    rows = {r["id"]: r for r in manifest}
    for sid in (HUGE_ID, PATHY_ID):
        key = rows[sid]["key"]
        assert len(key) <= 100 and set(key) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert {p.relative_to(root).parts[0] for p in root.rglob("*")} == {"media", "out", "hostile.jsonl", "job.yaml"}
    from pipeline.loader import ShardLoader

    loader = ShardLoader(root / "out")
    assert loader.get(PATHY_ID)["input_ids"].size == rows[PATHY_ID]["n_tokens"]
    assert loader.get(HUGE_ID)["meta"]["id"] == HUGE_ID
