"""Tiny Qwen2-VL / Qwen2.5-VL checkpoints built from configs, saved to a folder, loaded by path.

Full vocabulary (the special-token ids sit at 151643+) but hidden sizes of 64 and two layers, so a
forward pass takes milliseconds on CPU. Imported by the other tests/test_reward_*.py modules.
"""
from __future__ import annotations

from pathlib import Path

import pytest

VOCAB = 151936  # the released checkpoints' embedding rows (spec §10)


def tiny_config(family: str):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
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


def build_tiny_model(family: str, folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    cls = Qwen2VLForConditionalGeneration if family == "qwen2-vl" else Qwen2_5_VLForConditionalGeneration
    model = cls(tiny_config(family)).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tmp_path_factory) -> Path:
    return build_tiny_model("qwen2-vl", tmp_path_factory.mktemp("tiny_qwen2_vl"))


@pytest.fixture(scope="session")
def tiny_qwen25_vl(tmp_path_factory) -> Path:
    return build_tiny_model("qwen2.5-vl", tmp_path_factory.mktemp("tiny_qwen25_vl"))


def test_tiny_checkpoints_are_tiny_and_load_by_path(tiny_qwen2_vl, tiny_qwen25_vl):
    import transformers

    for path, model_type in ((tiny_qwen2_vl, "qwen2_vl"), (tiny_qwen25_vl, "qwen2_5_vl")):
        cfg = transformers.AutoConfig.from_pretrained(path)
        assert cfg.model_type == model_type
        assert cfg.text_config.hidden_size == 64 and cfg.text_config.num_hidden_layers == 2
        weights = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
        assert weights < 60_000_000, weights
