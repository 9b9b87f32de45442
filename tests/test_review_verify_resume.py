"""Review of #15: a unit verified before the multi-turn columns existed is verified again on resume."""
from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq

from filters.reward.stage import Unit, base_columns, pending, scores_path
from filters.reward.verify import COLUMNS


def test_verify_resume_needs_every_verify_column(tmp_path):
    assert base_columns("verify") == COLUMNS
    cfg = SimpleNamespace(out_dir=str(tmp_path), scorers=("verify",), overwrite=False, visual_gain=True)
    units = [Unit("u0000", "shards/u0000.tar", 1), Unit("u0001", "shards/u0001.tar", 1)]
    scores_path(tmp_path, "u0000").parent.mkdir()
    old = ["verify.match", "verify.value", "verify.kind", "verify.answer"]  # the single-turn columns
    pq.write_table(pa.table({"id": ["a"], **{c: [None] for c in old}}), scores_path(tmp_path, "u0000"))
    pq.write_table(pa.table({"id": ["b"], **{c: [None] for c in COLUMNS}}), scores_path(tmp_path, "u0001"))
    assert [u.unit for u in pending(cfg, units)] == ["u0000"]
