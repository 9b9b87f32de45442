"""Tiny random Qwen-VL checkpoints for the scorer tests: configs, builders (saved to a folder, loaded
by path as vlprep loads models), and the session fixtures conftest.py registers.

* Qwen2-VL / Qwen2.5-VL (`tiny_config`, `build_tiny_model`): full 151 936-row vocabulary, hidden 64.
* Qwen3-VL (`qwen3_vl_config`, `build_qwen3_vl`): `vocab="qwen3"` — Qwen3's 151 680 rows and vision
  ids (151652 …); `vocab="qwen35"` — Qwen3.5's 248 320 rows and its ids (tests/test_qwen3_vl_tokenizer
  QWEN35_IDS: <|vision_start|> 248053, <|image_pad|> 248056, …).
* `varied=True`: initializer_range 0.2, so that greedy answers depend on the input (at the default 0.02
  every greedy step picks the same token) — for the verify (generation) tests.

The same config and seed always give the same weights, so every test that builds one compares
against the very checkpoint the scorer loads.
"""
from __future__ import annotations

from pathlib import Path

import pytest

VOCAB = 151936            # Qwen2-VL / Qwen2.5-VL checkpoints' embedding rows (spec §10)
QWEN3_VOCAB = 151680      # Qwen3-VL's
QWEN35_VOCAB = 248320     # Qwen3.5 / Qwen3.6's
QWEN3_VISION_IDS = {"<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655,
                    "<|video_pad|>": 151656}
VARIED_RANGE = 0.2


def tiny_config(family: str, layers: int = 2):
    """Qwen2-VL / Qwen2.5-VL: two text layers (or `layers`), hidden 64, the released vocabulary."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]})
    if family == "qwen2-vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)
    if family == "qwen2.5-vl":
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=2,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1], tokens_per_second=2)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)
    raise ValueError(family)


def build_tiny_model(family: str, folder: Path, seed: int = 0, *, varied: bool = False) -> Path:
    """A tiny Qwen2-VL / Qwen2.5-VL checkpoint saved to `folder`."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    cfg = tiny_config(family)
    if varied:
        cfg.initializer_range = cfg.text_config.initializer_range = VARIED_RANGE
    torch.manual_seed(seed)
    cls = Qwen2VLForConditionalGeneration if family == "qwen2-vl" else Qwen2_5_VLForConditionalGeneration
    model = cls(cfg).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


def qwen3_vl_config(vocab: str = "qwen3", *, varied: bool = False):
    """A two-layer Qwen3-VL config with Qwen3's (`qwen3`) or Qwen3.5's (`qwen35`) vocabulary and ids."""
    from transformers import Qwen3VLConfig

    if vocab == "qwen3":
        ids, hidden, heads, kv, rows = QWEN3_VISION_IDS, 32, 4, 2, QWEN3_VOCAB
    elif vocab == "qwen35":
        from test_qwen3_vl_tokenizer import QWEN35_IDS as ids

        hidden, heads, kv, rows = 16, 2, 1, QWEN35_VOCAB
    else:
        raise ValueError(vocab)
    extra = {"initializer_range": VARIED_RANGE} if varied else {}
    cfg = Qwen3VLConfig(
        text_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv, head_dim=8, vocab_size=rows,
                         rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True},
                         **extra),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=hidden,
                           num_position_embeddings=64, deepstack_visual_indexes=[1], **extra),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if varied:
        cfg.initializer_range = VARIED_RANGE
    return cfg


def build_qwen3_vl(folder: Path, vocab: str = "qwen3", *, varied: bool = False, seed: int | None = None) -> Path:
    """A tiny Qwen3-VL checkpoint saved to `folder` (seed: 1 when `varied`, else 0)."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    torch.manual_seed((1 if varied else 0) if seed is None else seed)
    Qwen3VLForConditionalGeneration(qwen3_vl_config(vocab, varied=varied)).eval().save_pretrained(folder)
    return Path(folder)


_CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
            "qwen3_vl": "Qwen3VLForConditionalGeneration"}


def load_model(path, attn: str = "sdpa"):
    """The checkpoint at `path` in float32, eval mode (the class its config.json names)."""
    import torch
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(path)
    cls = getattr(transformers, _CLASSES[cfg.model_type])
    return cls.from_pretrained(path, dtype=torch.float32, attn_implementation=attn).eval()


# -- session fixtures (registered for every test module by conftest.py) ---------------------------------

@pytest.fixture(scope="session")
def tiny_qwen3_vl(tmp_path_factory) -> Path:
    """Qwen3-VL with Qwen3's vocabulary and vision ids."""
    return build_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl"))


@pytest.fixture(scope="session")
def tiny_qwen35(tmp_path_factory) -> Path:
    """Qwen3-VL whose vocabulary and vision ids are Qwen3.5's (248 320 rows, image 248056 …)."""
    return build_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen35"), "qwen35")


@pytest.fixture(scope="session")
def tiny_qwen35_varied(tmp_path_factory) -> Path:
    """Qwen3.5 ids and vocabulary; greedy answers depend on the input."""
    return build_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen35_varied"), "qwen35", varied=True)
