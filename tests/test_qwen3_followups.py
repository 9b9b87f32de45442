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
from tiny_models import build_qwen3_vl, load_model  # noqa: E402


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

@pytest.mark.parametrize("preset", ["qwen3-vl", "qwen3-vl-tf5"])
def test_qwen35_tokenizer_prepare_dataset_collators(tmp_path, tiny_qwen35, preset):
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

    model = load_model(tiny_qwen35)
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


# ------------------------------------------------------------------ 4. the #15 curation scorers on Qwen3-VL

from test_qwen3_vl_scorer import CLIP  # noqa: E402

BOX3 = '[{"bbox_2d": [120, 250, 480, 700], "label": "cat"}]'   # Qwen3-VL: relative 0-1000 JSON
CPU = torch.device("cpu")


def _q3_samples(tmp_path, name="qwen3-vl"):
    from processors.encode import EncodeOptions, encode_sample
    from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart, VideoPart

    p = make_image(tmp_path / "im.png", 120, 90, seed=5)
    img, vid = [MediaRef("image", str(p))], [MediaRef("video", str(CLIP))]
    U, A = "user", "assistant"
    raw = [Sample("g0", [Message(U, [ImagePart(0), TextPart("Locate the cat in the image.")]),
                         Message(A, [TextPart(BOX3)])], images=img),
           Sample("g1", [Message(U, [ImagePart(0), TextPart("What is the animal doing?")]),
                         Message(A, [TextPart("It is sleeping on a sofa.")])], images=img),
           Sample("g2", [Message(U, [TextPart("Tell me a fact about cats.")]),
                         Message(A, [TextPart("Cats sleep for most of the day.")])]),
           Sample("g3", [Message(U, [VideoPart(0), TextPart("What happens in the clip?")]),
                         Message(A, [TextPart("A bar moves to the right.")])], videos=vid)]
    out = []
    for s in raw:
        enc = encode_sample(s, name, options=EncodeOptions(fast_videos=True))
        out.append({"id": enc.id, **enc.arrays(), "meta": enc.meta})
    return out


def _ref(model, row, preset, with_vision=True):
    """Per-sample transformers forward (its own positions from mm_token_type_ids, full logits; without
    vision: the vision blocks stripped)."""
    from test_reward_vlm import _reference

    return _reference(model, row, preset, with_vision)


@pytest.mark.parametrize("name", ["qwen3-vl", "qwen3-vl-tf5"])
def test_q3_candidate_rows_match_per_sample_transformers(tmp_path, tiny_qwen3_vl, name):
    from filters.reward.batching import HostBatch
    from filters.reward.candidates import extend, first_answer, row_logprobs, truncate
    from filters.reward.grounding_scorer import GroundingScorer
    from processors.presets import IM_END_ID, get_preset
    from processors.tokenizer import get_tokenizer

    preset, tok = get_preset(name), get_tokenizer(preset=name)
    samples = _q3_samples(tmp_path, name)
    model = load_model(tiny_qwen3_vl)
    scorer = GroundingScorer(str(tiny_qwen3_vl), batch_tokens=600)   # small budget: several batches
    scorer.setup(CPU)
    texts = ("Yes.", "A cat is sleeping on the red sofa.")
    rows = []
    for s in samples:
        start, _ = first_answer(s)
        rows += [extend(truncate(s, start), tok.encode(t) + [IM_END_ID], preset) for t in texts]
    batch = HostBatch(samples, preset)
    got, counts = row_logprobs(scorer.vlm, rows, batch, 600)
    np.testing.assert_allclose(got, [_ref(model, r, preset) for r in rows], rtol=0, atol=1e-4)
    assert counts.tolist() == [len(tok.encode(t)) + 1 for _ in samples for t in texts]
    got_t, _ = row_logprobs(scorer.vlm, rows, batch, 600, with_vision=False)
    np.testing.assert_allclose(got_t, [_ref(model, r, preset, False) for r in rows], rtol=0, atol=1e-4)


def test_q3_grounding_signal(tmp_path, tiny_qwen3_vl):
    from filters.reward.batching import HostBatch
    from filters.reward.candidates import extend, first_answer, truncate
    from filters.reward.grounding_scorer import GroundingScorer, perturbed_answers
    from processors.presets import IM_END_ID, get_preset
    from processors.tokenizer import get_tokenizer

    preset, tok = get_preset("qwen3-vl"), get_tokenizer(preset="qwen3-vl")
    samples = _q3_samples(tmp_path)
    model = load_model(tiny_qwen3_vl)
    scorer = GroundingScorer(str(tiny_qwen3_vl))
    scorer.setup(CPU)
    out = scorer.score(HostBatch(samples, preset))
    assert np.isnan(out["grounding.box_margin"][1:]).all() and not np.isnan(out["grounding.box_margin"][0])
    s = samples[0]
    start, end = first_answer(s)
    text = tok.decode(s["input_ids"][start:end].tolist())
    assert text == BOX3
    alts = perturbed_answers(text, preset.grounding, (1000, 1000))   # relative: the limits are 1000
    assert len(alts) == 6 and '[{"bbox_2d": [0, 250, 300, 700], "label": "cat"}]' in alts
    totals = [_ref(model, extend(truncate(s, start), tok.encode(t) + [IM_END_ID], preset), preset)
              * (len(tok.encode(t)) + 1) for t in [text, *alts]]
    assert out["grounding.box_margin"][0] == pytest.approx(totals[0] - max(totals[1:]), abs=2e-3)
    assert out["grounding.box_rank"][0] == pytest.approx(np.mean(np.array(totals[1:]) < totals[0]))


@pytest.mark.parametrize("name", ["qwen3-vl", "qwen3-vl-tf5"])
def test_q3_query_signal_leaves_out_the_timestamps(tmp_path, tiny_qwen3_vl, name):
    from filters.reward.batching import HostBatch
    from filters.reward.candidates import first_answer, truncate
    from filters.reward.query_scorer import QueryScorer, question_mask
    from processors.presets import get_preset
    from processors.tokenizer import get_tokenizer

    preset, tok = get_preset(name), get_tokenizer(preset=name)
    samples = _q3_samples(tmp_path, name)
    model = load_model(tiny_qwen3_vl)
    scorer = QueryScorer(str(tiny_qwen3_vl))
    scorer.setup(CPU)
    out = scorer.score(HostBatch(samples, preset))
    user = tok.encode("user")[0]
    for i, s in enumerate(samples):
        prompt = truncate(s, first_answer(s)[0])
        mask = question_mask(np.asarray(prompt["input_ids"]), user, tok)
        q = tok.decode(np.asarray(prompt["input_ids"])[mask].tolist())
        assert q == ["Locate the cat in the image.", "What is the animal doing?", "Tell me a fact about cats.",
                     "What happens in the clip?"][i]
        row = {**prompt, "labels": np.where(mask, prompt["input_ids"], -100)}
        assert out["query.logprob"][i] == pytest.approx(_ref(model, row, preset), abs=1e-4)
        if i == 2:
            assert np.isnan(out["query.visual_relevance"][i])
        else:
            want = _ref(model, row, preset) - _ref(model, row, preset, False)
            assert out["query.visual_relevance"][i] == pytest.approx(want, abs=2e-4)


def test_q3_vlm_category_tagger(tmp_path, tiny_qwen3_vl):
    from filters.reward.batching import HostBatch
    from filters.reward.candidates import first_answer, truncate
    from filters.reward.taxonomy import load_taxonomy
    from filters.reward.vlm_category import VLMCategoryScorer
    from processors.presets import get_preset
    from processors.tokenizer import get_tokenizer

    preset, tok = get_preset("qwen3-vl"), get_tokenizer(preset="qwen3-vl")
    samples = [s for s in _q3_samples(tmp_path) if s["id"] in ("g1", "g3")]   # an image, a video with timestamps
    model = load_model(tiny_qwen3_vl)
    tax = load_taxonomy()
    scorer = VLMCategoryScorer(str(tiny_qwen3_vl), batch_tokens=4096)
    scorer.setup(CPU)
    out = scorer.score(HostBatch(samples, preset))
    assert set(out) == set(scorer.columns())
    coarse = [(c.name, c.description) for c in tax.coarse]
    for i, s in enumerate(samples):
        _, end = first_answer(s)
        rows = scorer.rows_for(truncate(s, end + 1), tok, coarse, preset)
        totals = [_ref(model, r, preset) * (len(tok.encode(n)) + 1) for r, (n, _) in zip(rows, coarse)]
        assert out["vlm_category.coarse"][i] == coarse[int(np.argmax(totals))][0]
        p = np.exp(np.array(totals) - max(totals))
        assert out["vlm_category.coarse_confidence"][i] == pytest.approx(p.max() / p.sum(), abs=1e-3)
        assert tax.parent(out["vlm_category.fine"][i]) == out["vlm_category.coarse"][i]
        assert 0 < out["vlm_category.confidence"][i] <= out["vlm_category.coarse_confidence"][i]


def test_q3_verify_generates_what_per_sample_generate_does(tmp_path):
    from filters.reward.batching import HostBatch
    from filters.reward.verify import VerifyScorer, split_prompt
    from processors.presets import ENDOFTEXT_ID, IM_END_ID, get_preset
    from processors.tokenizer import get_tokenizer
    from reference_forward import reference_generate

    preset, tok = get_preset("qwen3-vl"), get_tokenizer(preset="qwen3-vl")
    model = load_model(build_qwen3_vl(tmp_path / "m", varied=True))
    samples = _q3_samples(tmp_path)
    want = []
    for s in samples:   # one prompt at a time, no padding, transformers' own positions
        row = reference_generate(model, split_prompt(s)[0], preset, max_new_tokens=6, stop=[IM_END_ID, ENDOFTEXT_ID],
                                 pad=ENDOFTEXT_ID, suppress=list(range(tok.vocab_size, model.config.text_config.vocab_size)))
        want.append(tok.decode(row).strip())
    assert len(set(want)) > 1            # the answers depend on the input
    scorer = VerifyScorer(str(tmp_path / "m"), max_new_tokens=6)
    scorer.setup(CPU)
    out = scorer.score(HostBatch(samples, preset))
    assert list(out["verify.answer"]) == want
    assert list(out["verify.kind"])[0] == "box" and set(out["verify.kind"][1:]) <= {"text", "choice", "number"}
    assert ((out["verify.match"] == 0) | np.isnan(out["verify.match"])).all()   # random answers confirm nothing
