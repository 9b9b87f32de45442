"""#15: `vlprep verify` end to end with tiny random Qwen2-VL / Qwen2.5-VL checkpoints on CPU.

The references of most samples are set to what the checkpoint itself answers (computed one sample at a
time with a plain transformers `generate`), so the batched, left-padded generation from the shards must
reproduce those answers token for token and confirm them; one sample's reference is something else."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filters.reward.verify import split_prompt
from jobs.cli import main
from processors.presets import ENDOFTEXT_ID, IM_END_ID, get_preset
from processors.tokenizer import get_tokenizer
from issue15_verify_fixtures import write_out
from reference_forward import reference_generate
from test_reward_fixtures import encode_frames, photo
from tiny_models import build_tiny_model, load_model

NEW_TOKENS = 6


def reference_answer(model, sample, preset) -> list[int]:
    """Per-sample transformers path: the prompt alone, no padding, greedy (tests/reference_forward.py)."""
    return reference_generate(model, split_prompt(sample)[0], preset, max_new_tokens=NEW_TOKENS,
                              stop=[IM_END_ID, ENDOFTEXT_ID], pad=ENDOFTEXT_ID, suppress=list(range(151665, 151936)))


QUESTIONS = [
    ("v0", "What is in the picture?", dict(images=[(56, 84)])),
    ("v1", "How many cats are on the sofa?", dict(images=[(84, 56), (56, 56)])),
    ("v2", "Tell me something about the weather.", {}),
    ("v3", "What happens in the clip?", dict(videos=[(4, 56, 56)])),
    ("v4", "What colour is the car?", dict(images=[(56, 56)])),   # reference: not the model's answer
]


def _media(spec, seed):
    out = {}
    if "images" in spec:
        out["images"] = [photo(h, w, seed + k) for k, (h, w) in enumerate(spec["images"])]
    if "videos" in spec:
        out["videos"] = [np.stack([photo(h, w, seed + k) for k in range(t)]) for t, h, w in spec["videos"]]
        out["secs"] = [1.0]
    return out


def _prepared(tmp_path, family, model):
    preset = get_preset(family)
    tok = get_tokenizer(preset=preset)
    answers, encoded = {}, []
    for i, (sid, q, spec) in enumerate(QUESTIONS):
        media = _media(spec, i)
        probe = encode_frames(sid, q, "placeholder", preset=family, **media)
        s = {"id": sid, **probe.arrays(), "meta": probe.meta}
        answers[sid] = tok.decode(reference_answer(model, s, preset)).strip()
        ref = answers[sid] if sid != "v4" else "It is definitely a bright green colour."
        encoded.append(encode_frames(sid, q, ref, preset=family, **media))
    out = tmp_path / f"out-{family}"
    write_out(out, family, {"u0000": encoded[:3], "u0001": encoded[3:]}, v1=True)
    return out, answers


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_verify_end_to_end_on_cpu(tmp_path, family, capsys):
    ckpt = tmp_path / f"ckpt-{family}"
    model = load_model(build_tiny_model(family, ckpt, varied=True))
    out, answers = _prepared(tmp_path, family, model)
    assert len({a for a in answers.values()}) >= 3  # the model's answers differ from sample to sample
    assert main(["verify", str(out), "--model", str(ckpt), "--max-new-tokens", str(NEW_TOKENS),
                 "--device", "cpu", "--batch-tokens", "100000"]) == 0
    printed = capsys.readouterr().out
    assert "verified 5 samples" in printed
    s = pa.concat_tables([pq.read_table(p) for p in sorted((out / "scores").glob("*.parquet"))])
    assert s.column("id").to_pylist() == ["v0", "v1", "v2", "v3", "v4"]
    assert s.schema.field("verify.answer").type == pa.string()
    got = dict(zip(s.column("id").to_pylist(), s.column("verify.answer").to_pylist()))
    assert got == answers  # batched left-padded generation == per-sample generation, token for token
    match = dict(zip(s.column("id").to_pylist(), s.column("verify.match").to_pylist()))
    assert match["v4"] == 0.0
    assert all(match[k] == 1.0 for k in ("v0", "v1", "v2", "v3")), match
    assert set(s.column("verify.kind").to_pylist()) == {"text"}

    assert main(["verify", str(out), "--model", str(ckpt), "--device", "cpu"]) == 0
    assert "verifying 0 of 2 units" in capsys.readouterr().out
    assert main(["select", str(out), "--rule", "verify.match == 1"]) == 0
    kept = pq.read_table(out / "selection" / "manifest.parquet").column("id").to_pylist()
    assert kept == ["v0", "v1", "v2", "v3"]
    led = {r["id"]: r for r in pq.read_table(out / "selection" / "ledger.parquet").to_pylist()}
    assert led["v4"]["rule"] == "verify.match == 1" and led["v4"]["stage"] == "select"


def test_verify_mistakes(tmp_path, capsys):
    assert main(["verify", str(tmp_path), "--model", str(tmp_path)]) == 2
    assert "manifest.parquet not found" in capsys.readouterr().err
    out, _ = _prepared_empty(tmp_path)
    assert main(["verify", str(out), "--model", str(tmp_path)]) == 2
    assert "not a local checkpoint folder with a config.json" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "x"), "--model", str(tmp_path), "--iou", "0"]) == 2
    assert "--iou must be in (0, 1]" in capsys.readouterr().err


def _prepared_empty(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    pq.write_table(pa.table({"id": ["a"], "unit": ["u0"], "shard": ["shards/u0.tar"], "preset": ["qwen2-vl"]}),
                   out / "manifest.parquet")
    return out, None


def test_split_prompt_cuts_later_vision_blocks():
    from processors.chatml import build_chatml
    from processors.patches import patchify
    from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart

    preset = get_preset("qwen2.5-vl")
    a, b = patchify(photo(56, 56, 0)[None]), patchify(photo(56, 84, 1)[None])
    sample = Sample("m", [Message("user", [ImagePart(0), TextPart("first?")]), Message("assistant", [TextPart("one")]),
                          Message("user", [ImagePart(1), TextPart("second?")]), Message("assistant", [TextPart("two")])],
                    images=[MediaRef("image"), MediaRef("image")])
    chat = build_chatml(sample, preset, get_tokenizer(preset=preset),
                        image_tokens=[int(np.prod(a[1])) // 4, int(np.prod(b[1])) // 4])
    ids = np.asarray(chat.input_ids, np.int32)
    s = {"id": "m", "input_ids": ids, "labels": np.asarray(chat.labels, np.int32),
         "position_ids": np.zeros((3, len(ids)), np.int32), "pixel_values": np.concatenate([a[0], b[0]]),
         "image_grid_thw": np.array([a[1], b[1]], np.int32), "video_grid_thw": np.zeros((0, 3), np.int32),
         "second_per_grid_ts": np.zeros(0, np.float32), "meta": {}}
    prompt, ref = split_prompt(s)
    assert get_tokenizer(preset=preset).decode(ref.tolist()) == "one"
    assert prompt["image_grid_thw"].tolist() == [list(a[1])]
    np.testing.assert_array_equal(prompt["pixel_values"], a[0])
    assert prompt["position_ids"].shape == (3, len(prompt["input_ids"]))
