"""Review of the curation changes: `--model` checked on the driver in one line, whatever its config.json holds."""
from __future__ import annotations

import json

import pytest

from filters.reward.protocol import ScorerError
from filters.reward.vlm_scorer import checkpoint_type


@pytest.mark.parametrize("config, message", [
    ('{"model_type": ["qwen2_vl"]}', r"model_type \['qwen2_vl'\] is not a Qwen2-VL / Qwen2.5-VL / Qwen3-VL"),
    ('{"model_type": {"a": 1}}', r"model_type \{'a': 1\} is not a Qwen2-VL"),
    ('{}', "model_type None is not a Qwen2-VL"),
    ('["qwen2_vl"]', "config.json is not a JSON object"),
    ('{"model_type": "qwen2_vl",', "config.json is not a JSON object"),
    (b'\xff\xfe{', "config.json is not a JSON object"),
])
def test_checkpoint_type_odd_configs_are_one_line(tmp_path, config, message):
    (tmp_path / "config.json").write_bytes(config if isinstance(config, bytes) else config.encode())
    with pytest.raises(ScorerError, match=message) as err:
        checkpoint_type(str(tmp_path))
    assert "\n" not in str(err.value)


def test_checkpoint_type_of_a_qwen_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert checkpoint_type(str(tmp_path)) == "qwen2_5_vl"


def test_driver_checks_the_model_unless_a_cluster_may_hold_it(tmp_path):
    """`vlprep score` and `verify` share one rule: a folder the driver cannot see fails there in one line,
    except with --address (the GPU nodes may hold it; their actors check it); one it sees is checked always."""
    from filters.reward.vlm_scorer import check_model_on_driver

    missing = str(tmp_path / "only-on-the-gpu-nodes")
    with pytest.raises(ScorerError, match="is not a local checkpoint folder"):
        check_model_on_driver(missing, None)
    check_model_on_driver(missing, "10.0.0.1:6379")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ScorerError, match="model_type 'bert' is not a Qwen2-VL"):
        check_model_on_driver(str(tmp_path), "10.0.0.1:6379")

