"""Issue #13 follow-up: the `text` and `category` scorers find chat turns, vision blocks and media with
the ids of the tokenizer the shards were prepared with (processors.tokenizer.special_ids through
protocol.vocab_for), and leave Qwen3-VL's `<t seconds>` video timestamps out of the user's text.

One corpus (image, video, text-only, image + video, a two-turn conversation) is prepared as
qwen2.5-vl, as qwen3-vl (built-in Qwen3 ranks) and as qwen3-vl / qwen3-vl-tf5 with a Qwen3.5-style
248k tokenizer folder. Every OUT yields the same (question, answer) pairs, the same category text and
media features, equal to the corpus' own strings; `vlprep score --scorers text,category` writes the
same columns for all of them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jobs.cli import main
from media_factory import make_image
from test_qwen3_vl_scorer import CLIP
from test_qwen3_vl_tokenizer import QWEN35_IDS, make_tokenizer_folder

CONVERSATIONS = {   # id -> ([(user, answer), ...], media); the user text as written, `<image>`/`<video>` marks
    "img": ([("<image>What colour is the gradient?", "It goes from dark blue to light green.")], "i"),
    "vid": ([("<video>What happens in the clip?", "A white bar moves to the right.")], "v"),
    "txt": ([("Tell me a fact about cats.", "Cats sleep for most of the day.")], ""),
    "both": ([("Compare <image> with <video> please.", "Both show a smooth colour ramp.")], "iv"),
    "two": ([("<image>Is it bright?", "Yes, mostly."), ("And the <video>?", "Darker, with a moving bar.")], "iv"),
}
EXPECTED_PAIRS = {k: [(u.replace("<image>", "").replace("<video>", "").strip(), a)
                      for u, a in turns] for k, (turns, _) in CONVERSATIONS.items()}
SETUPS = [("qwen2.5-vl", False), ("qwen3-vl", False), ("qwen3-vl", True), ("qwen3-vl-tf5", True)]


def _prepare(root: Path, preset: str, with_248k: bool) -> tuple[Path, Path | None]:
    root.mkdir(parents=True)
    make_image(root / "im.png", 120, 90, seed=5)
    shutil.copy(CLIP, root / "clip.mp4")
    lines = []
    for sid, (turns, media) in CONVERSATIONS.items():
        msgs = [m for u, a in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
        rec = {"id": sid, "messages": msgs}
        if "i" in media:
            rec["images"] = ["im.png"]
        if "v" in media:
            rec["videos"] = ["clip.mp4"]
        lines.append(json.dumps(rec))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    tok_dir = make_tokenizer_folder(root / "tok") if with_248k else None
    tok_line = f"tokenizer: {tok_dir}\n" if tok_dir else ""
    (root / "job.yaml").write_text(f"sources:\n  - path: data.jsonl\npreset: {preset}\n{tok_line}")
    out = root / "out"
    assert main(["prepare", str(root / "job.yaml"), "--out", str(out), "--executor", "local", "--no-progress"]) == 0
    return out, tok_dir


@pytest.fixture(scope="module")
def outs(tmp_path_factory):
    """{(preset, with_248k): (OUT, tokenizer folder or None)}"""
    base = tmp_path_factory.mktemp("q3_text")
    return {(p, t): _prepare(base / f"{p}-{int(t)}", p, t) for p, t in SETUPS}


def _batch(out: Path, preset: str):
    from filters.reward.batching import HostBatch
    from pipeline.loader import ShardLoader
    from processors.presets import get_preset

    loader = ShardLoader(out)
    samples = sorted((s for sh in loader.shards() for s in loader.iter_shard(sh)), key=lambda s: s["id"])
    return HostBatch(samples, get_preset(preset))


def _key(sample) -> str:
    """The corpus id of a prepared sample (vlprep keeps the record's `id` in its own id or meta)."""
    for k in CONVERSATIONS:
        if sample["id"] == k or sample["id"].endswith(k) or sample.get("meta", {}).get("source_id") == k:
            return k
    raise AssertionError(f"no corpus id in {sample['id']!r}")


@pytest.mark.parametrize("preset,with_248k", SETUPS)
def test_same_turns_and_features_for_every_tokenizer(outs, preset, with_248k):
    from filters.reward.category_scorer import CategoryScorer
    from filters.reward.text_scorer import TextScorer

    out, tok_dir = outs[(preset, with_248k)]
    batch = _batch(out, preset)
    assert len(batch) == len(CONVERSATIONS)
    if with_248k:   # the shards hold Qwen3.5's ids, none of Qwen2's
        for s in batch.samples:
            assert not np.isin(s["input_ids"], [151643, 151644, 151645, 151652, 151653, 151655, 151656]).any()
            assert np.isin(s["input_ids"], [QWEN35_IDS["<|im_start|>"]]).any()
    vid = next(s for s in batch.samples if _key(s) == "vid")
    from processors.tokenizer import get_tokenizer

    raw = get_tokenizer(tok_dir, preset=preset) if tok_dir else get_tokenizer(preset=preset)
    assert ("seconds>" in raw.decode(vid["input_ids"])) == preset.startswith("qwen3")   # timestamps are there

    text = TextScorer(tokenizer=str(tok_dir) if tok_dir else None)
    pairs = dict(zip(map(_key, batch.samples), text.pairs(batch)))
    assert pairs == EXPECTED_PAIRS

    cat = CategoryScorer(tokenizer=str(tok_dir) if tok_dir else None)
    texts, feats = cat.texts(batch)
    got = dict(zip(map(_key, batch.samples), zip(texts, feats)))
    for k, (turns, media) in CONVERSATIONS.items():
        q, a = EXPECTED_PAIRS[k][0]
        want = {"i": {"image"}, "v": {"video"}, "": {"text_only"}, "iv": {"image", "video"}}[media]
        assert got[k] == (f"{q}\n{a}", want), k


def test_a_tokenizer_object_works_as_a_folder_does(outs):
    from filters.reward.text_scorer import TextScorer
    from processors.tokenizer import get_tokenizer

    out, tok_dir = outs[("qwen3-vl", True)]
    batch = _batch(out, "qwen3-vl")
    assert TextScorer(tokenizer=get_tokenizer(tok_dir)).pairs(batch) == TextScorer(tokenizer=str(tok_dir)).pairs(batch)


def test_built_in_ids_do_not_read_248k_shards(outs):
    """The shards' own tokenizer is what makes the turns readable: the built-in Qwen2 ids find none."""
    from filters.reward.text_scorer import conversation_turns
    from processors.tokenizer import get_tokenizer, special_ids

    out, tok_dir = outs[("qwen3-vl", True)]
    s = _batch(out, "qwen3-vl").samples[0]
    tok = get_tokenizer(tok_dir)
    assert conversation_turns(s["input_ids"], tok) == []
    assert [r for r, _ in conversation_turns(s["input_ids"], tok, special_ids(tok, "qwen3-vl"))][-2:] == [
        "user", "assistant"]


def test_score_cli_writes_the_same_columns(outs):
    import pyarrow.parquet as pq

    got = {}
    for setup, (out, _) in outs.items():
        assert main(["score", str(out), "--scorers", "text,category", "--device", "cpu", "--executor", "local"]) == 0
        rows = [r for f in sorted((out / "scores").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
        got[setup] = {_key({"id": r["id"]}): r for r in rows}
    ref = got[("qwen2.5-vl", False)]
    assert set(ref) == set(CONVERSATIONS)
    assert all(np.isfinite(ref[k]["text.qa_relevance"]) for k in ref)
    for setup, rows in got.items():
        assert set(rows) == set(ref), setup
        for k, r in rows.items():
            for col in ("text.qa_relevance", "text.informativeness", "text.lexical_diversity",
                        "category.confidence", "category.coarse_confidence"):
                assert r[col] == pytest.approx(ref[k][col], abs=1e-5), (setup, k, col)
            assert (r["category.coarse"], r["category.fine"]) == (ref[k]["category.coarse"], ref[k]["category.fine"])
