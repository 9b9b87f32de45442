"""Review of #15: `vlprep verify` checks its arguments before any unit is read or model loaded."""
from __future__ import annotations

import pytest

from jobs.cli import main


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_verify_num_gpus_out_of_range_is_one_line(tmp_path, capsys, value):
    (tmp_path / "shards").mkdir()
    assert main(["verify", str(tmp_path), "--model", str(tmp_path), "--num-gpus", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vlprep verify: --num-gpus {float(value):g}") and err.count("\n") == 1
