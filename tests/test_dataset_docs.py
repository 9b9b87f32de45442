"""docs/training.md's code blocks run as written, on a generated prepared OUT (issue #12)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from dataset_factory import make_out

DOC = Path(__file__).resolve().parent.parent / "docs" / "training.md"
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


def test_training_doc_runs(tmp_path, monkeypatch, capsys):
    out = make_out(tmp_path / "prepared", 150, per_shard=25, image_every=5)
    monkeypatch.setenv("OUT", str(out))
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 4
    ns: dict = {}
    for code in blocks:
        if "Trainer" in code and importlib.util.find_spec("accelerate") is None:
            continue          # transformers' Trainer needs accelerate, not a vlprep dependency
        exec(compile(code, str(DOC), "exec"), ns)
    printed = capsys.readouterr().out
    assert "resumed epoch 1:" in printed
    state, rest = ns["state"], ns["rest"]
    assert state["epoch"] == 1 and sum(state["consumed"]) == 2
    # what the resumed loader returned is exactly what epoch 1 had left
    full = [b.ids for b in ns["ShardDataset"](out, seed=0, max_tokens=512, buffer_size=64, epoch=1).loader(num_workers=2)]
    assert rest == full[2:]
    assert ns["batch"]["input_ids"].shape[0] == 1
