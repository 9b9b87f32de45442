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


def test_verify_summary_reads_only_this_manifests_units(tmp_path, capsys):
    """A scores file of a unit no longer in the manifest (no verify.* columns) is not read by the summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from issue15_verify_fixtures import build_model, encode_conversation, write_out

    ckpt = tmp_path / "ckpt"
    build_model("qwen2-vl", ckpt)
    out = write_out(tmp_path / "out", "qwen2-vl",
                    {"u0000": [encode_conversation("a", [("How many?", "3")], preset="qwen2-vl")]})
    (out / "scores").mkdir()
    pq.write_table(pa.table({"id": ["old"], "text.qa_relevance": [0.5]}), out / "scores" / "u0009.parquet")
    assert main(["verify", str(out), "--model", str(ckpt), "--device", "cpu", "--max-new-tokens", "2"]) == 0
    printed = capsys.readouterr()
    assert "verified 1 samples" in printed.out and "1 samples," in printed.out
    assert "vlprep: verify 1/1 samples (100%), " in printed.err      # progress in a log, as score's
    assert main(["verify", str(out), "--model", str(ckpt), "--device", "cpu", "--max-new-tokens", "2",
                 "--overwrite", "--no-progress"]) == 0
    assert "vlprep: verify" not in capsys.readouterr().err


def test_verify_dtype_reaches_the_model(tmp_path, capsys, monkeypatch):
    """`vlprep verify --dtype` is the score stage's option: fp16 on CPU reaches the scorer's model load
    (the run records it), and an unknown value is refused by argparse."""
    from filters.reward import verify as verify_mod
    from issue15_verify_fixtures import build_model, encode_conversation, write_out

    seen = []
    real = verify_mod.VerifyScorer.__init__

    def spy(self, *a, **kw):
        seen.append(kw.get("dtype"))
        real(self, *a, **kw)

    monkeypatch.setattr(verify_mod.VerifyScorer, "__init__", spy)
    ckpt = tmp_path / "ckpt"
    build_model("qwen2-vl", ckpt)
    out = write_out(tmp_path / "out", "qwen2-vl",
                    {"u0000": [encode_conversation("a", [("How many?", "3")], preset="qwen2-vl")]})
    assert main(["verify", str(out), "--model", str(ckpt), "--device", "cpu", "--max-new-tokens", "2",
                 "--dtype", "fp32"]) == 0
    assert seen and set(seen) == {"fp32"}
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(out), "--model", str(ckpt), "--dtype", "half"])
    assert exc.value.code == 2
