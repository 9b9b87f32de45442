"""#15: mixing by category in `vlprep select` -- exact counts, determinism, the ledger's quota reasons,
and the category scorer's string columns through `vlprep score` / `vlprep select` / `vlprep stats`."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filters.reward.mixing import MixError, MixPlan, apply_mix, parse_amount, parse_mix
from jobs.cli import main

RNG = np.random.default_rng(15)
N = {"general_vqa": 500, "ocr_document": 300, "chart_table": 120, "video": 80}


def _corpus():
    labels = np.array([c for c, n in N.items() for _ in range(n)], dtype=object)
    ids = [f"s{i:05d}" for i in range(len(labels))]
    gain = RNG.normal(size=len(labels))
    gain[::37] = np.nan
    return ids, labels, gain


def _keep(plan, ids, labels, gain, eligible=None):
    eligible = np.ones(len(ids), bool) if eligible is None else eligible
    return apply_mix(plan, ids, labels, eligible, gain)


def _count(labels, keep):
    return {c: int(((labels == c) & keep).sum()) for c in N}


def test_keep_top_share_per_category_is_exact_and_by_rank():
    ids, labels, gain = _corpus()
    res = _keep(MixPlan("category.coarse", keep_top=(parse_amount("60%", "--keep-top", need_label=False),),
                        rank="vlm.visual_gain"), ids, labels, gain)
    assert _count(labels, res.keep) == {c: math.floor(0.6 * n) for c, n in N.items()}
    for c in N:  # every kept sample ranks at least as high as every dropped one of its category
        here = labels == c
        kept, dropped = gain[here & res.keep], gain[here & ~res.keep]
        assert not np.isnan(kept).any()
        assert kept.min() >= np.nanmax(dropped)
    i = next(iter(res.reasons))
    rule, value, msg = res.reasons[i]
    assert rule == f"quota category.coarse={labels[i]} keep-top 60%"
    assert (value == gain[i]) or (np.isnan(value) and np.isnan(gain[i]))
    assert "ranked by vlm.visual_gain" in msg


def test_share_cap_holds_for_the_final_total_and_count_caps():
    ids, labels, gain = _corpus()
    caps = (parse_amount("ocr_document=20%", "--cap", need_label=True),
            parse_amount("video=50", "--cap", need_label=True))
    res = _keep(MixPlan("category.coarse", caps=caps), ids, labels, gain)
    got = _count(labels, res.keep)
    total = sum(got.values())
    assert got["general_vqa"] == 500 and got["chart_table"] == 120 and got["video"] == 50
    assert got["ocr_document"] <= 0.2 * total
    assert got["ocr_document"] + 1 > 0.2 * (total + 1)  # the largest count that still satisfies the cap
    assert {r for r, _, _ in res.reasons.values()} == {"quota category.coarse=ocr_document cap 20%",
                                                       "quota category.coarse=video cap 50"}


def test_mix_gives_exact_proportions_and_total():
    ids, labels, gain = _corpus()
    plan = MixPlan("category.coarse", mix=parse_mix("general_vqa=50,ocr_document=30,chart_table=20"), total=400)
    got = _count(labels, _keep(plan, ids, labels, gain).keep)
    assert got == {"general_vqa": 200, "ocr_document": 120, "chart_table": 80, "video": 0}
    # without --total: as many as the scarcest category allows (chart_table 120 at 20% -> 600)
    got = _count(labels, _keep(MixPlan("category.coarse", mix=plan.mix), ids, labels, gain).keep)
    assert got == {"general_vqa": 300, "ocr_document": 180, "chart_table": 120, "video": 0}
    with pytest.raises(MixError, match="--total 700 is not reachable: chart_table"):
        _keep(MixPlan("category.coarse", mix=plan.mix, total=700), ids, labels, gain)


def test_mixing_is_deterministic_and_independent_of_row_order():
    ids, labels, gain = _corpus()
    plan = MixPlan("category.coarse", caps=(parse_amount("*=30%", "--cap", need_label=True),))
    a = _keep(plan, ids, labels, None)
    perm = RNG.permutation(len(ids))
    b = _keep(plan, [ids[i] for i in perm], labels[perm], None)
    assert {ids[i] for i in np.flatnonzero(a.keep)} == {ids[p] for p in perm[np.flatnonzero(b.keep)]}
    assert a.keep.sum() > 0


def test_only_rows_the_rules_kept_take_part():
    ids, labels, gain = _corpus()
    eligible = ~np.isnan(gain)
    res = _keep(MixPlan("category.coarse", keep_top=(parse_amount("ocr_document=10", "--keep-top",
                                                                  need_label=False),), rank="-vlm.visual_gain"),
                ids, labels, gain, eligible)
    assert not (res.keep & ~eligible).any()
    assert _count(labels, res.keep)["ocr_document"] == 10
    assert np.nanmax(gain[(labels == "ocr_document") & res.keep]) <= np.nanmin(
        gain[(labels == "ocr_document") & eligible & ~res.keep])  # -COLUMN: lowest first


@pytest.mark.parametrize("fn, msg", [
    (lambda: parse_amount("20", "--cap", need_label=True), "name the category"),
    (lambda: parse_amount("ocr=120%", "--cap", need_label=True), "0..100"),
    (lambda: parse_amount("ocr=2.5", "--cap", need_label=True), "whole number"),
    (lambda: parse_amount("ocr:20", "--cap", need_label=True), "expected LABEL="),
    (lambda: parse_mix("a=1,b"), "LABEL=WEIGHT"),
    (lambda: MixPlan("c", mix={"a": 1}, caps=(parse_amount("a=1", "--cap", need_label=True),)), "not both"),
    (lambda: MixPlan("c", total=5), "--total needs --mix"),
    (lambda: apply_mix(MixPlan("c", caps=(parse_amount("ocr=1", "--cap", need_label=True),)), ["a"],
                       np.array(["x"], object), np.ones(1, bool), None), "not in column c"),
    (lambda: apply_mix(MixPlan("c", caps=(parse_amount("*=40%", "--cap", need_label=True),)), ["a", "b"],
                       np.array(["x", "y"], object), np.ones(2, bool), None), "sum to 80%"),
])
def test_quota_mistakes_are_specific_errors(fn, msg):
    with pytest.raises(MixError, match=msg):
        fn()


# -- end to end ----------------------------------------------------------------------------------------

def _prepared_with_labels(tmp_path, n=40):
    out = tmp_path / "out"
    (out / "scores").mkdir(parents=True)
    cats = ["general_vqa"] * 20 + ["ocr_document"] * 12 + ["chart_table"] * 8
    ids = [f"x{i:03d}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "unit": ["u0"] * n, "shard": ["shards/u0.tar"] * n,
                             "preset": ["qwen2.5-vl"] * n, "n_tokens": pa.array([100 + i for i in range(n)],
                                                                                pa.int64())}),
                   out / "manifest.parquet")
    pq.write_table(pa.table({"id": ids, "source": ["a"] * n, "record_index": pa.array(range(n), pa.int64()),
                             "unit": ["u0"] * n, "status": ["kept"] * n, "stage": ["write"] * n,
                             "rule": pa.array([None] * n, pa.string()), "value": pa.array([None] * n, pa.float64()),
                             "message": pa.array([None] * n, pa.string())}), out / "ledger.parquet")
    gain = np.linspace(-1, 1, n)
    pq.write_table(pa.table({"id": ids, "category.coarse": cats, "category.fine": cats,
                             "category.confidence": np.full(n, 0.9), "vlm.visual_gain": gain,
                             "text.qa_relevance": np.where(np.arange(n) % 10 == 0, 0.0, 0.5)}),
                   out / "scores" / "u0.parquet")
    return out, ids, cats, gain


def test_select_cli_rules_then_quotas_ledger_and_report(tmp_path, capsys):
    out, ids, cats, gain = _prepared_with_labels(tmp_path)
    rc = main(["select", str(out), "--rule", "text.qa_relevance > 0.1", "--keep-top", "50%",
               "--rank", "vlm.visual_gain", "--cap", "ocr_document=3"])
    assert rc == 0
    text = capsys.readouterr().out
    kept = pq.read_table(out / "selection" / "manifest.parquet").column("id").to_pylist()
    # rules drop x000, x010, x020, x030; then keep-top 50%: general 18->9, ocr 10->5 -> cap 3, chart 8->4
    assert len(kept) == 9 + 3 + 4
    led = pq.read_table(out / "selection" / "ledger.parquet").to_pylist()
    by = {r["id"]: r for r in led}
    assert by["x010"]["rule"] == "text.qa_relevance > 0.1"
    quota = [r for r in led if r["rule"] and r["rule"].startswith("quota")]
    assert len(quota) == 40 - 4 - 16
    assert {r["rule"] for r in quota} == {"quota category.coarse=general_vqa keep-top 50%",
                                          "quota category.coarse=ocr_document keep-top 50%",
                                          "quota category.coarse=chart_table keep-top 50%",
                                          "quota category.coarse=ocr_document cap 3"}
    assert all(r["stage"] == "select" and r["status"] == "dropped" and r["message"] for r in quota)
    ocr_kept = [i for i in kept if cats[ids.index(i)] == "ocr_document"]
    assert ocr_kept == ["x028", "x029", "x031"]  # the 3 highest gains among ocr after the rules
    assert sorted(gain[[ids.index(i) for i in ocr_kept]])[0] >= max(
        gain[ids.index(r["id"])] for r in quota if r["rule"].endswith("cap 3"))
    summary = json.loads((out / "selection" / "selection.json").read_text())
    cat = summary["mix"]["categories"]
    assert cat["ocr_document"]["scored"] == {"samples": 12, "tokens": sum(100 + i for i in range(20, 32))}
    assert cat["ocr_document"]["selected"]["samples"] == 3
    assert cat["general_vqa"]["after_rules"]["samples"] == 18
    assert "ocr_document" in text and "selected tok" in text
    assert "inputs 40 == kept 16 + dropped 24 + errors 0: ok" in text


def test_select_cli_mistakes(tmp_path, capsys):
    out, *_ = _prepared_with_labels(tmp_path)
    assert main(["select", str(out)]) == 2
    assert "nothing to select by" in capsys.readouterr().err
    assert main(["select", str(out), "--rule", "category.coarse > 1"]) == 2
    assert "hold labels, not numbers" in capsys.readouterr().err
    assert main(["select", str(out), "--cap", "ocr_document=1", "--by", "vlm.category"]) == 2
    assert "no such label column" in capsys.readouterr().err
    assert main(["select", str(out), "--keep-top", "5", "--rank", "vlm.nope"]) == 2
    assert "no numeric score column" in capsys.readouterr().err


def test_score_category_then_stats_and_select(tmp_path, capsys):
    from test_reward_stage import _prepared

    out = _prepared(tmp_path)
    assert main(["score", str(out), "--scorers", "category"]) == 0
    s = pa.concat_tables([pq.read_table(p) for p in sorted((out / "scores").glob("*.parquet"))])
    assert s.schema.field("category.coarse").type == pa.string()
    assert s.schema.field("category.confidence").type == pa.float64()
    assert s.column("category.coarse").to_pylist()[4] == "video"  # s4 carries a video
    assert main(["score", str(out), "--scorers", "category"]) == 0  # resumes: nothing to do
    assert "scoring 0 of 2 units" in capsys.readouterr().out
    assert main(["select", str(out), "--cap", "*=1"]) == 0
    assert main(["stats", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "per category.coarse" in printed and "video" in printed
    stats = json.loads((out / "stats.json").read_text())
    assert stats["categories"]["category.coarse"]["video"]["scored"] == {"samples": 1, "tokens": 46}
    assert "category.coarse" not in stats["scores"] and "category.confidence" in stats["scores"]
    # the selection's report counts what was kept: one sample per category
    assert main(["stats", str(out / "selection"), "--no-html"]) == 0
    sel = json.loads((out / "selection" / "stats.json").read_text())
    assert {k: v["selected"]["samples"] for k, v in sel["categories"]["category.coarse"].items()} == {
        "general_vqa": 1, "text_dialogue": 1, "video": 1}
