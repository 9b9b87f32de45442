"""Pre-flight on a generated raw corpus: token predictions checked against hand-computed sizes and
against the tokens `vlprep prepare` actually writes for the same records."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from media_factory import make_image, make_video
from pipeline.report.preflight import build_preflight_report

# Hand-computed (spec §3.1 / §6.3 / §6.5), not via vlprep code:
#  a.png 640x480 → round(480/28)=17, round(640/28)=23 → 476x644, 17*23 = 391 tokens
#  b.jpg 1000x200 (w x h) → round(200/28)=7, round(1000/28)=36 → 196x1008, 7*36 = 252 tokens
#  clip.mp4 160x120, 30 frames @ 30 fps: n = 1 s * 2 fps = 2 → raised to min_frames 4;
#    per-frame 112x168 = 18 816 px < 100 352 → beta = sqrt(100352 / 19200) → 280x392; 2 * 10 * 14 = 280 tokens
A_TOK, B_TOK, V_TOK = 391, 252, 280


def _corpus(root):
    make_image(root / "a.png", 640, 480)
    make_image(root / "b.jpg", 1000, 200, seed=3)
    make_video(root / "clip.mp4", width=160, height=120, num_frames=30, fps=30.0)

    def rec(user, answer, **media):
        return json.dumps({"messages": [{"role": "user", "content": user},
                                        {"role": "assistant", "content": answer}], **media})

    lines = [
        rec("<image>Describe this picture.", "A gradient.", images=["a.png"]),
        rec("<image>Compare <image> please.", "The first is wider.", images=["a.png", "b.jpg"]),
        rec("<video>What moves?", "A square moves right.", videos=["clip.mp4"]),
        rec("Say hello in French.", "Bonjour !"),
        rec("<image>What is this?", "Nothing.", images=["nope.png"]),
        '{"messages": [broken',
    ]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    (root / "job.yaml").write_text("sources:\n  - path: data.jsonl\npreset: qwen2.5-vl\n")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def report(corpus):
    return build_preflight_report(corpus / "job.yaml", workers=4)


def test_accounting(report):
    acc = report.stats["accounting"]
    assert (acc["inputs"], acc["kept"], acc["dropped"], acc["error"]) == (6, 4, 0, 2)
    stages = {(r["stage"], r["status"]): r["count"] for r in acc["by_rule"]}
    assert stages[("read", "error")] == 1                      # the broken JSON line
    ledger = report.series["ledger"].to_pylist()
    missing = [r for r in ledger if r["record_index"] == 4]
    assert missing[0]["status"] == "error" and "nope.png" in missing[0]["message"]


def test_visual_tokens_and_sizes(report):
    s = report.stats
    assert s["tokens"]["image"]["sum"] == A_TOK + A_TOK + B_TOK
    assert s["tokens"]["video"]["sum"] == V_TOK
    assert s["tokens"]["visual"]["max"] == A_TOK + B_TOK
    rows = {r["record_index"]: r for r in report.series["manifest"].to_pylist()}
    assert rows[0]["image_sizes"] == [[480, 640]] and rows[0]["image_resized"] == [[476, 644]]
    assert rows[1]["image_resized"] == [[476, 644], [196, 1008]]
    assert rows[1]["n_image_tokens"] == A_TOK + B_TOK
    assert rows[2]["video_frames"] == [4] and rows[2]["video_resized"] == [[280, 392]]
    assert rows[2]["video_durations"][0] == pytest.approx(1.0, abs=0.05)
    assert rows[2]["video_sample_fps"][0] == pytest.approx(4.0)      # 4 frames out of a 1 s, 30-frame clip
    assert rows[3]["n_image_tokens"] == 0 and rows[3]["n_video_tokens"] == 0
    assert s["images"]["total"] == 3 and s["videos"]["total"] == 1
    # references of records that pass the read + media checks (nope.png is an error row instead)
    assert s["media"]["image_references"] == 3 and s["media"]["unique_image_references"] == 2


def test_text_tokens_equal_chatml(report):
    """Text-only record: the prediction is the length of the ChatML ids, counted here with the tokenizer."""
    from processors.presets import IM_END_ID, IM_START_ID
    from processors.tokenizer import get_tokenizer

    tok = get_tokenizer()
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nSay hello in French."
            "<|im_end|>\n<|im_start|>assistant\nBonjour !<|im_end|>\n")
    ids = tok.encode(text)
    assert ids[0] == IM_START_ID and IM_END_ID in ids
    row = next(r for r in report.series["manifest"].to_pylist() if r["record_index"] == 3)
    assert row["n_tokens"] == row["n_text_tokens"] == len(ids)
    # supervised: "Bonjour !" + <|im_end|> + "\n"
    assert row["n_supervised_tokens"] == len(tok.encode("Bonjour !")) + 2


def test_max_length_share(corpus):
    r = build_preflight_report(corpus / "job.yaml", max_length=300, workers=2)
    rows = r.series["ledger"].to_pylist()
    over = [x for x in rows if x["status"] == "dropped"]
    # records 0 (391 image tokens) and 1 (643) exceed 300; 2 has 280 video tokens + text > 300
    assert sorted(x["record_index"] for x in over) == [0, 1, 2]
    assert all(x["rule"] == "max_length" and x["value"] > 300 for x in over)
    assert r.stats["max_length"]["over"] == 3 and r.stats["max_length"]["samples"] == 4


def test_preset_changes_prediction(corpus):
    r = build_preflight_report(corpus / "data.jsonl", preset="qwen-vl", workers=2)
    rows = {x["record_index"]: x for x in r.series["manifest"].to_pylist()}
    assert rows[1]["n_image_tokens"] == 2 * 256                         # fixed 448x448, 256 tokens each
    assert 2 not in rows                                                # no video support in qwen-vl


def _prepare(config, out):
    rc = main(["prepare", str(config), "--out", str(out), "--executor", "local", "--no-progress"])
    assert rc in (0, 1), f"vlprep prepare exited {rc}"
    return pq.read_table(out / "manifest.parquet").to_pylist(), pq.read_table(out / "ledger.parquet").to_pylist()


COUNTS = ("n_tokens", "n_text_tokens", "n_image_tokens", "n_video_tokens", "n_supervised_tokens")


def test_preflight_equals_prepare_images_and_text(corpus, tmp_path):
    manifest, ledger = _prepare(corpus / "job.yaml", tmp_path / "out")
    pred = {r["id"]: r for r in build_preflight_report(corpus / "job.yaml").series["manifest"].to_pylist()}
    checked = 0
    for row in manifest:
        if row["n_videos"]:
            continue  # covered by the video test below
        assert row["id"] in pred, f"prepare kept {row['id']} but pre-flight did not"
        for c in COUNTS:
            assert pred[row["id"]][c] == row[c], (row["id"], c)
        assert pred[row["id"]]["image_resized"] == row["image_resized"]
        checked += 1
    assert checked == 3
    kept = {r["id"] for r in ledger if r["status"] == "kept"}
    errors = {r["record_index"] for r in ledger if r["status"] == "error"}
    assert {4, 5} <= errors and len(kept) >= 3


def test_preflight_equals_prepare_video(corpus, tmp_path):
    manifest, _ = _prepare(corpus / "job.yaml", tmp_path / "out")
    pred = {r["id"]: r for r in build_preflight_report(corpus / "job.yaml").series["manifest"].to_pylist()}
    vids = [r for r in manifest if r["n_videos"]]
    assert len(vids) == 1
    for c in COUNTS + ("video_frames", "video_resized"):
        assert pred[vids[0]["id"]][c] == vids[0][c], c


def test_fast_mode_predicts_the_same_tokens(corpus, report):
    fast = build_preflight_report(corpus / "job.yaml", use_stages=False, workers=2)
    assert fast.stats["mode"] == "fast (no filters)" and report.stats["mode"] == "pipeline.stages"
    a = {r["id"]: r for r in report.series["manifest"].to_pylist()}
    b = {r["id"]: r for r in fast.series["manifest"].to_pylist()}
    assert set(a) == set(b) and len(a) == 4
    for i in a:
        for c in COUNTS + ("image_resized", "video_frames", "video_resized"):
            assert a[i][c] == b[i][c], (i, c)
    # the missing file is an error in both modes, the broken line a read error
    assert fast.stats["accounting"]["error"] == 2


def test_predict_equals_encode_for_frame_list_video(tmp_path):
    # Tall frames where an image-band pass before the §6.5 size would round to 2408 rows, not 2436.
    import numpy as np
    from PIL import Image

    from pipeline.report.predict import Predictor
    from processors.encode import encode_sample
    from processors.formats import parse_record
    from processors.presets import get_preset

    for i in range(5):
        Image.fromarray(np.full((4951, 500, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"f{i}.png")
    s = parse_record({"messages": [{"role": "user", "content": "<video>What changes?"},
                                   {"role": "assistant", "content": "The grey level."}],
                      "videos": [[f"f{i}.png" for i in range(5)]]})
    p = get_preset("qwen2.5-vl")
    enc = encode_sample(s, p, media_root=tmp_path)
    pred = Predictor(p, {}).predict(s, tmp_path)
    v = enc.meta["videos"][0]
    assert pred.video_resized == [(2436, 224)] == [tuple(v["resized_size"])]
    assert pred.video_tokens == [enc.meta["n_video_tokens"]] == [2088]
    assert pred.video_frames == [len(v["frame_indices"])] == [5]
    assert pred.video_durations == [v["duration"]] == [2.5]
    assert pred.n_tokens == enc.meta["n_tokens"]


def _resized_corpus(root):
    """Records whose media carry qwen-vl-utils' resized_height / resized_width, under a job band
    (256 tokens) that some requests are above, with Qwen2-VL boxes re-rendered on the final size."""
    import numpy as np
    from PIL import Image

    make_image(root / "a.png", 640, 480)
    make_image(root / "b.jpg", 1000, 200, seed=3)
    make_video(root / "clip.mp4", width=160, height=120, num_frames=30, fps=30.0)
    for i in range(5):
        Image.fromarray(np.full((90, 120, 3), 40 * i, dtype=np.uint8)).save(root / f"f{i}.png")

    def rec(items, answer="A gradient."):
        return json.dumps({"messages": [{"role": "user", "content": items + [{"type": "text", "text": "Describe."}]},
                                        {"role": "assistant", "content": answer}]})

    box = "<|object_ref_start|>it<|object_ref_end|><|box_start|>(100,200),(500,900)<|box_end|>"
    lines = [
        rec([{"type": "image", "image": "a.png", "resized_height": 300, "resized_width": 500}]),   # inside the band
        rec([{"type": "image", "image": "b.jpg", "resized_height": 2000, "resized_width": 3000},   # above it: 2 resizes
             {"type": "image", "image": "a.png", "max_pixels": 28 * 28 * 16}]),
        rec([{"type": "image", "image": "a.png", "resized_height": 600, "resized_width": 800}], box),
        rec([{"type": "video", "video": "clip.mp4", "resized_height": 100, "resized_width": 150}]),
        rec([{"type": "video", "video": [f"f{i}.png" for i in range(5)], "resized_height": 200, "resized_width": 300}]),
        rec([{"type": "image", "image": "a.png", "resized_height": 300}], "Half a size."),         # an error
    ]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    (root / "job.yaml").write_text("sources:\n  - path: data.jsonl\npreset: qwen2.5-vl\ngrounding_format: qwen2-vl\n"
                                   f"image:\n  max_pixels: {28 * 28 * 256}\n")
    return root


def test_preflight_equals_prepare_with_resized_height_width(tmp_path):
    corpus = _resized_corpus(tmp_path / "raw")
    manifest, ledger = _prepare(corpus / "job.yaml", tmp_path / "out")
    assert len(manifest) == 5
    bad = next(r for r in ledger if r["record_index"] == 5)
    assert (bad["status"], bad["stage"], bad["rule"]) == ("error", "encode", "format")
    assert "resized_height=300 is given without resized_width" in bad["message"]
    rows = {r["record_index"]: r for r in manifest}
    # transformers' smart_resize: 300x500 → 308x504 (inside the 256-token band); 2000x3000 → 1988x2996 →
    # (band) 364x532; a.png at 16 tokens → 84x112; 600x800 → 588x812 → 364x504; video 100x150 → 112x140
    # (the video budget unused); frames 200x300 → 196x308
    assert rows[0]["image_resized"] == [[308, 504]]
    assert rows[1]["image_resized"] == [[364, 532], [84, 112]]
    assert rows[2]["image_resized"] == [[364, 504]]
    assert rows[3]["video_resized"] == [[112, 140]] and rows[4]["video_resized"] == [[196, 308]]
    for report in (build_preflight_report(corpus / "job.yaml", workers=2),
                   build_preflight_report(corpus / "job.yaml", use_stages=False, workers=2)):
        pred = {r["id"]: r for r in report.series["manifest"].to_pylist()}
        assert set(pred) == {r["id"] for r in manifest}
        for row in manifest:
            for c in COUNTS + ("image_resized", "video_frames", "video_resized"):
                assert pred[row["id"]][c] == row[c], (row["record_index"], c)
        predicted_bad = next(r for r in report.series["ledger"].to_pylist() if r["record_index"] == 5)
        assert predicted_bad["status"] == "error" and "resized_height=300" in predicted_bad["message"]


def test_predict_equals_encode_for_variable_frame_rate_video(tmp_path):
    # 40 frames whose spacing changes (1/30 s, then 1/8 s, then 1/60 s): the CFR index rule on the
    # average rate would pick other frames (and another count) than the encoder's by-time sampling.
    import numpy as np

    from pipeline.report.predict import Predictor
    from processors.encode import encode_sample
    from processors.formats import parse_record
    from processors.presets import get_preset
    from processors.video import probe_video
    from processors.video_sampling import sample_frame_indices
    from video_factory import make_clip

    times = list(np.cumsum([0.0] + [1 / 30] * 12 + [1 / 8] * 10 + [1 / 60] * 17))
    make_clip(tmp_path / "vfr.mp4", frame_times=times, num_frames=len(times))
    info = probe_video(tmp_path / "vfr.mp4")
    assert info.is_vfr
    p = get_preset("qwen2.5-vl")
    for req in ({}, {"fps": 7.0}, {"nframes": 6}):
        item = {"type": "video", "video": "vfr.mp4", **req}
        s = parse_record({"messages": [{"role": "user", "content": [item, {"type": "text", "text": "What moves?"}]},
                                       {"role": "assistant", "content": "A square."}]})
        enc = encode_sample(s, p, media_root=tmp_path)
        pred = Predictor(p, {}).predict(s, tmp_path)
        v = enc.meta["videos"][0]
        assert pred.video_frames == [len(v["frame_indices"])], req
        assert pred.video_sample_fps == [v["sample_fps"]], req
        assert pred.video_tokens == [enc.meta["n_video_tokens"]] and pred.n_tokens == enc.meta["n_tokens"], req
    # the constant-rate rule on the average rate (what the pre-flight used before) picks the same
    # count but other frames, so it reports another sample rate: 3.0508 vs the encoder's 3.0769 /s
    old = sample_frame_indices(info.num_frames, info.avg_fps, nframes=6)[1]
    assert abs(old - pred.video_sample_fps[0]) > 1e-3
