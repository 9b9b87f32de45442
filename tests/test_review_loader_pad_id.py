"""Review of #12/#15: pipeline.loader pads with the shards' tokenizer, not always Qwen2's PAD_ID."""
from __future__ import annotations

import numpy as np
import pytest

from jobs.cli import main
from pipeline.loader import PAD_ID, ShardLoader, to_model_inputs
from test_qwen3_followups import _corpus
from test_qwen3_vl_tokenizer import QWEN35_IDS, make_tokenizer_folder


def _prepared(tmp_path, tokenizer):
    job = _corpus(tmp_path / "raw", tokenizer, "qwen3-vl")
    out = tmp_path / "out"
    assert main(["prepare", str(job), "--out", str(out), "--executor", "local", "--no-progress"]) == 0
    loader = ShardLoader(out)
    return loader, [s for sh in loader.shards() for s in loader.iter_shard(sh)]


def test_248k_shards_pad_with_their_endoftext(tmp_path, capsys):
    loader, samples = _prepared(tmp_path, make_tokenizer_folder(tmp_path / "tok"))
    pad = QWEN35_IDS["<|endoftext|>"]
    assert loader.pad_id == pad
    lengths = [len(s["input_ids"]) for s in samples]
    assert len(set(lengths)) > 1
    with pytest.raises(ValueError, match=r"pass pad_id=ShardLoader\(out\).pad_id") as e:
        to_model_inputs(samples, "qwen3-vl")
    assert "\n" not in str(e.value)
    batch = to_model_inputs(samples, "qwen3-vl", pad_id=loader.pad_id)
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    assert (ids[mask == 0] == pad).all() and (mask == 0).sum() == len(samples) * max(lengths) - sum(lengths)
    to_model_inputs(samples[0], "qwen3-vl")  # one sample needs no padding: no pad id asked for


def test_builtin_tokenizer_shards_keep_pad_id(tmp_path):
    loader, samples = _prepared(tmp_path, None)
    assert loader.pad_id == PAD_ID
    batch = to_model_inputs(samples, "qwen3-vl")
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    assert (ids[mask == 0] == PAD_ID).all() and (mask == 0).any()
    assert np.array_equal(ids, to_model_inputs(samples, "qwen3-vl", pad_id=loader.pad_id)["input_ids"].numpy())


def test_qwen_vl_ids_beyond_qwen2_ranks_pad_as_before():
    """Qwen-VL (v1) samples hold its table's ids (<img> 151857 ...), above Qwen2's ranks: PAD_ID as before."""
    from test_reward_fixtures import encode_frames, photo

    enc = [encode_frames(f"s{i}", "What is it?", "A photo." * (i + 1), images=[photo(448, 448, i)], preset="qwen-vl")
           for i in range(2)]
    samples = [{**e.arrays(), "id": e.id, "meta": e.meta} for e in enc]
    assert max(int(s["input_ids"].max()) for s in samples) > 151665
    batch = to_model_inputs(samples, "qwen-vl")
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    assert (ids[mask == 0] == PAD_ID).all() and (mask == 0).any()
