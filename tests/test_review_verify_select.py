"""Review of #15: `select --rule "verify.match == 1"` keeps samples with nothing to check (NaN passes, as
every NaN does); `verify.turns >= 1` is what drops them (docs/curation.md)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.cli import main


def _out(tmp_path):
    out = tmp_path / "out"
    (out / "scores").mkdir(parents=True)
    ids = ["ok", "wrong", "unchecked"]
    pq.write_table(pa.table({"id": ids, "unit": ["u0"] * 3, "shard": ["shards/u0.tar"] * 3,
                             "preset": ["qwen2-vl"] * 3, "n_tokens": [10, 10, 10]}), out / "manifest.parquet")
    pq.write_table(pa.table({"id": ids, "source": ["t"] * 3, "record_index": [0, 1, 2], "unit": ["u0"] * 3,
                             "status": ["kept"] * 3, "stage": ["write"] * 3, "rule": pa.nulls(3, pa.string()),
                             "value": pa.nulls(3, pa.float64()), "message": pa.nulls(3, pa.string())}),
                   out / "ledger.parquet")
    pq.write_table(pa.table({"id": ids, "verify.match": [1.0, 0.0, float("nan")], "verify.turns": [1.0, 1.0, 0.0],
                             "verify.kind": ["text", "text", None]}), out / "scores" / "u0.parquet")
    return out


def _kept(out):
    return pq.read_table(out / "selection" / "manifest.parquet").column("id").to_pylist()


def test_nan_match_passes_and_turns_drops_it(tmp_path):
    out = _out(tmp_path)
    assert main(["select", str(out), "--rule", "verify.match == 1"]) == 0
    assert _kept(out) == ["ok", "unchecked"]
    assert main(["select", str(out), "--rule", "verify.match == 1", "--rule", "verify.turns >= 1"]) == 0
    assert _kept(out) == ["ok"]
