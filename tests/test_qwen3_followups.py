"""Issue #13 follow-ups: a tokenizer missing a special token the preset needs stops `vlprep prepare` /
`stats` / `encode` once, up front (exit 2, one line); a Qwen3.5-style 248k tokenizer goes through
`vlprep prepare` → ShardDataset → collators (pad id from the OUT's tokenizer, packed loss equal to the
per-sample losses on a tiny Qwen3-VL with that vocabulary: image + video with timestamp text);
`process_video(preset=qwen3-vl)` follows the preset's video resize rule."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jobs.cli import main  # noqa: E402
from media_factory import make_image, make_video  # noqa: E402
from test_qwen3_vl_tokenizer import QWEN35_IDS, make_tokenizer_folder  # noqa: E402


def _corpus(root: Path, tokenizer: Path | None, preset: str = "qwen3-vl") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    make_image(root / "a.png", 200, 150)
    make_video(root / "clip.mp4", width=96, height=64, num_frames=16, fps=8.0)

    def rec(user, answer, **media):
        return json.dumps({"messages": [{"role": "user", "content": user},
                                        {"role": "assistant", "content": answer}], **media})

    lines = [rec("<image>What?", "A gradient.", images=["a.png"]),
             rec("<video>Moves?", "A square.", videos=["clip.mp4"]),
             rec("Hi", "Hello."),
             rec("<image>and<video>", "Both.", images=["a.png"], videos=["clip.mp4"])]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    tok = f"tokenizer: {tokenizer}\n" if tokenizer else ""
    (root / "job.yaml").write_text(f"sources:\n  - path: data.jsonl\npreset: {preset}\n{tok}")
    return root / "job.yaml"


# ------------------------------------------------------------------ 1. one up-front tokenizer check

@pytest.fixture
def no_video_pad(tmp_path):
    ids = {k: v for k, v in QWEN35_IDS.items() if k != "<|video_pad|>"}
    return make_tokenizer_folder(tmp_path / "tok", ids)


def test_prepare_stops_once_on_a_missing_special_token(tmp_path, no_video_pad, capsys):
    job = _corpus(tmp_path / "raw", no_video_pad)
    rc = main(["prepare", str(job), "--out", str(tmp_path / "out"), "--executor", "local", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "has no <|video_pad|> token, which preset qwen3-vl needs" in err[0] and err[0].startswith("vlprep prepare:")
    assert not (tmp_path / "out").exists()          # stopped before any unit ran or OUT was touched


def test_stats_preflight_stops_once_on_a_missing_special_token(tmp_path, no_video_pad, capsys):
    job = _corpus(tmp_path / "raw", no_video_pad)
    rc = main(["stats", str(job), "--out", str(tmp_path / "st"), "--no-html", "--executor", "local"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "has no <|video_pad|> token" in err[0], err


def test_missing_tokenizer_folder_is_one_line(tmp_path, capsys):
    job = _corpus(tmp_path / "raw", tmp_path / "nowhere")
    rc = main(["prepare", str(job), "--out", str(tmp_path / "out"), "--executor", "local", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no tokenizer.json" in err[0], err


def test_encode_checks_the_tokenizer_up_front(monkeypatch, tmp_path, no_video_pad, capsys):
    import processors.tokenizer as T

    job = _corpus(tmp_path / "raw", None)
    real = T.get_tokenizer
    monkeypatch.setattr(T, "get_tokenizer", lambda path=None, preset=None: real(no_video_pad))
    import processors

    monkeypatch.setattr(processors, "get_tokenizer", T.get_tokenizer, raising=False)
    rc = main(["encode", str(job.parent / "data.jsonl"), "--media-root", str(job.parent), "--preset", "qwen3-vl"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "has no <|video_pad|> token" in err[0], err


# ------------------------------------------------------------------ 2 + 5. a 248k tokenizer to the model

@pytest.fixture(scope="module")
def tiny_qwen35(tmp_path_factory) -> Path:
    """A tiny Qwen3-VL whose vocabulary and vision ids are Qwen3.5's (248 320 rows, image 248056 …)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen3VLConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=8, vocab_size=248320,
                         rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=16,
                           num_position_embeddings=64, deepstack_visual_indexes=[1]),
        image_token_id=QWEN35_IDS["<|image_pad|>"], video_token_id=QWEN35_IDS["<|video_pad|>"],
        vision_start_token_id=QWEN35_IDS["<|vision_start|>"], vision_end_token_id=QWEN35_IDS["<|vision_end|>"])
    folder = tmp_path_factory.mktemp("tiny_qwen35")
    Qwen3VLForConditionalGeneration(cfg).eval().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("preset", ["qwen3-vl", "qwen3-vl-tf5"])
def test_qwen35_tokenizer_prepare_dataset_collators(tmp_path, tiny_qwen35, preset):
    import transformers

    from pipeline.dataset import ShardDataset, out_pad_id
    from pipeline.loader import ShardLoader, to_model_inputs
    from processors.tokenizer import get_tokenizer

    tok_dir = make_tokenizer_folder(tmp_path / "tok")
    job = _corpus(tmp_path / "raw", tok_dir, preset)
    out = tmp_path / "out"
    assert main(["prepare", str(job), "--out", str(out), "--executor", "local", "--no-progress"]) == 0
    pad = QWEN35_IDS["<|endoftext|>"]
    assert out_pad_id(out) == pad

    loader = ShardLoader(out)
    samples = [s for sh in loader.shards() for s in loader.iter_shard(sh)]
    assert len(samples) == 4
    both = next(s for s in samples if len(s["video_grid_thw"]) and len(s["image_grid_thw"]))
    text = get_tokenizer(tok_dir).decode(both["input_ids"])
    assert "seconds>" in text                                   # timestamp text per temporal group
    for s in samples:
        assert not np.isin(s["input_ids"], [151652, 151653, 151655, 151656, 151643, 151645]).any()

    # padded batches: rows filled with the OUT tokenizer's <|endoftext|>, not Qwen2's 151643
    ds = ShardDataset(out, batch_size=4, shuffle=False)
    (batch,) = list(ds)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any() and bool((ids[mask == 0] == pad).all())

    model = transformers.Qwen3VLForConditionalGeneration.from_pretrained(
        tiny_qwen35, dtype=torch.float32, attn_implementation="sdpa").eval()
    losses, weights = [], []
    with torch.no_grad():
        for s in samples:
            losses.append(float(model(**to_model_inputs(s, preset, pad_id=pad), use_cache=False).loss))
            weights.append(int((s["labels"][1:] != -100).sum()))
        expected = float(np.dot(losses, weights) / sum(weights))
        # packed rows through the dataset (one row holds all four: image, video with <t seconds>, text, mixed)
        packed = list(ShardDataset(out, max_tokens=4096, shuffle=False))
        assert len(packed) == 1 and sorted(packed[0].ids) == sorted(s["id"] for s in samples)
        got = float(model(**packed[0]).loss)
    order = {s["id"]: i for i, s in enumerate(samples)}
    w = [weights[order[i]] for i in packed[0].ids]
    expected = float(np.dot([losses[order[i]] for i in packed[0].ids], w) / sum(w))
    assert abs(got - expected) <= 1e-5, (got, expected)


# ------------------------------------------------------------------ 3. process_video follows the preset

@pytest.mark.parametrize("name", ["qwen3-vl", "qwen3-vl-tf5", "qwen3-vl-qvu", "qwen2.5-vl"])
def test_process_video_follows_the_preset_video_resize(tmp_path, name):
    from processors.presets import get_preset
    from processors.video import process_video
    from processors.video_resize import RESIZE_MODES, resize_mode

    preset = get_preset(name)
    mode = resize_mode(default=preset.video_resize)
    assert mode == preset.video_resize == ("qwen-vl-utils" if name in ("qwen3-vl-qvu", "qwen2.5-vl") else "transformers")
    other = next(m for m in RESIZE_MODES if m != mode)
    clip = make_video(tmp_path / "c.mp4", width=150, height=100, num_frames=12, fps=6.0)   # resized: 150x100 → factor grid
    got = process_video(str(clip), name)
    assert np.array_equal(got.patches, process_video(str(clip), name, resize=mode).patches)
    assert not np.array_equal(got.patches, process_video(str(clip), name, resize=other).patches)
    frames = []
    for i in range(4):
        p = tmp_path / f"f{i}.png"
        make_image(p, 150, 100, seed=i)
        frames.append(str(p))
    got = process_video(frames, name)
    assert np.array_equal(got.patches, process_video(frames, name, resize=mode).patches)
    assert not np.array_equal(got.patches, process_video(frames, name, resize=other).patches)
