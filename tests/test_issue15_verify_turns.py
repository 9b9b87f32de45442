"""#15 verify: every supervised turn of a multi-turn sample is answered and checked.

Each turn's reference is what the tiny checkpoint itself answers to that turn's prompt (the
conversation up to it, earlier *reference* answers as history: teacher forcing), computed one turn at
a time with a plain transformers `generate`; one turn of one sample gets a wrong reference. `vlprep
verify` must reproduce every turn's answer token for token, confirm the right ones, and report per
sample match = all turns confirmed, turns / turns_matched, and the per-turn detail as JSON."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from filters.reward.answer_check import normalize_text
from filters.reward.verify import answer_spans, split_prompt, split_turns
from issue15_verify_fixtures import (NEW_TOKENS, as_sample, build_model, encode_conversation, frames, greedy,
                                     scores, write_out)
from jobs.cli import main
from processors.presets import get_preset
from processors.tokenizer import get_tokenizer, special_ids

WRONG = "It is definitely a bright green colour."


def _side(family):
    return 32 if family == "qwen3-vl" else 28


def conversations(family):
    """[(id, questions, media, wrong turn or None)]"""
    s = _side(family)
    convs = [
        ("m0", ["What is in the picture?", "And in this one?"],
         dict(images={0: frames(2 * s, 3 * s, 1), 1: frames(2 * s, 2 * s, 7)}), None),
        ("m1", ["Describe the image.", "What colour is the car?", "How many wheels?"],
         dict(images={0: frames(3 * s, 2 * s, 3)}), 1),
        ("s0", ["Tell me something about the weather."], {}, None),
    ]
    if family != "qwen3-vl":  # Qwen3-VL video needs timestamps, beyond this test
        convs.append(("v0", ["What happens in the clip?", "Is it outdoors?"],
                      dict(videos={0: [np.stack(frames(2 * s, 2 * s, 11, n=4))]}, secs=[1.0]), None))
    return convs


def build(family, model):
    """EncodedSamples whose references are the model's own per-turn answers (one wrong), and those answers."""
    preset = get_preset(family)
    tok = get_tokenizer(preset=preset)
    sp = special_ids(tok, preset)
    encoded, want = [], {}
    for sid, questions, media, wrong in conversations(family):
        answers = []
        for k in range(len(questions)):
            draft = answers + ["placeholder"] * (len(questions) - len(answers))
            enc = encode_conversation(sid, list(zip(questions, draft)), preset=family, **media)
            prompt, _ = split_turns(as_sample(enc), sp)[k]
            ans = tok.decode(greedy(model, prompt, preset, sp)).strip()
            answers.append(WRONG if k == wrong else ans)
            want.setdefault(sid, []).append(ans)
        encoded.append(encode_conversation(sid, list(zip(questions, answers)), preset=family, **media))
    return encoded, want


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_every_turn_is_verified(tmp_path, family, capsys):
    ckpt = tmp_path / "ckpt"
    model = build_model(family, ckpt)
    encoded, want = build(family, model)
    flat = [a for v in want.values() for a in v]
    assert all(normalize_text(a) and "<|" not in a for a in flat), flat  # checkable, plain text answers
    assert len(set(flat)) >= 4, flat  # answers depend on the prompt
    out = write_out(tmp_path / "out", family, {"u0000": encoded[:2], "u0001": encoded[2:]})
    assert main(["verify", str(out), "--model", str(ckpt), "--max-new-tokens", str(NEW_TOKENS),
                 "--device", "cpu", "--engine", "transformers", "--batch-tokens", "100000"]) == 0
    assert "engine: transformers" in capsys.readouterr().out
    got = scores(out)
    for sid, answers in want.items():
        r = got[sid]
        per_turn = json.loads(r["verify.answers"])
        assert [t["turn"] for t in per_turn] == list(range(len(answers)))
        assert [t["answer"] for t in per_turn] == answers, sid  # batched == per-turn generation
        assert r["verify.answer"] == answers[0]
        assert r["verify.turns"] == len(answers)
    assert got["m1"]["verify.match"] == 0.0 and got["m1"]["verify.turns_matched"] == 2
    assert [t["match"] for t in json.loads(got["m1"]["verify.answers"])] == [True, False, True]
    for sid in set(want) - {"m1"}:
        assert got[sid]["verify.match"] == 1.0 and got[sid]["verify.turns_matched"] == got[sid]["verify.turns"]
    assert {r["verify.kind"] for r in got.values()} == {"text"}
    import pyarrow as pa

    from pipeline.report.prepared import category_stats

    table = pa.concat_tables([pq.read_table(f) for f in sorted((out / "scores").glob("*.parquet"))])
    assert set(category_stats(table, pq.read_table(out / "manifest.parquet"))) == {"verify.kind"}  # no free text

    # select keeps the samples whose every answer is confirmed, or by the number confirmed
    assert main(["select", str(out), "--rule", "verify.match == 1"]) == 0

    kept = set(pq.read_table(out / "selection" / "manifest.parquet").column("id").to_pylist())
    assert kept == set(want) - {"m1"}
    assert main(["select", str(out), "--rule", "verify.turns_matched >= 2"]) == 0
    kept = set(pq.read_table(out / "selection" / "manifest.parquet").column("id").to_pylist())
    assert kept == {k for k, v in want.items() if len(v) >= 2}


def test_turn_spans_and_prompts():
    """Spans end at each answer's <|im_end|>; turn k's prompt holds the earlier answers and only the
    vision items placed before turn k."""
    family = "qwen2.5-vl"
    tok = get_tokenizer(preset=get_preset(family))
    enc = encode_conversation("m", [("first?", "one"), ("second?", "two two"), ("third?", "3")], preset=family,
                              images={0: frames(56, 56, 0), 2: frames(56, 84, 1)})
    s = as_sample(enc)
    spans = answer_spans(s)
    assert [tok.decode(s["input_ids"][a:b].tolist()) for a, b in spans] == ["one", "two two", "3"]
    turns = split_turns(s)
    assert [len(p["image_grid_thw"]) for p, _ in turns] == [1, 1, 2]
    assert tok.decode(turns[1][0]["input_ids"].tolist()).endswith("one<|im_end|>\n<|im_start|>user\nsecond?"
                                                                 "<|im_end|>\n<|im_start|>assistant\n")
    p2 = turns[2][0]
    assert len(p2["pixel_values"]) == int(np.prod(p2["image_grid_thw"], axis=1).sum())
    first = split_prompt(s)
    np.testing.assert_array_equal(first[0]["input_ids"], turns[0][0]["input_ids"])
    assert split_prompt({**s, "labels": np.full(len(s["labels"]), -100)}) is None


def test_turns_with_qwen35_special_ids(tmp_path):
    """A 248k-vocabulary (Qwen3.5) tokenizer: turn boundaries come from its SpecialIds; the Qwen2 ids
    find no <|im_end|> there (so the Qwen2 default would run each reference to the end of the row)."""
    from test_qwen3_vl_tokenizer import QWEN35_IDS, make_tokenizer_folder

    tok = get_tokenizer(str(make_tokenizer_folder(tmp_path / "tok")), preset=get_preset("qwen3-vl"))
    sp = special_ids(tok, "qwen3-vl")
    assert sp.im_end == QWEN35_IDS["<|im_end|>"] and sp.image_pad == QWEN35_IDS["<|image_pad|>"]
    enc = encode_conversation("q", [("Which animal?", "A cat."), ("What colour is it?", "Grey.")], preset="qwen3-vl",
                              tokenizer=tok, images={0: frames(64, 64, 0), 1: frames(64, 96, 1)})
    s = as_sample(enc)
    turns = split_turns(s, sp)
    assert [tok.decode(ref.tolist()) for _, ref in turns] == ["A cat.", "Grey."]
    assert [len(p["image_grid_thw"]) for p, _ in turns] == [1, 2]
    assert [int((p["input_ids"] == sp.image_pad).sum()) for p, _ in turns] == \
        [int(np.prod(s["image_grid_thw"][0])) // 4, int(np.prod(s["image_grid_thw"], axis=1).sum()) // 4]
    assert not (s["input_ids"] == 151645).any()  # Qwen2's <|im_end|> id is not in these shards
    wrong = [tok.decode(ref.tolist()) for _, ref in split_turns(s)]  # Qwen2 ids: references run to the row's end
    assert wrong[0] != "A cat."


def test_multi_turn_generation_with_qwen35_tokenizer(tmp_path, tiny_qwen35_varied):
    """Shards written with a 248k-vocabulary tokenizer: VerifyScorer splits the turns with its ids,
    generates every turn's answer token for token as the per-turn transformers path does (stop ids
    <|im_end|> / <|endoftext|> of that vocabulary), and reports one entry per turn."""
    import torch

    from filters.reward.batching import HostBatch
    from filters.reward.protocol import vocab_for
    from filters.reward.verify import Turn, VerifyScorer
    from test_qwen3_vl_tokenizer import make_tokenizer_folder
    from tiny_models import load_model

    preset = get_preset("qwen3-vl")
    tok_dir = make_tokenizer_folder(tmp_path / "tok")
    tok = get_tokenizer(str(tok_dir), preset=preset)
    sp = special_ids(tok, preset)
    enc = [encode_conversation("q0", [("Which animal?", "A cat."), ("What colour is it?", "Grey.")], preset="qwen3-vl",
                               tokenizer=tok, images={0: frames(64, 64, 0), 1: frames(64, 96, 1)}),
           encode_conversation("q1", [("Say hi.", "Hi."), ("Again?", "Hi again."), ("Done?", "Yes.")],
                               preset="qwen3-vl", tokenizer=tok)]
    samples = [as_sample(e) for e in enc]
    model = load_model(tiny_qwen35_varied)
    top = vocab_for(str(tok_dir), preset).top()
    scorer = VerifyScorer(str(tiny_qwen35_varied), max_new_tokens=NEW_TOKENS, tokenizer=str(tok_dir),
                          engine="transformers")
    scorer.setup(torch.device("cpu"))
    batch = HostBatch(samples, preset)
    turns = [Turn(i, k, p, ref) for i, s in enumerate(samples) for k, (p, ref) in enumerate(split_turns(s, sp))]
    assert [(t.sample, t.turn) for t in turns] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    got, errors = scorer._answers(turns, batch)
    assert not errors
    want = [greedy(model, t.prompt, preset, sp, top=top) for t in turns]
    assert got == want
    assert len({tuple(w) for w in want}) > 1
    out = scorer.score(batch)
    assert out["verify.turns"].tolist() == [2, 3]
    assert [len(json.loads(a)) for a in out["verify.answers"]] == [2, 3]
