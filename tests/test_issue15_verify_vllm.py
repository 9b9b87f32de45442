"""#15 verify --engine: the vLLM path, wired to a test-only `vllm` stand-in (tests/vllm_standin/vllm,
on sys.path only here) that implements the API surface verify calls, as read in vLLM's source, by
running the tiny transformers checkpoint. vLLM itself is not installed here and no GPU is lent: a real
vLLM run is still to be done (docs/curation.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from filters.reward.protocol import ScorerError
from filters.reward.verify import collapse_placeholders, resolve_engine, split_turns, vllm_request
from issue15_verify_fixtures import NEW_TOKENS, as_sample, build_model, encode_conversation, frames, scores, write_out
from jobs.cli import main
from processors.presets import get_preset
from processors.tokenizer import get_tokenizer, special_ids

STANDIN = Path(__file__).parent / "vllm_standin"
CPU, CUDA = SimpleNamespace(type="cpu"), SimpleNamespace(type="cuda")
BOX = {"qwen2-vl": "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(100,200),(400,600)<|box_end|>",
       "qwen2.5-vl": '[{"bbox_2d": [10, 20, 40, 50], "label": "cat"}]',
       "qwen3-vl": '[{"bbox_2d": [100, 200, 400, 600], "label": "cat"}]'}


@pytest.fixture
def standin(monkeypatch):
    """`import vllm` finds the stand-in (and only inside this test)."""
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.syspath_prepend(str(STANDIN))
    import vllm

    vllm.LLM.instances.clear()
    yield vllm
    sys.modules.pop("vllm", None)  # not through monkeypatch: its undo would put the module back


def test_engine_choice_without_vllm():
    import importlib.util

    assert importlib.util.find_spec("vllm") is None  # this machine: no vLLM
    assert resolve_engine("auto", CPU) == "transformers"
    assert resolve_engine("auto", CUDA) == "transformers"
    assert resolve_engine("transformers", CUDA) == "transformers"
    with pytest.raises(ScorerError, match="--engine vllm: the vllm package is not installed"):
        resolve_engine("vllm", CPU)
    with pytest.raises(ScorerError, match="choose from auto, vllm, transformers"):
        resolve_engine("tgi", CPU)


def test_engine_choice_with_vllm(standin):
    assert resolve_engine("auto", CUDA) == "vllm"
    assert resolve_engine("auto", CPU) == "transformers"  # vLLM is the GPU engine; asked for, it runs anywhere
    assert resolve_engine("vllm", CPU) == "vllm"


def _conversations(family, tok):
    s = 32 if family == "qwen3-vl" else 28
    convs = [encode_conversation("a", [("What is in the picture?", "A red car."), ("And here?", "Two dogs.")],
                                 preset=family, images={0: frames(2 * s, 3 * s, 1), 1: frames(2 * s, 2 * s, 5)}),
             encode_conversation("b", [("Locate the cat.", BOX[family])], preset=family,
                                 images={0: frames(3 * s, 2 * s, 2)}),
             encode_conversation("c", [("Tell me about the weather.", "Sunny.")], preset=family)]
    if family != "qwen3-vl":
        convs.append(encode_conversation("v", [("What happens in the clip?", "A ball rolls."), ("Where?", "Inside.")],
                                         preset=family, videos={0: [np.stack(frames(2 * s, 2 * s, 9, n=3))]},
                                         secs=[0.5]))
    return convs


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_vllm_path_equals_transformers_path(tmp_path, family, standin, capsys):
    ckpt = tmp_path / "ckpt"
    build_model(family, ckpt)
    preset = get_preset(family)
    tok = get_tokenizer(preset=preset)
    sp = special_ids(tok, preset)
    enc = _conversations(family, tok)
    out = write_out(tmp_path / "out", family, {"u0000": enc[:2], "u0001": enc[2:]})
    args = ["verify", str(out), "--model", str(ckpt), "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu",
            "--batch-tokens", "100000"]
    assert main(args + ["--engine", "transformers"]) == 0
    want = scores(out)
    assert main(args + ["--engine", "vllm", "--overwrite"]) == 0
    assert "engine: vllm" in capsys.readouterr().out
    got = scores(out)
    cols = ["verify.answers", "verify.answer", "verify.match", "verify.turns", "verify.turns_matched", "verify.kind"]
    for sid in want:
        assert {c: got[sid][c] for c in cols} == {c: want[sid][c] for c in cols}, sid
    assert len({a["answer"] for r in got.values() for a in json.loads(r["verify.answers"])}) >= 3

    # what was sent to vLLM: LLM(...) once; one TokensPrompt per turn, shaped as vLLM documents
    (llm,) = standin.LLM.instances
    assert llm.kwargs["model"] == str(ckpt) and llm.kwargs["dtype"] == "float32"
    assert llm.kwargs["limit_mm_per_prompt"] == {"image": 8, "video": 2}
    turns = [t for e in enc for t in split_turns(as_sample(e), sp)]
    assert len(llm.log) == len(turns)
    by_prompt = {tuple(rec["request"]["prompt_token_ids"]): rec for rec in llm.log}
    for prompt, _ in turns:
        ids = prompt["input_ids"]
        rec = by_prompt[tuple(collapse_placeholders(ids, {sp.image_pad, sp.video_pad}))]
        req = rec["request"]
        assert set(req) <= {"prompt_token_ids", "multi_modal_data", "mm_processor_kwargs"}
        n_img, n_vid = len(prompt["image_grid_thw"]), len(prompt["video_grid_thw"])
        assert req["prompt_token_ids"].count(sp.image_pad) == n_img
        assert req["prompt_token_ids"].count(sp.video_pad) == n_vid
        assert len(req.get("multi_modal_data", {}).get("image", [])) == n_img
        # vLLM's processing of the shard's frames gives the shard's grids and, expanded, its exact tokens
        assert rec["grids"].get("image", []) == prompt["image_grid_thw"].tolist()
        assert rec["grids"].get("video", []) == prompt["video_grid_thw"].tolist()
        assert rec["expanded_ids"] == ids.tolist()


def test_vllm_request_shapes():
    family = "qwen2.5-vl"
    preset = get_preset(family)
    sp = special_ids(get_tokenizer(preset=preset), preset)
    e = encode_conversation("v", [("Q?", "A."), ("Q2?", "B.")], preset=family,
                            images={0: frames(56, 84, 0)}, videos={1: [np.stack(frames(56, 56, 3, n=4))]}, secs=[0.5])

    s = as_sample(e)
    items = [("image", frames(56, 84, 0)[0][None]), ("video", np.stack(frames(56, 56, 3, n=4)))]
    (p0, _), (p1, _) = split_turns(s, sp)
    r0 = vllm_request(p0, items, sp, "qwen2_5_vl")
    assert set(r0["multi_modal_data"]) == {"image"} and r0["multi_modal_data"]["image"][0].size == (84, 56)
    assert r0["mm_processor_kwargs"] == {"size": {"shortest_edge": 56 * 84, "longest_edge": 56 * 84}}
    r1 = vllm_request(p1, items, sp, "qwen2_5_vl")
    assert r1["multi_modal_data"]["video"][0].shape == (4, 56, 56, 3)
    assert r1["mm_processor_kwargs"]["fps"] == [4.0]  # temporal_patch_size / second_per_grid_ts
    assert r1["mm_processor_kwargs"]["size"] == {"shortest_edge": 56 * 56, "longest_edge": 56 * 84}
    ids = r1["prompt_token_ids"]
    assert ids.count(sp.image_pad) == 1 and ids.count(sp.video_pad) == 1
    i = ids.index(sp.image_pad)
    assert ids[i - 1] == sp.vision_start and ids[i + 1] == sp.vision_end
    with pytest.raises(ValueError, match="use --engine transformers"):
        vllm_request(p1, items, sp, "qwen3_vl")  # Qwen3-VL videos: timestamps are vLLM's to rebuild
    text = vllm_request({**p0, "image_grid_thw": np.zeros((0, 3)), "video_grid_thw": np.zeros((0, 3)),
                         "input_ids": np.array([1, 2, 3])}, [], sp, "qwen2_vl")
    assert text == {"prompt_token_ids": [1, 2, 3]}


def test_cli_engine_mistakes(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    build_model("qwen2-vl", ckpt)
    out = write_out(tmp_path / "out", "qwen2-vl",
                    {"u0": [encode_conversation("c", [("Hi?", "Hello.")], preset="qwen2-vl")]})
    capsys.readouterr()
    assert main(["verify", str(out), "--model", str(ckpt), "--engine", "vllm", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vlprep verify: --engine vllm: the vllm package is not installed (install it on a CUDA machine), "
                   "or use --engine transformers"]
    with pytest.raises(SystemExit):
        main(["verify", str(out), "--model", str(ckpt), "--engine", "tgi"])
    assert "invalid choice: 'tgi'" in capsys.readouterr().err


def test_standin_refuses_video_frames_that_vllm_would_resample(standin):
    """The stand-in's guard (verify must send frames already at their smart-resized size, or vLLM
    would resample them) fires on a frame size smart_resize would change and passes a resized one."""
    import vllm

    llm = vllm.LLM.__new__(vllm.LLM)
    llm.image_processor = SimpleNamespace(patch_size=14, merge_size=2, temporal_patch_size=2,
                                          size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280},
                                          image_mean=[0.5] * 3, image_std=[0.5] * 3)
    with pytest.raises(ValueError, match="100x100 is not at its smart-resized size"):
        llm._video([np.zeros((2, 100, 100, 3), np.uint8)], {})
    out = llm._video([np.zeros((2, 112, 112, 3), np.uint8)], {})
    assert out["video_grid_thw"].tolist() == [[1, 8, 8]]
