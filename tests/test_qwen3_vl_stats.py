"""`vlprep stats` for qwen3-vl: the pre-flight prediction (the sample plan from headers) equals what
`vlprep prepare --set preset=qwen3-vl` writes, per sample — images, a video with timestamp text,
boxes re-grounded into relative 0–1000 JSON; and the predictor equals the encoder on frame-list and
variable-frame-rate videos."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from media_factory import make_image, make_video
from pipeline.report.predict import Predictor
from pipeline.report.preflight import build_preflight_report
from processors.encode import encode_sample
from processors.formats import parse_record
from processors.presets import get_preset
from test_stats_preflight import COUNTS, _prepare

Q3 = get_preset("qwen3-vl")


def _corpus(root, preset):
    make_image(root / "a.png", 640, 480)
    make_image(root / "b.jpg", 1000, 200, seed=3)
    make_image(root / "c.png", 90, 60, seed=4)  # below the 65 536-pixel minimum: upscaled
    make_video(root / "clip.mp4", width=160, height=120, num_frames=45, fps=30.0)

    def rec(user, answer, **media):
        return json.dumps({"messages": [{"role": "user", "content": user},
                                        {"role": "assistant", "content": answer}], **media})

    box = "<|object_ref_start|>it<|object_ref_end|><|box_start|>(100,200),(500,900)<|box_end|>"
    lines = [
        rec("<image>Describe this picture.", "A gradient.", images=["a.png"]),
        rec("<image>Compare <image> please.", "The first is wider.", images=["a.png", "b.jpg"]),
        rec("<video>What moves?", "A square moves right.", videos=["clip.mp4"]),
        rec("<image>Where is it?", box, images=["c.png"]),
        rec("<image>Then <video>?", "Both move.", images=["b.jpg"], videos=["clip.mp4"]),
        rec("Say hello.", "Bonjour !"),
    ]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    (root / "job.yaml").write_text(f"sources:\n  - path: data.jsonl\npreset: {preset}\ngrounding_format: qwen2-vl\n")
    return root


@pytest.mark.parametrize("preset", ["qwen3-vl", "qwen3-vl-tf5"])
def test_preflight_equals_prepare_qwen3_vl(tmp_path, preset):
    corpus = _corpus(tmp_path / "raw", preset)
    manifest, ledger = _prepare(corpus / "job.yaml", tmp_path / "out")
    assert len(manifest) == 6, [r for r in ledger if r["status"] != "kept"]
    for report in (build_preflight_report(corpus / "job.yaml", workers=2),
                   build_preflight_report(corpus / "job.yaml", use_stages=False, workers=2)):
        pred = {r["id"]: r for r in report.series["manifest"].to_pylist()}
        assert set(pred) == {r["id"] for r in manifest}
        for row in manifest:
            for c in COUNTS + ("image_resized", "video_frames", "video_resized"):
                assert pred[row["id"]][c] == row[c], (row["record_index"], c)
    rows = {r["record_index"]: r for r in manifest}
    # factor 32: 640x480 → 480x640 (15 x 20 merged patches: 300 tokens); 90x60 → 224x320 (up to 65 536 px)
    assert rows[0]["image_resized"] == [[480, 640]] and rows[0]["n_image_tokens"] == 300
    assert rows[3]["image_resized"] == [[224, 320]]
    # 45 frames at 30 fps, 2 fps: int(1.5 * 2) = 3 → min_frames 4; 160x120 → 128x160 (no budget pressure)
    assert rows[2]["video_frames"] == [4] and rows[2]["video_resized"] == [[128, 160]]


def test_boxes_become_relative_json(tmp_path):
    corpus = _corpus(tmp_path / "raw", "qwen3-vl")
    s = parse_record(json.loads((corpus / "data.jsonl").read_text().splitlines()[3]))
    from processors.encode import EncodeOptions
    from processors.tokenizer import get_tokenizer

    enc = encode_sample(s, Q3, media_root=corpus, options=EncodeOptions(grounding_format="qwen2-vl"))
    text = get_tokenizer(preset=Q3).decode(enc.input_ids)
    assert '[{"bbox_2d": [100, 200, 500, 900], "label": "it"}]<|im_end|>' in text


def test_predict_equals_encode_frame_list_and_vfr(tmp_path):
    from video_factory import make_clip

    for i in range(5):
        Image.fromarray(np.full((300, 200, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"f{i}.png")
    times = list(np.cumsum([0.0] + [1 / 30] * 12 + [1 / 8] * 10 + [1 / 60] * 17))
    make_clip(tmp_path / "vfr.mp4", frame_times=times, num_frames=len(times))
    items = [[f"f{i}.png" for i in range(5)], "vfr.mp4"]
    for item in items:
        for req in ({}, {"nframes": 6}) if item == "vfr.mp4" else ({}, {"sample_fps": 4.0}):
            v = {"type": "video", "video": item, **req}
            s = parse_record({"messages": [{"role": "user", "content": [v, {"type": "text", "text": "What?"}]},
                                           {"role": "assistant", "content": "Grey."}]})
            enc = encode_sample(s, Q3, media_root=tmp_path)
            pred = Predictor(Q3, {}).predict(s, tmp_path)
            meta = enc.meta["videos"][0]
            assert pred.ok, pred.error
            assert pred.video_frames == [len(meta["frame_indices"])], (item, req)
            assert pred.video_resized == [tuple(meta["resized_size"])], (item, req)
            assert pred.video_tokens == [enc.meta["n_video_tokens"]] and pred.n_tokens == enc.meta["n_tokens"], req
