"""Issue #16: the score stage's GPU-only paths, run on CPU.

* FlashAttention-2: a pure-torch stand-in for `flash_attn` swapped into transformers' real FA2 glue
  (tests/flash_attn_standin.py) runs the packed and padded layouts through the varlen path.
* bf16 on CPU, float32 logits from half-precision weights, the logits chunk's peak memory.
* FA2 detection, the dtype choice on GPUs without native bf16, the per-actor memory cap.
* Ray with fake GPU resources: actor counts (1 x 0.5, 2 x 0.4, 3 x 0.4), --num-gpus 1.5 / 2 refused,
  actor start-up failures as the scorer's one-line error (rc 2).
* bench/gpu_check.py in its dry CPU mode.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import flash_attn_standin
from filters.reward.batching import HostBatch
from filters.reward.protocol import ScorerError, compute_dtype
from filters.reward.vlm_scorer import VLMScorer, _best_attention, _logprob_blocks, block_rows, token_logprobs
from processors.presets import get_preset
from test_reward_fixtures import encode_frames, photo, tiny_qwen2_vl, tiny_qwen25_vl, write_shard  # noqa: F401
from test_reward_vlm import _load, _reference, _samples

ROOT = Path(__file__).resolve().parent.parent


# -- FlashAttention-2 through transformers' glue ------------------------------------------------------

def _scorer(path, pack, dtype="fp32", fa2=False):
    s = VLMScorer(str(path), pack=pack, dtype=dtype, attn_implementation="sdpa")
    s.setup(torch.device("cpu"))
    if fa2:
        flash_attn_standin.use_flash_attention_2(s.model)
    return s


def _text_boundaries(samples):
    return tuple(int(v) for v in np.r_[0, np.cumsum([len(s["input_ids"]) for s in samples])])


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_fa2_packed_rows_through_transformers_glue_match_one_by_one(family, tiny_qwen2_vl, tiny_qwen25_vl,
                                                                    monkeypatch):
    path = tiny_qwen2_vl if family == "qwen2-vl" else tiny_qwen25_vl
    preset = get_preset(family)
    model = _load(str(path))
    samples = _samples(model)
    ref = np.array([_reference(model, s, preset) for s in samples])
    ref_text = np.array([_reference(model, s, preset, with_vision=False) for s in samples])

    fa = flash_attn_standin.install(monkeypatch)
    scorer = _scorer(path, "on", fa2=True)
    out = scorer.score(HostBatch(samples, preset))
    np.testing.assert_allclose(out["vlm.mean_logprob"], ref, rtol=0, atol=2e-4)
    np.testing.assert_allclose(out["vlm.text_only_logprob"], ref_text, rtol=0, atol=2e-4)

    # the language model ran varlen attention over the packed row, split at the sample boundaries that
    # transformers derived from position_ids row 0 (no cu_seq_lens passed by vlprep), causal, every layer
    layers = model.config.text_config.num_hidden_layers
    text = [c for c in fa.calls if c["cu_seqlens"] == _text_boundaries(samples)]
    assert len(text) == layers and all(c["causal"] for c in text)
    vis = [s for s in samples if len(s["image_grid_thw"]) or len(s["video_grid_thw"])]
    stripped = HostBatch(vis, preset).text_only().samples
    assert len([c for c in fa.calls if c["cu_seqlens"] == _text_boundaries(stripped)]) == layers
    # the vision tower went through the same glue, non-causal, over its own per-image/frame boundaries
    tower = [c for c in fa.calls if not c["causal"]]
    assert tower and all(c["fn"] == "varlen" for c in tower)
    assert {c["fn"] for c in fa.calls} == {"varlen"}


def test_fa2_padded_batch_unpads_through_the_glue(tiny_qwen2_vl, monkeypatch):
    preset = get_preset("qwen2-vl")
    model = _load(str(tiny_qwen2_vl))
    samples = _samples(model)
    ref = np.array([_reference(model, s, preset) for s in samples])
    fa = flash_attn_standin.install(monkeypatch)
    out = _scorer(tiny_qwen2_vl, "off", fa2=True).score(HostBatch(samples, preset))
    np.testing.assert_allclose(out["vlm.mean_logprob"], ref, rtol=0, atol=2e-4)
    # transformers unpadded the right-padded rows: the same per-sample boundaries as a packed row
    layers = model.config.text_config.num_hidden_layers
    assert len([c for c in fa.calls if c["cu_seqlens"] == _text_boundaries(samples)]) == layers


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_bf16_packed_fa2_and_padded_sdpa_agree_with_fp32(family, tiny_qwen2_vl, tiny_qwen25_vl, monkeypatch):
    """bf16 runs on CPU; bf16 packed (FA2 stand-in) vs bf16 padded (SDPA) vs float32, on the bars the
    GPU check uses (packed vs padded 1e-3, bf16 vs fp32 1e-2)."""
    path = tiny_qwen2_vl if family == "qwen2-vl" else tiny_qwen25_vl
    preset = get_preset(family)
    samples = _samples(_load(str(path)))
    fp32 = _scorer(path, "off").score(HostBatch(samples, preset))
    padded = _scorer(path, "off", "bf16").score(HostBatch(samples, preset, dtype=torch.bfloat16))
    flash_attn_standin.install(monkeypatch)
    packed_s = _scorer(path, "on", "bf16", fa2=True)
    assert packed_s.model.dtype == torch.bfloat16
    packed = packed_s.score(HostBatch(samples, preset, dtype=torch.bfloat16))
    for col in ("vlm.mean_logprob", "vlm.text_only_logprob"):
        assert np.abs(packed[col] - padded[col]).max() < 1e-3, col
        assert np.abs(padded[col] - fp32[col]).max() < 1e-2, col
        assert np.abs(padded[col] - fp32[col]).max() > 0  # bf16 really ran


# -- float32 logits and the logits chunk ---------------------------------------------------------------

def _bf16_head(vocab=10_007, hidden=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    with torch.no_grad():
        head.weight.normal_(0, 1.0, generator=g)
    h = torch.randn(300, hidden, generator=g) * 0.6  # logits of std ~5, tails beyond 20
    target = torch.randint(0, vocab, (300,), generator=g)
    target[:20] = head(h[:20]).argmax(-1)  # large target logits, where bf16 rounding is coarsest
    return head.to(torch.bfloat16), h.to(torch.bfloat16), target


@pytest.mark.parametrize("path", ["slices", "blocks"])
def test_logprobs_of_half_precision_weights_use_float32_logits(path):
    """bf16 hidden states x bf16 lm_head: the products are summed and kept in float32, so the result
    equals the float64 value of the same bf16 numbers to float32 rounding. Rounding the logits to
    bf16 first (the old GPU path) was off by up to ~0.1 nats."""
    head, h, target = _bf16_head()
    with torch.inference_mode():
        exact = torch.log_softmax(h.double() @ head.weight.double().T, -1).gather(1, target[:, None])[:, 0]
        rounded = torch.log_softmax(head(h).float(), -1).gather(1, target[:, None])[:, 0]
        got = (token_logprobs(h, target, head) if path == "slices"
               else _logprob_blocks(h, target, head.weight, None, block_rows(head.weight.shape[0], 2**22)))
    assert got.dtype == torch.float32
    assert (rounded.double() - exact).abs().max() > 0.02  # what bf16 logits cost on these rows
    assert (got.double() - exact).abs().max() < 2e-4


class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of tensors created under the mode and alive at once (storage-level, views free)."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self._seen = 0, 0, set()

    def _freed(self, key, n):
        self._seen.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key, n = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                if n and key not in self._seen and key not in inputs:  # a view / in-place result is no allocation
                    self._seen.add(key)
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._freed, key, n)
        return out


def test_logits_chunk_peak_is_the_stated_block():
    """One chunk's peak is the single float32 [rows, vocab] block its comment states: the log-sum-exp
    runs in place (the old path held bf16 logits + a float32 copy + logsumexp's exp buffer)."""
    from filters.reward.vlm_scorer import _LOGIT_BYTES

    assert block_rows(151_936, _LOGIT_BYTES) == 1766  # the documented 1 GiB for Qwen's vocabulary
    budget = 2**23
    head = torch.nn.Linear(64, 10_007, bias=True)
    h = torch.randn(1000, 64)
    target = torch.randint(0, 10_007, (1000,))
    rows = block_rows(10_007, budget)
    with torch.inference_mode():
        ref = torch.log_softmax(head(h), -1).gather(1, target[:, None])[:, 0]
        with _LiveBytes() as mem:
            got = _logprob_blocks(h, target, head.weight, head.bias, rows)
    assert torch.allclose(got, ref, atol=2e-5)
    block = rows * 10_007 * 4
    assert block <= budget and mem.peak >= block  # the block was really made (the tracker sees it)
    assert mem.peak < block + 64 * 1024, (mem.peak, block)


# -- device / dtype / attention choices -----------------------------------------------------------------

def test_fa2_is_chosen_by_transformers_availability_not_by_import(monkeypatch):
    import types

    import transformers.utils

    cuda = torch.device("cuda")
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))  # importable, but unusable
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda *a, **k: False)
    assert _best_attention(cuda, torch.bfloat16) == "sdpa"
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda *a, **k: True)
    assert _best_attention(cuda, torch.bfloat16) == "flash_attention_2"
    assert _best_attention(cuda, torch.float32) == "sdpa"  # FA2 has no float32 kernels
    assert _best_attention(torch.device("cpu"), torch.bfloat16) == "sdpa"


def test_dtype_bf16_only_on_gpus_with_native_bf16(monkeypatch):
    cuda = torch.device("cuda")
    # a V100/T4: torch "supports" bf16 by emulation only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-32GB")
    assert compute_dtype(cuda) == torch.float16
    with pytest.raises(ScorerError, match="no native bf16; use --dtype fp16"):
        compute_dtype(cuda, "bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # A100/H100
    assert compute_dtype(cuda) == torch.bfloat16
    assert compute_dtype(torch.device("cpu")) == torch.float32
    assert compute_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ScorerError, match="--dtype 'half'"):
        compute_dtype(cuda, "half")


def test_actors_sharing_a_gpu_cap_their_memory(monkeypatch, tmp_path):
    from filters.reward import stage

    calls = []
    monkeypatch.setattr(stage, "resolve_device", lambda d: torch.device("cuda", 0))
    monkeypatch.setattr(stage, "compute_dtype", lambda d, r: torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d)))
    cfg = stage.ScoreConfig(str(tmp_path), scorers=())
    assert stage.ScoreWorker(cfg, lambda out: None, gpu_share=0.4).describe()["memory_fraction"] == 0.4
    assert calls == [(0.4, torch.device("cuda", 0))]
    assert stage.ScoreWorker(cfg, lambda out: None, gpu_share=1.0).describe()["memory_fraction"] is None
    assert stage.ScoreWorker(cfg, lambda out: None).describe()["memory_fraction"] is None
    assert len(calls) == 1


# -- option validation ------------------------------------------------------------------------------

def _prepared(root: Path, units: int) -> Path:
    """`units` one-sample shards + manifest (pixels scoring is enough to exercise the executor)."""
    out = root / "prepared"
    rows = []
    for k in range(units):
        unit = f"u{k:04d}"
        e = encode_frames(f"s{k}", "What is shown?", "A photo of shapes.", images=[photo(56, 56, k)])
        rows.append({"id": e.id, "unit": unit, "shard": write_shard(out, unit, [e]), "preset": "qwen2.5-vl",
                     "key": e.id, "n_tokens": len(e.input_ids)})
    pq.write_table(pa.Table.from_pylist(rows), out / "manifest.parquet")
    return out


@pytest.mark.parametrize("argv, message", [
    (["--num-gpus", "1.5"], "--num-gpus 1.5: each Ray actor scores on one GPU"),
    (["--num-gpus", "2"], "--num-gpus 2: each Ray actor scores on one GPU"),
    (["--num-gpus", "0"], "--num-gpus 0:"),
    (["--max-padding", "1.5"], "--max-padding is a share"),
    (["--device", "gpu0"], "--device 'gpu0' is not a device"),
])
def test_score_options_are_refused_in_one_line(tmp_path, capsys, argv, message):
    from jobs.cli import main

    out = _prepared(tmp_path, 1)
    assert main(["score", str(out), "--scorers", "pixels", "--executor", "ray", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (out / "scores").exists()


@pytest.mark.parametrize("nodes, share, want", [
    ([{"GPU": 1.0, "CPU": 16.0}], 0.5, (2, 1.0)),
    ([{"GPU": 2.0, "CPU": 16.0}], 0.4, (4, 1.0)),             # not int(2 / 0.4) = 5: a share lives on one GPU
    ([{"GPU": 3.0, "CPU": 16.0}], 0.4, (6, 1.0)),             # not 7
    ([{"GPU": 1.0, "CPU": 32.0}, {"GPU": 2.0, "CPU": 8.0}, {"CPU": 64.0}], 1.0, (3, 1.0)),
    ([{"GPU": 8.0, "CPU": 4.0}], 0.25, (32, 0.125)),         # more actors than CPUs: CPU share shrinks
    ([{"GPU": 2.0, "CPU": 2.0}], 0.3, (6, 0.3333)),
])
def test_gpu_actor_plan(nodes, share, want):
    from filters.reward.stage import gpu_actor_plan

    assert gpu_actor_plan(nodes, share) == want


# -- Ray with fake GPU resources ----------------------------------------------------------------------

def _in_thread(fn, timeout: float):
    """fn() in a thread; a hang (an actor Ray can never place) fails the test instead of blocking it."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still waiting after {timeout}s: actors that cannot be placed?"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture
def fake_gpu_ray(request):
    """ray.init with `num_gpus` fake GPUs on this CPU machine (Ray only counts them)."""
    ray = pytest.importorskip("ray")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

    def start(num_gpus):
        ray.shutdown()
        ray.init(address="local", num_cpus=2, num_gpus=num_gpus, include_dashboard=False, logging_level="ERROR")
        return ray

    yield start
    ray.shutdown()


def _run_ray(out, share, **kw):
    from filters.reward.stage import ScoreConfig, run_ray
    from pipeline.score_inputs import units_from_manifest
    from pipeline.loader import ShardLoader

    units, preset = units_from_manifest(out)
    cfg = ScoreConfig(str(out), ("pixels",), preset=preset, overwrite=True)
    return run_ray(cfg, units, kw.pop("loader", ShardLoader), num_gpus=share, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("gpus, share, per_gpu", [(2, 0.4, 2), (3, 0.4, 2)])
def test_fractional_actors_fit_on_fake_gpus(tmp_path, fake_gpu_ray, gpus, share, per_gpu):
    out = _prepared(tmp_path, 8)
    fake_gpu_ray(gpus)
    report = _in_thread(lambda: _run_ray(out, share), 300)
    assert report.samples == 8 and report.units == 8
    ids = sorted(g for w in report.workers for g in w["gpu_ids"])
    assert len(report.workers) == gpus * per_gpu
    assert ids == sorted([str(g) for g in range(gpus)] * per_gpu)  # two actors on every GPU, none left waiting
    assert all(w["device"] == "cpu" for w in report.workers)  # fake GPUs: torch sees none
    scores = pa.concat_tables([pq.read_table(p) for p in sorted((out / "scores").glob("*.parquet"))])
    assert scores.num_rows == 8 and scores.column("id").to_pylist() == [f"s{k}" for k in range(8)]


@pytest.mark.slow
def test_actor_start_up_failures_are_one_line_rc2(tmp_path, fake_gpu_ray, capsys, tiny_qwen2_vl):
    import json
    import shutil

    from jobs.cli import main

    out = _prepared(tmp_path, 2)
    ray = fake_gpu_ray(1)

    def score(*argv):
        capsys.readouterr()
        rc = _in_thread(lambda: main(["score", str(out), "--executor", "ray", *argv]), 300)
        err = capsys.readouterr().err.strip().splitlines()
        return rc, [ln for ln in err if ln.startswith("vlprep score:")], err

    # a checkpoint of another family
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 1,
                                                   "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 10}))
    rc, lines, err = score("--model", str(other), "--scorers", "vlm", "--num-gpus", "0.5")
    assert rc == 2 and len(lines) == 1, err
    assert "model_type 'llama' is not a Qwen2-VL" in lines[0]    # checked before any actor starts
    # weights that cannot be read (a truncated file, as an interrupted copy leaves)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen2_vl, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    rc, lines, err = score("--model", str(broken), "--scorers", "vlm")
    assert rc == 2 and len(lines) == 1 and "loading the checkpoint on cpu failed" in lines[0], err
    # --device cuda: the cluster has a (fake) GPU, but torch in the actor sees none
    rc, lines, err = score("--scorers", "pixels", "--device", "cuda")
    assert rc == 2 and len(lines) == 1 and "torch sees no CUDA GPU" in lines[0], err
    # an actor process that dies while starting
    from filters.reward.stage import ScoreConfig, run_ray
    from pipeline.score_inputs import units_from_manifest

    units, preset = units_from_manifest(out)
    cfg = ScoreConfig(str(out), ("pixels",), preset=preset)
    with pytest.raises(ScorerError, match=r"^starting a score actor: ActorDiedError: the actor process died"):
        _in_thread(lambda: run_ray(cfg, units, lambda o: os._exit(3), num_gpus=1.0), 300)
    # a cluster without GPUs and --device cuda: refused before any actor starts
    ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="ERROR")
    rc, lines, err = score("--scorers", "pixels", "--device", "cuda")
    assert rc == 2 and len(lines) == 1 and "the Ray cluster (local) has no GPU" in lines[0], err
    assert not (out / "scores").exists()


# -- the first-GPU-run script ---------------------------------------------------------------------------

@pytest.mark.slow
def test_gpu_check_dry_mode_runs_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry", "--samples", "12"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = {ln.split("|")[1].strip(): ln for ln in r.stdout.splitlines() if ln.startswith("| ") and "---" not in ln}
    for check in ("packed vs padded scores", "bf16 vs fp32 scores", "fp32 logits from a bf16 lm_head",
                  "ray --num-gpus 0.5 on one GPU"):
        assert "PASS" in rows[check], rows.get(check)
    for check in ("flash-attn", "peak memory at 32768 batch tokens", "samples/s vs per-sample loop"):
        assert check in rows and ("dry" in rows[check] or "PASS" in rows[check]), rows.get(check)
