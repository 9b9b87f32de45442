"""Issue #13 follow-up: `vlprep score` / `verify` read the shards with the tokenizer OUT was prepared with.

A Qwen3.5-style tokenizer folder (248k vocabulary, <|vision_start|> 248053, <|image_pad|> 248056, …,
<|endoftext|> 248044; byte-level, so 'user' is four tokens) goes through `vlprep prepare` →
`vlprep score --scorers vlm,grounding,query` and `vlprep verify` with a tiny Qwen3-VL of vocabulary
248 320 whose vision ids are Qwen3.5's. Every value equals the per-sample transformers path (one
sample, its own positions from mm_token_type_ids, full logits, log_softmax), and the reference here
finds vision blocks / turns with the Qwen3.5 ids written out, not with vlprep's helpers. A job.json
tokenizer that is gone is one line naming `--tokenizer`, and `--tokenizer` then scores the same."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jobs.cli import main  # noqa: E402
from media_factory import make_image  # noqa: E402
from reference_forward import reference_generate, reference_mean_logprob  # noqa: E402
from test_qwen3_vl_scorer import CLIP  # noqa: E402
from test_qwen3_vl_tokenizer import QWEN35_IDS, make_tokenizer_folder  # noqa: E402
from tiny_models import load_model  # noqa: E402

BOX3 = '[{"bbox_2d": [120, 250, 480, 700], "label": "cat"}]'
V_START, V_END = QWEN35_IDS["<|vision_start|>"], QWEN35_IDS["<|vision_end|>"]
IMG, VID = QWEN35_IDS["<|image_pad|>"], QWEN35_IDS["<|video_pad|>"]
IM_START, IM_END, EOT = QWEN35_IDS["<|im_start|>"], QWEN35_IDS["<|im_end|>"], QWEN35_IDS["<|endoftext|>"]
QWEN2_SPECIAL = [151643, 151644, 151645, 151652, 151653, 151655, 151656]


def _prepare(root: Path, preset: str = "qwen3-vl") -> tuple[Path, Path]:
    """(OUT, tokenizer folder): four samples (box answer on an image, image question, text only, video)."""
    root.mkdir(parents=True)
    tok_dir = make_tokenizer_folder(root / "tok")
    make_image(root / "im.png", 120, 90, seed=5)
    shutil.copy(CLIP, root / "clip.mp4")

    def rec(user, answer, **media):
        return json.dumps({"messages": [{"role": "user", "content": user},
                                        {"role": "assistant", "content": answer}], **media})

    lines = [rec("<image>Locate the cat in the image.", BOX3, images=["im.png"]),
             rec("<image>What is the animal doing?", "It is sleeping on a sofa.", images=["im.png"]),
             rec("Tell me a fact about cats.", "Cats sleep a lot."),
             rec("<video>What happens in the clip?", "A bar moves.", videos=["clip.mp4"])]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    (root / "job.yaml").write_text(f"sources:\n  - path: data.jsonl\npreset: {preset}\ntokenizer: {tok_dir}\n")
    out = root / "out"
    assert main(["prepare", str(root / "job.yaml"), "--out", str(out), "--executor", "local", "--no-progress"]) == 0
    return out, tok_dir


def _samples(out: Path) -> list[dict]:
    from pipeline.loader import ShardLoader

    loader = ShardLoader(out)
    return [s for sh in loader.shards() for s in loader.iter_shard(sh)]


def _scores(out: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    rows = {}
    for f in sorted((out / "scores").glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            rows[r["id"]] = r
    return rows


def _generate(model, s, preset, ids, top: int) -> list[int]:
    """Greedy ids for one prompt (tests/reference_forward.py), vision found by the Qwen3.5 ids written
    out, stopping at Qwen3.5's <|im_end|> / <|endoftext|>, rows above the tokenizer's ids suppressed."""
    return reference_generate(model, s, preset, ids, max_new_tokens=6, stop=[IM_END, EOT], pad=EOT,
                              suppress=list(range(top, 248320)), image_pad=IMG, video_pad=VID)


def _no_vision(ids, labels):
    """ids/labels with every Qwen3.5 <|vision_start|> … <|vision_end|> block dropped (written out here)."""
    keep, depth = [], 0
    for t in ids:
        if t == V_START:
            depth += 1
        keep.append(depth == 0)
        if t == V_END:
            depth -= 1
    keep = np.array(keep)
    return np.asarray(ids)[keep], np.asarray(labels)[keep]


def _ref(model, s, preset, with_vision=True):
    """Mean log-prob of the supervised tokens and their count: one sample, transformers' positions, full
    logits (tests/reference_forward.py) with the Qwen3.5 vision ids."""
    ids, labels = (s["input_ids"], s["labels"]) if with_vision else _no_vision(s["input_ids"], s["labels"])
    mean = reference_mean_logprob(model, s, preset, input_ids=ids, labels=labels, vision=with_vision,
                                  image_pad=IMG, video_pad=VID)
    return mean, int((np.asarray(labels[1:]) != -100).sum())


def _first_answer(s):
    labels, ids = np.asarray(s["labels"]), np.asarray(s["input_ids"])
    a = int(np.flatnonzero(labels != -100)[0])
    return a, a + int(np.flatnonzero(ids[a:] == IM_END)[0])


def _question(ids, tok):
    """Mask of the last user turn's text before the first answer: vision blocks out, and the Qwen3-VL
    `<t seconds>` text out (this toy tokenizer has no merges: one ASCII character per token)."""
    user = tok.encode("user\n")
    starts = [i for i in np.flatnonzero(ids == IM_START) if ids[i + 1:i + 1 + len(user)].tolist() == user]
    a = int(starts[-1]) + 1 + len(user)
    b = a + int(np.flatnonzero(ids[a:] == IM_END)[0])
    mask = np.zeros(len(ids), bool)
    mask[a:b] = True
    depth = 0
    for k, t in enumerate(ids):
        if t == V_START:
            depth += 1
        if depth:
            mask[k] = False
        if t == V_END:
            depth -= 1
    pos = np.flatnonzero(mask)
    chars = "".join(tok.decode([int(ids[p])]) for p in pos)
    assert len(chars) == len(pos)
    for m in re.finditer(r"\s?<\d+(?:\.\d+)? seconds>", chars):
        mask[pos[m.start():m.end()]] = False
    return mask


@pytest.mark.parametrize("name", ["qwen3-vl", "qwen3-vl-tf5"])
def test_score_reads_the_shards_with_their_tokenizer(tmp_path, tiny_qwen35, name):  # noqa: F811
    from filters.reward.candidates import extend, truncate
    from filters.reward.grounding_scorer import perturbed_answers
    from processors.presets import get_preset
    from processors.tokenizer import get_tokenizer, special_ids

    preset = get_preset(name)
    out, tok_dir = _prepare(tmp_path / "raw", name)
    samples = _samples(out)
    for s in samples:
        assert not np.isin(s["input_ids"], QWEN2_SPECIAL).any()
    rc = main(["score", str(out), "--model", str(tiny_qwen35), "--scorers", "vlm,grounding,query",
               "--device", "cpu", "--executor", "local", "--batch-tokens", "2048", "--max-padding", "0.9"])
    assert rc == 0
    got = _scores(out)
    assert set(got) == {s["id"] for s in samples}
    model, tok = load_model(tiny_qwen35), get_tokenizer(tok_dir)
    sp = special_ids(tok, preset)
    for s in samples:
        g = got[s["id"]]
        vis = bool(np.isin(s["input_ids"], [IMG, VID]).any())
        lp, _ = _ref(model, s, preset)
        assert g["vlm.mean_logprob"] == pytest.approx(lp, abs=1e-4)
        if vis:
            text_lp, _ = _ref(model, s, preset, with_vision=False)
            assert g["vlm.text_only_logprob"] == pytest.approx(text_lp, abs=1e-4)
            assert g["vlm.visual_gain"] == pytest.approx(lp - text_lp, abs=1e-4)
            assert abs(g["vlm.visual_gain"]) > 1e-6
        else:
            assert np.isnan(g["vlm.visual_gain"]) and g["vlm.text_only_logprob"] == g["vlm.mean_logprob"]

        # query: the question's tokens, found with the Qwen3.5 ids ('user' is four byte tokens here)
        start, end = _first_answer(s)
        prompt = truncate(s, start, sp)
        mask = _question(np.asarray(prompt["input_ids"]), tok)
        assert tok.decode(np.asarray(prompt["input_ids"])[mask].tolist()) in (
            "Locate the cat in the image.", "What is the animal doing?", "Tell me a fact about cats.",
            "What happens in the clip?")
        row = {**prompt, "labels": np.where(mask, prompt["input_ids"], -100)}
        q_lp, _ = _ref(model, row, preset)
        assert g["query.logprob"] == pytest.approx(q_lp, abs=1e-4)
        if vis:
            assert g["query.visual_relevance"] == pytest.approx(q_lp - _ref(model, row, preset, False)[0], abs=1e-4)
        else:
            assert np.isnan(g["query.visual_relevance"])

        # grounding: the given box against its perturbations, each row's summed log-prob by transformers
        answer = tok.decode(np.asarray(s["input_ids"])[start:end].tolist())
        alts = perturbed_answers(answer, preset.grounding, (1000, 1000))
        if answer != BOX3:
            assert alts == [] and np.isnan(g["grounding.box_margin"])
            continue
        assert len(alts) == 6
        totals = []
        for t in [answer, *alts]:
            mean, n = _ref(model, extend(prompt, tok.encode(t) + [IM_END], preset, special=sp), preset)
            assert n == len(tok.encode(t)) + 1
            totals.append(mean * n)
        assert g["grounding.box_margin"] == pytest.approx(totals[0] - max(totals[1:]), abs=1e-4 * len(answer))
        assert g["grounding.box_rank"] == pytest.approx(np.mean(np.array(totals[1:]) < totals[0]))


def test_a_missing_shard_tokenizer_is_one_line_and_tokenizer_flag_replaces_it(tmp_path, tiny_qwen35, capsys):  # noqa: F811
    out, tok_dir = _prepare(tmp_path / "raw")
    moved = tmp_path / "elsewhere"
    shutil.move(str(tok_dir), moved)
    capsys.readouterr()
    for cmd in (["score", str(out), "--model", str(tiny_qwen35), "--scorers", "vlm", "--device", "cpu"],
                ["verify", str(out), "--model", str(tiny_qwen35), "--device", "cpu"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "job.json `tokenizer:` names" in err[0] and "--tokenizer PATH" in err[0], err
        assert err[0].startswith(f"vlprep {cmd[0]}:")
    assert main(["score", str(out), "--model", str(tiny_qwen35), "--scorers", "vlm", "--device", "cpu",
                 "--tokenizer", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tokenizer names" in err[0], err
    assert main(["score", str(out), "--model", str(tiny_qwen35), "--scorers", "vlm", "--device", "cpu",
                 "--executor", "local", "--tokenizer", str(moved)]) == 0
    shutil.move(str(moved), tok_dir)   # the job's own folder back: the same values, read from job.json
    first = _scores(out)
    assert main(["score", str(out), "--model", str(tiny_qwen35), "--scorers", "vlm", "--device", "cpu",
                 "--executor", "local", "--overwrite"]) == 0
    again = _scores(out)
    for k, r in first.items():
        assert r["vlm.mean_logprob"] == pytest.approx(again[k]["vlm.mean_logprob"], abs=1e-9)


def test_verify_generates_with_the_shards_tokenizer(tmp_path, tiny_qwen35_varied):
    from processors.presets import get_preset
    from processors.tokenizer import get_tokenizer

    preset = get_preset("qwen3-vl")
    out, tok_dir = _prepare(tmp_path / "raw")
    tok = get_tokenizer(tok_dir)
    model = load_model(tiny_qwen35_varied)
    top = max(tok.vocab_size, *(i + 1 for i in QWEN35_IDS.values()))
    want, want_ids = {}, {}
    for s in _samples(out):   # one prompt at a time, no padding, transformers' own positions
        start, _ = _first_answer(s)
        ids = np.asarray(s["input_ids"])[:start]
        if np.isin(ids, [IMG, VID]).sum() != np.isin(s["input_ids"], [IMG, VID]).sum():
            pytest.fail("these samples hold all their vision before the answer")
        want_ids[s["id"]] = _generate(model, s, preset, ids, top)
        want[s["id"]] = tok.decode(want_ids[s["id"]]).strip()
    assert len({tuple(v) for v in want_ids.values()}) > 1      # the answers depend on the input
    assert all(t < top for v in want_ids.values() for t in v)
    assert main(["verify", str(out), "--model", str(tiny_qwen35_varied), "--max-new-tokens", "6",
                 "--device", "cpu"]) == 0
    got = _scores(out)
    assert {k: r["verify.answer"] for k, r in got.items()} == want
    kinds = {k: r["verify.kind"] for k, r in got.items()}
    assert sorted(kinds.values()).count("box") == 1   # the reference read with the Qwen3.5 ids: BOX3 is a box


def test_verify_scorer_generates_the_reference_ids(tmp_path, tiny_qwen35_varied):
    """The token ids (not only their text: most of this toy vocabulary decodes to nothing)."""
    from filters.reward.batching import HostBatch
    from filters.reward.verify import VerifyScorer, split_prompt
    from processors.presets import get_preset
    from processors.tokenizer import get_tokenizer, special_ids

    preset = get_preset("qwen3-vl")
    out, tok_dir = _prepare(tmp_path / "raw")
    sp = special_ids(get_tokenizer(tok_dir), preset)
    samples = _samples(out)
    model = load_model(tiny_qwen35_varied)
    top = max(get_tokenizer(tok_dir).vocab_size, *(i + 1 for i in QWEN35_IDS.values()))
    scorer = VerifyScorer(str(tiny_qwen35_varied), max_new_tokens=6, tokenizer=str(tok_dir))
    scorer.setup(torch.device("cpu"))
    prompts = [split_prompt(s, sp)[0] for s in samples]
    got = scorer.generate(prompts, HostBatch(samples, preset))
    for s, p, g in zip(samples, prompts, got):
        assert g == _generate(model, p, preset, p["input_ids"], top), s["id"]
