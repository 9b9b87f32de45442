"""Generated raw corpora for pipeline tests and benchmarks: good samples mixed with every kind of
bad record, plus the ledger outcome each record must get.

`make_mixed_corpus(root)` writes sources of every kind (jsonl, json, parquet, webdataset tar,
folder) under root/corpus, media escapes pointing at root/outside, and a job YAML; it returns
(config path, expected) with expected[(source name, record_index)] = (status, stage, rule).
`make_bench_corpus(root, n)` writes n image samples (+ a share of videos) in one jsonl.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from media_factory import gradient_rgb, make_image, make_video

KEPT = ("kept", None, None)


def has_video() -> bool:
    return importlib.util.find_spec("processors.video") is not None


def _msg(user: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _jpeg_bytes(w: int, h: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gradient_rgb(w, h, seed)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_mixed_corpus(root: str | os.PathLike, *, unit_size: int = 4, max_length: int = 600,
                      with_video: bool | None = None) -> tuple[Path, dict]:
    root = Path(root)
    c = root / "corpus"
    media = c / "media"
    media.mkdir(parents=True, exist_ok=True)
    outside = root / "outside"
    outside.mkdir(exist_ok=True)
    make_image(outside / "secret.jpg", 64, 64, seed=99)
    with_video = has_video() if with_video is None else with_video
    expected: dict = {}

    # -- conv.jsonl: LLaMA-Factory messages, one record per line ------------------------------------
    lines: list[str] = []

    def add(record, outcome, raw: str | None = None):
        idx = len(lines)
        lines.append(raw if raw is not None else json.dumps(record))
        if outcome is not None:
            expected[("corpus/conv.jsonl", idx)] = outcome

    for i in range(6):
        make_image(media / f"img{i}.jpg", 64 + 8 * i, 56 + 4 * i, seed=i)
        add({"messages": _msg(f"<image>What is shown in picture {i}?", f"A gradient number {i} with noise."),
             "images": [f"media/img{i}.jpg"]}, KEPT)
    add(None, ("error", "read", "json_decode"), raw='{"messages": [{"role": "user", "content": "broken')
    lines.append("")                                   # a blank line is not a record
    add({"messages": _msg("<image>Where?", "Nowhere."), "images": ["media/does_not_exist.jpg"]},
        ("error", "clean", "media_missing"))
    add({"messages": _msg("<image>Escape?", "Up."), "images": ["../outside/secret.jpg"]},
        ("error", "clean", "path_escape"))
    add({"messages": _msg("<image>Absolute?", "Elsewhere."), "images": [str(outside / "secret.jpg")]},
        ("error", "clean", "path_escape"))
    os.symlink(outside / "secret.jpg", media / "link.jpg")
    add({"messages": _msg("<image>Symlink?", "Out."), "images": ["media/link.jpg"]}, ("error", "clean", "path_escape"))
    add({"messages": _msg("<image>Remote?", "No network."), "images": ["http://example.com/a.jpg"]},
        ("error", "clean", "media"))
    (media / "garbage.jpg").write_bytes(b"this is not a jpeg at all")
    add({"messages": _msg("<image>Corrupt?", "Yes."), "images": ["media/garbage.jpg"]},
        ("error", "clean", "image_decode"))
    full = _jpeg_bytes(96, 96, 7)
    (media / "truncated.jpg").write_bytes(full[: len(full) // 2])   # header fine, pixels cut off
    add({"messages": _msg("<image>Truncated?", "Half."), "images": ["media/truncated.jpg"]},
        ("error", "encode", "image_decode"))
    add({"messages": _msg("<image><image>Two tags?", "One image."), "images": ["media/img0.jpg"]},
        ("error", "read", "placeholder_mismatch"))
    make_image(media / "wide.jpg", 200, 100, seed=11)
    add({"messages": _msg("<image>Locate the cat.", '```json\n[{"bbox_2d": [20, 10, 900, 80], "label": "cat"}]\n```'),
         "images": ["media/wide.jpg"]}, ("dropped", "filter", "box_in_image"))
    add({"messages": _msg("<image>Locate the dog.", '```json\n[{"bbox_2d": [20, 10, 120, 80], "label": "dog"}]\n```'),
         "images": ["media/wide.jpg"]}, KEPT)
    add({"messages": _msg("<image>What is shown in picture 0?", "A gradient number 0 with noise."),
         "images": ["media/img0.jpg"]}, ("dropped", "clean", "exact_dup"))
    rng = np.random.default_rng(5)     # varied words: long, but not repetitive (that is another rule)
    long_answer = " ".join("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 7)) for _ in range(300)) + "."
    add({"messages": _msg("<image>Tell me everything.", long_answer), "images": ["media/img1.jpg"]},
        ("dropped", "filter", "max_length"))
    add({"messages": _msg("Only text here?", "Yes, a text-only sample is fine.")}, KEPT)
    add({"messages": [{"role": "user", "content": "<image>No answer"}], "images": ["media/img2.jpg"]}, None)
    if with_video:
        make_video(media / "clip.mp4", width=64, height=48, num_frames=12, fps=6.0)
        (media / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
        add({"messages": _msg("<video>What moves?", "A square."), "videos": ["media/clip.mp4"]}, KEPT)
        add({"messages": _msg("<video>Broken?", "Yes."), "videos": ["media/broken.mp4"]},
            ("error", "clean", "video_decode"))
    (c / "conv.jsonl").write_text("\n".join(lines) + "\n")

    # -- data.json: a LLaVA list -----------------------------------------------------------------
    llava = [
        {"id": "llava-1", "image": "media/img3.jpg",
         "conversations": [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "Colours."}]},
        "not an object",
        {"id": "llava-2", "image": "media/img4.jpg",
         "conversations": [{"from": "human", "value": "<image>\nAgain?"}, {"from": "gpt", "value": "More colours."}]},
    ]
    (c / "data.json").write_text(json.dumps(llava))
    expected[("corpus/data.json", 0)] = KEPT
    expected[("corpus/data.json", 1)] = ("error", "read", "format")
    expected[("corpus/data.json", 2)] = KEPT

    # -- rows.parquet ---------------------------------------------------------------------------
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": _msg("<image>Parquet row?", f"Row {i}."), "images": [f"media/img{i}.jpg"]} for i in (4, 5)]
    pq.write_table(pa.Table.from_pylist(rows), c / "rows.parquet")
    expected[("corpus/rows.parquet", 0)] = KEPT
    expected[("corpus/rows.parquet", 1)] = KEPT

    # -- shard-00000.tar: img2dataset layout ------------------------------------------------------
    members = []
    for k in range(3):
        key = f"0000{k}"
        members += [(f"{key}.jpg", _jpeg_bytes(80, 60, 20 + k)), (f"{key}.txt", f"a caption {k}".encode()),
                    (f"{key}.json", json.dumps({"key": key, "caption": f"a caption {k}", "status": "success"}).encode())]
        expected[("corpus/shard-00000.tar", k)] = KEPT
    members += [("00003.jpg", b"\xff\xd8\xff garbage"), ("00003.txt", b"broken image")]
    expected[("corpus/shard-00000.tar", 3)] = ("error", "clean", "image_decode")
    members += [("00004.jpg", _jpeg_bytes(70, 50, 30)), ("00004.json", json.dumps({"key": "00004"}).encode())]
    expected[("corpus/shard-00000.tar", 4)] = ("error", "read", "missing_caption")
    members += [("00005.jpg", _jpeg_bytes(70, 50, 31)), ("00005.json", json.dumps({"caption": "json only"}).encode())]
    expected[("corpus/shard-00000.tar", 5)] = KEPT
    with tarfile.open(c / "shard-00000.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    # -- pics/: media + sidecar captions ----------------------------------------------------------
    pics = c / "pics"
    pics.mkdir()
    make_image(pics / "a.png", 72, 72, seed=40)
    (pics / "a.txt").write_text("a png picture")
    make_image(pics / "b.jpg", 90, 60, seed=41)
    (pics / "b.json").write_text(json.dumps({"caption": "a jpeg picture"}))
    make_image(pics / "c.jpg", 60, 90, seed=42)                      # no caption
    os.symlink(outside / "secret.jpg", pics / "d.jpg")
    (pics / "d.txt").write_text("a symlink out")
    for i, outcome in enumerate([KEPT, KEPT, ("error", "read", "missing_caption"), ("error", "clean", "path_escape")]):
        expected[("corpus/pics", i)] = outcome

    cfg = {
        "sources": [
            {"path": "corpus/conv.jsonl", "format": "llamafactory"},
            {"path": "corpus/data.json", "format": "llava"},
            {"path": "corpus/rows.parquet"},
            {"path": "corpus/shard-*.tar", "kind": "webdataset"},
            {"path": "corpus/pics", "kind": "folder"},
        ],
        "max_length": max_length,
        "unit_size": unit_size,
        "dedup": {"exact": True},
        "out": "out",
    }
    import yaml

    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, expected


def make_bench_corpus(root: str | os.PathLike, n: int, *, video_share: float = 0.02, size=(320, 240),
                      unit_size: int = 64) -> Path:
    """n samples in one jsonl: distinct generated JPEGs (and every 1/video_share-th a short clip)."""
    root = Path(root)
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    every = int(round(1 / video_share)) if video_share and has_video() else 0
    clip = None
    n_img_files = min(n, 500)   # images are re-used across records with distinct text (bounded disk)
    for i in range(n_img_files):
        p = media / f"{i:05d}.jpg"
        if not p.exists():
            w, h = size[0] + (i % 7) * 16, size[1] + (i % 5) * 12
            p.write_bytes(_jpeg_bytes(w, h, i))
    with open(root / "bench.jsonl", "w") as f:
        for i in range(n):
            if every and i % every == every - 1:
                if clip is None:
                    clip = make_video(media / "clip.mp4", width=160, height=120, num_frames=24, fps=12.0)
                rec = {"messages": _msg(f"<video>What happens in clip {i}?", f"A square moves, take {i}."),
                       "videos": ["media/clip.mp4"]}
            else:
                rec = {"messages": _msg(f"<image>Describe image {i}.", f"Picture {i}: gradients and noise."),
                       "images": [f"media/{i % n_img_files:05d}.jpg"]}
            f.write(json.dumps(rec) + "\n")
    import yaml

    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"path": "bench.jsonl", "format": "llamafactory"}],
                                    "unit_size": unit_size, "dedup": {"exact": True}, "out": "out"}))
    return path


def np_equal_dicts(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
