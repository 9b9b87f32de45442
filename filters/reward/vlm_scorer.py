"""`vlm` scorer: a local Qwen2-VL / Qwen2.5-VL checkpoint scores the supervised answer.

Columns
  vlm.mean_logprob       mean log-probability of the supervised tokens (labels != -100), with vision
  vlm.text_only_logprob  the same answer's mean log-probability with every vision block removed
                         (<|vision_start|>...<|vision_end|> dropped, plain text positions 0..L'-1)
  vlm.visual_gain        mean_logprob - text_only_logprob; near 0 (or negative) when the answer does
                         not need the image; NaN for samples without images/videos
  vlm.reward             only when the checkpoint carries a scalar head (`score.weight` [1, H], as
                         sequence-classification / reward models store it): head(final hidden state of
                         the last token)

Positions come from the shard (M-RoPE, [3, L] per sample), never recomputed: transformers 5.x
recomputes text positions after a video differently from 4.x and the Qwen team's code (spec §11.4).
Only the supervised positions go through lm_head, so logits never materialise as [B, L, vocab].
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import warnings

import numpy as np

from processors.presets import IGNORE_INDEX

from .batching import HostBatch, has_vision
from .protocol import ScorerError, compute_dtype, vocab_for

# The one place a checkpoint's model_type picks its transformers class (and the preset its shards need).
_FAMILIES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
_PRESET_OF = {"qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl"}
_FAMILIES["qwen3_vl"], _PRESET_OF["qwen3_vl"] = "Qwen3VLForConditionalGeneration", "qwen3-vl"
# Where reward / sequence-classification checkpoints keep a scalar head.
_HEAD_KEYS = ("score.weight", "v_head.summary.weight", "reward_head.weight")
# Bound on the one float32 [rows, vocab] logits block a GPU chunk of rows holds (the log-sum-exp runs
# in place on it, so this is the chunk's peak, not half of it): 1 GiB = 1 766 rows of 151 936 words.
_LOGIT_BYTES = 2**30
# On CPU the vocabulary is walked in slices whose [rows, slice] logits stay in cache (see token_logprobs).
_CPU_ROWS, _CPU_VOCAB_SLICE = 256, 4096


def _load_reward_head(path: str):
    """(weight [1, H], bias [1] or None) of a scalar head stored beside the model weights, or None."""
    from safetensors import safe_open

    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        with safe_open(f, framework="pt") as st:
            keys = set(st.keys())
            for wkey in _HEAD_KEYS:
                if wkey in keys:
                    w = st.get_tensor(wkey)
                    bkey = wkey[: -len("weight")] + "bias"
                    b = st.get_tensor(bkey) if bkey in keys else None
                    if w.ndim != 2 or w.shape[0] != 1:
                        warnings.warn(f"{f}: head {wkey} has shape {tuple(w.shape)}, not a scalar reward head "
                                      "[1, hidden]; vlm.reward is not computed")
                        return None
                    return w, b
    return None


class ModelCache:
    """Checkpoints loaded once per worker: every checkpoint scorer (vlm, vlm_category, grounding, query,
    verify — each holds a VLMScorer) set up while the cache is active (`with cache:`) shares one model
    per (checkpoint folder, compute dtype, device, attention backend). The stage's ScoreWorker owns one,
    so a Ray actor holds one copy of the weights however many scorers use them; the scorers only read
    the model (inference mode), and each keeps its own layout settings (pack) beside it."""

    _stack: list["ModelCache"] = []

    def __init__(self):
        self.models: dict[tuple, tuple] = {}  # key -> (model, loaded straight to the device, reward head)
        self.loads = 0  # checkpoints read from disk while this cache was active

    def __enter__(self) -> "ModelCache":
        ModelCache._stack.append(self)
        return self

    def __exit__(self, *exc) -> None:
        ModelCache._stack.remove(self)

    @classmethod
    def active(cls) -> "ModelCache | None":
        return cls._stack[-1] if cls._stack else None


def checkpoint_type(model_path: str) -> str:
    """The model_type of a `--model` folder (its config.json), checked to be a Qwen-VL family: the one
    check of a checkpoint, run by VLMScorer and by `vlprep score` / `verify` before they print or start
    anything."""
    config = os.path.join(model_path, "config.json")
    if not os.path.isdir(model_path) or not os.path.exists(config):
        raise ScorerError(f"--model {model_path!r} is not a local checkpoint folder with a config.json; "
                          "vlprep loads models by path only (no hub access)")
    try:
        with open(config, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ScorerError(f"--model {model_path!r}: config.json is not a JSON object ({_first_line(exc)})") from None
    if not isinstance(model_type, str) or model_type not in _FAMILIES:
        raise ScorerError(f"{model_path}: model_type {model_type!r} is not a Qwen2-VL / Qwen2.5-VL / Qwen3-VL "
                          f"checkpoint (expected one of {sorted(_FAMILIES)})")
    return model_type


def check_model_on_driver(model_path: str, address: str | None) -> None:
    """`vlprep score` / `verify`: checkpoint_type on the driver, before anything is printed. On a cluster
    (`address`) the folder may exist only on the GPU nodes: one the driver cannot see is left to the
    actors' own check (VLMScorer)."""
    if not address or os.path.isdir(model_path):
        checkpoint_type(model_path)


class VLMScorer:
    name = "vlm"

    def __init__(self, model_path: str, *, pack: str = "auto", attn_implementation: str | None = None,
                 visual_gain: bool = True, dtype: str = "auto", tokenizer: str | None = None):
        self.model_type = checkpoint_type(model_path)
        if pack not in ("auto", "on", "off"):
            raise ScorerError(f"pack must be auto|on|off, got {pack!r}")
        self.model_path = model_path
        self.pack_mode = pack
        # the text-only pass doubles the cost; without it only vlm.mean_logprob [+ reward] is written
        self.visual_gain = visual_gain
        self.attn_implementation = attn_implementation
        self.dtype_mode = dtype
        self.tokenizer_path = tokenizer  # the shards' tokenizer folder (job.json `tokenizer:`); None = built-in
        self.model = None
        self.head = None

    # -- setup ----------------------------------------------------------------------------------
    def setup(self, device) -> None:
        import torch
        import transformers

        cls = getattr(transformers, _FAMILIES[self.model_type])
        self.dtype = compute_dtype(device, self.dtype_mode)
        attn = self.attn_implementation or _best_attention(device, self.dtype)
        # On a GPU with `accelerate` installed (the `gpu` extra) the weights go straight to the device;
        # otherwise they are read into host RAM and moved (transformers needs accelerate for device_map).
        direct = device.type != "cpu" and importlib.util.find_spec("accelerate") is not None
        key = (os.path.realpath(self.model_path), str(self.dtype), str(device), attn)
        shared = ModelCache.active()
        if shared is not None and key in shared.models:  # another checkpoint scorer of this worker loaded it
            self.model, direct, self.head = shared.models[key]
        else:
            self.model, self.head = self._load(cls, device, attn, direct), None
            head = _load_reward_head(self.model_path)
            if head is not None:
                w, b = head
                self.head = (w.to(device, torch.float32), None if b is None else b.to(device, torch.float32))
            if shared is not None:
                shared.models[key] = (self.model, direct, self.head)
                shared.loads += 1
        self.device = device
        self.loaded_direct = direct
        self.pack = self.pack_mode == "on" or (self.pack_mode == "auto" and attn == "flash_attention_2")

    def _load(self, cls, device, attn: str, direct: bool):
        try:
            model = cls.from_pretrained(self.model_path, dtype=self.dtype, attn_implementation=attn,
                                        **({"device_map": device} if direct else {}))
            return model.to(device).eval()
        except Exception as exc:  # noqa: BLE001 - unreadable weights, OOM at load, ...: one line, not a traceback
            oom = "out of memory" in str(exc).lower()
            raise ScorerError(f"{self.model_path}: loading the checkpoint on {device} failed: {type(exc).__name__}: "
                              f"{_first_line(exc)}" + ("; give each actor a larger --num-gpus share or use a GPU "
                                                       "with more memory" if oom else "")) from exc

    def columns(self) -> list[str]:
        cols = ["vlm.mean_logprob"] + (["vlm.text_only_logprob", "vlm.visual_gain"] if self.visual_gain else [])
        return cols + (["vlm.reward"] if self.head is not None else [])

    def check_preset(self, preset_name: str) -> str | None:
        """A warning when the shards were prepared for the other family (different positions/grounding)."""
        want = _PRESET_OF.get(self.model_type or "")
        if want and preset_name != want and not preset_name.startswith(want + "-"):  # qwen3-vl-tf5 is qwen3-vl
            return (f"shards were prepared with preset {preset_name!r} but {self.model_path} is a {self.model_type} "
                    f"checkpoint (preset {want!r}); video positions and grounding text differ between families")
        return None

    # -- scoring --------------------------------------------------------------------------------
    def vocab(self, preset):
        """The shards' tokenizer and its special / pad ids (protocol.Vocab)."""
        return vocab_for(self.tokenizer_path, preset)

    def score(self, batch: HostBatch) -> dict[str, np.ndarray]:
        import torch

        ids = self.vocab(batch.preset).ids
        with torch.inference_mode():
            mean_lp, reward = self._answer_logprob(batch, with_vision=True)
            if not self.visual_gain:
                return {"vlm.mean_logprob": mean_lp, **({"vlm.reward": reward} if self.head is not None else {})}
            vis = np.array([has_vision(s, ids.vision_start) for s in batch.samples])
            text_lp = mean_lp.copy()
            if vis.any():
                sub = HostBatch([s for s, v in zip(batch.samples, vis) if v], batch.preset, batch.device, batch.dtype)
                lp_sub, _ = self._answer_logprob(sub.text_only(ids), with_vision=False)
                text_lp[vis] = lp_sub
        gain = np.where(vis, mean_lp - text_lp, np.nan)
        out = {"vlm.mean_logprob": mean_lp, "vlm.text_only_logprob": text_lp, "vlm.visual_gain": gain}
        if self.head is not None:
            out["vlm.reward"] = reward
        return out

    def forward_hidden(self, batch: HostBatch, with_vision: bool = True):
        """Final hidden states for the batch layout (padded or packed) plus that layout's tensors."""
        t = batch.packed() if self.pack else batch.padded(self.vocab(batch.preset).pad)
        hs = self.model.model(**self._forward_kwargs(batch, t, with_vision), use_cache=False).last_hidden_state
        return hs, t

    def forward_cached(self, batch: HostBatch):
        """(final hidden states [B, L, H], the padded layout's tensors, per-layer (keys, values)
        [B, kv heads, L, head dim]) of a right-padded batch with vision: the prefixes the candidate
        scorers continue from (candidates.encode_batches). A sample's own keys/values are its first
        len(sample) positions (causal: the padding after them never reaches them)."""
        t = batch.padded(self.vocab(batch.preset).pad)
        out = self.model.model(**self._forward_kwargs(batch, t, True), use_cache=True)
        return out.last_hidden_state, t, cache_tensors(_cache_out(out))

    def forward_continue(self, ids, attention_mask, position_ids, kv, use_cache: bool, rows=None):
        """Final hidden states of `ids` [k, W] after cached keys/values `kv` (per layer, [B, heads, P, d]):
        row r reads cache row rows[r] (None: row r; several rows may read one). attention_mask
        [k, P + W] (or a 4-D additive mask), position_ids [3, k, W]. With use_cache, also the grown
        (keys, values) [k, heads, P + W, d]. `kv` is never copied whole: see `_read_cache`."""
        cache = _read_cache(kv, rows, use_cache)
        out = self.model.model(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=use_cache, **{_cache_kw(self.model.model): cache})
        _check_read(cache)
        return out.last_hidden_state, (cache_tensors(_cache_out(out)) if use_cache else None)

    def _forward_kwargs(self, batch: HostBatch, t: dict, with_vision: bool) -> dict:
        kw = dict(input_ids=t["input_ids"], attention_mask=t["attention_mask"], position_ids=t["position_ids"])
        if with_vision:
            img_pv, vid_pv = batch.normalized_patches()
            img_grid, vid_grid, sec = batch.grids()
            if img_grid is not None:
                kw.update(pixel_values=img_pv, image_grid_thw=img_grid)
            if vid_grid is not None:
                kw.update(pixel_values_videos=vid_pv, video_grid_thw=vid_grid)
                if self.model_type == "qwen2_5_vl":
                    kw["second_per_grid_ts"] = sec
        return kw

    def _answer_logprob(self, batch: HostBatch, with_vision: bool):
        import torch

        hs, t = self.forward_hidden(batch, with_vision)
        ids, labels = t["input_ids"], t["labels"]
        n = len(batch)
        if t["segment"] is not None:
            seg = t["segment"]
            owner = seg[:, :-1]
            sup = (labels[:, 1:] != IGNORE_INDEX) & (seg[:, 1:] == seg[:, :-1])
        else:
            owner = torch.arange(n, device=ids.device)[:, None].expand(-1, ids.shape[1] - 1)
            sup = labels[:, 1:] != IGNORE_INDEX
        h = hs[:, :-1][sup]
        target = ids[:, 1:][sup]
        who = owner[sup]
        lp = token_logprobs(h, target, self.model.lm_head)
        sums = torch.zeros(n, dtype=torch.float64, device=hs.device).index_add_(0, who, lp.double())
        counts = torch.zeros(n, dtype=torch.float64, device=hs.device).index_add_(
            0, who, torch.ones_like(lp, dtype=torch.float64))
        mean = (sums / counts).cpu().numpy()  # NaN where a sample has no supervised token
        reward = None
        if self.head is not None and with_vision:
            ends = torch.as_tensor(np.cumsum(batch.lengths) - 1 if t["segment"] is not None else batch.lengths - 1,
                                   device=hs.device)
            last = hs[0, ends] if t["segment"] is not None else hs[torch.arange(n, device=hs.device), ends]
            w, b = self.head
            r = last.float() @ w.T
            reward = (r[:, 0] + (b[0] if b is not None else 0)).double().cpu().numpy()
        return mean, reward


def _cache_kw(model) -> str:
    """The forward's name for the KV cache: `cache` (transformers >= 5.x), `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_out(out):
    return getattr(out, "cache", None) if getattr(out, "cache", None) is not None else out.past_key_values


# The transformers releases _read_cache's row layer is tested with (docs/curation.md): it subclasses
# transformers.cache_utils.DynamicLayer and fills DynamicCache.layers itself, an internal API.
TESTED_TRANSFORMERS = "4.57.6 - 5.24"
_ROW_LAYER: dict = {}  # "cls": the row layer class, or None where this transformers lacks what it needs


def _read_cache(kv, rows, keep: bool):
    """A transformers DynamicCache whose layer l reads kv[l] (per layer (keys, values) [B, heads, P, d])
    by `rows` without copying it first. A plain DynamicCache(ddp_cache_data=kv) copies every layer's
    keys/values on construction (its update concatenates them to an empty tensor, an `expand`ed input
    included) and keeps every layer's grown [k, heads, P + W, d] copy until the forward ends; selecting
    the rows first (index_select, one per candidate) would be a third. Here each layer's update writes
    the rows it reads (index_select with `out=`) and the new keys/values straight into the one
    [k, heads, P + W, d] tensor attention needs, kept only when `keep` (the grown cache); otherwise
    it is freed once the layer has attended. A transformers without the layer API this relies on
    (`_row_layer`) gets that plain cache over the selected rows instead: the same values, more memory."""
    import torch
    from transformers import DynamicCache

    sel = None if rows is None else torch.as_tensor(rows, dtype=torch.int64, device=kv[0][0].device)
    layer = _row_layer()
    if layer is None:
        return DynamicCache(ddp_cache_data=kv if sel is None else [(a.index_select(0, sel), b.index_select(0, sel))
                                                                   for a, b in kv])
    cache = DynamicCache()
    cache.layers = [layer(k, v, sel, keep) for k, v in kv]
    return cache


def _check_read(cache) -> None:
    """After a forward over `_read_cache`'s cache: each row layer was updated exactly once (a transformers
    that reads or grows the cache some other way would have attended to the wrong rows)."""
    bad = [i for i, layer in enumerate(cache.layers) if getattr(layer, "updates", 1) != 1]
    if bad:
        import transformers

        raise ScorerError(f"transformers {transformers.__version__}: the model did not update the KV cache's layer "
                          f"{bad[0]} exactly once per forward; vlprep's cache reading is tested with transformers "
                          f"{TESTED_TRANSFORMERS}")


def _grow(past, new, sel):
    """[k, heads, P + W, d]: rows `sel` of `past` (all of it when None), then `new`, written straight into one tensor."""
    import torch

    p = past.shape[2]
    out = new.new_empty((new.shape[0], new.shape[1], p + new.shape[2], new.shape[3]))
    out[:, :, p:] = new
    if sel is None:
        out[:, :, :p] = past
    else:
        torch.index_select(past, 0, sel, out=out[:, :, :p])
    return out


def _row_layer():
    """The DynamicLayer subclass `_read_cache` fills a DynamicCache with, made and probed once per process:
    None (with one warning) where this transformers has no `cache_utils.DynamicLayer`, no
    `DynamicCache().layers` list, or a DynamicCache.update that does not hand a layer's update the
    rows it reads (a two-row cache read as rows [1, 1, 0] must come back as exactly those rows)."""
    if "cls" not in _ROW_LAYER:
        _ROW_LAYER["cls"], why = _make_row_layer()
        if why:
            import transformers

            warnings.warn(f"transformers {transformers.__version__}: {why}, which vlprep's KV-cache row reading "
                          f"relies on (tested with transformers {TESTED_TRANSFORMERS}); candidates read copied "
                          "cache rows instead (the same values, more memory)", stacklevel=3)
    return _ROW_LAYER["cls"]


def _make_row_layer():
    """(row layer class, None) or (None, what is missing)."""
    import torch

    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None, "no transformers.cache_utils.DynamicLayer"

    class RowLayer(DynamicLayer):
        """Reads its cache `keys`/`values` by rows `sel`; keeps the grown ones only when `keep`."""

        def __init__(self, keys, values, sel, keep: bool):
            super().__init__()
            self.keys, self.values, self.is_initialized = keys, values, True
            self.device, self.dtype = keys.device, keys.dtype
            self.sel, self.keep, self.updates = sel, keep, 0

        def update(self, key_states, value_states, *args, **kwargs):
            self.updates += 1
            k, v = _grow(self.keys, key_states, self.sel), _grow(self.values, value_states, self.sel)
            if self.keep:
                self.keys, self.values = k, v
            return k, v

    try:
        cache = DynamicCache()
        if not isinstance(getattr(cache, "layers", None), list):
            return None, "no DynamicCache().layers list"
        past = torch.arange(4.0).reshape(2, 1, 2, 1)
        new = torch.full((3, 1, 1, 1), -1.0)
        cache.layers = [RowLayer(past, past + 10, torch.tensor([1, 1, 0]), True)]
        before = cache.get_seq_length()
        k, v = cache.update(new, new, 0)
        want = torch.tensor([[2.0, 3, -1], [2, 3, -1], [0, 1, -1]])
        ok = (before == 2 and cache.get_seq_length() == 3 and cache.layers[0].updates == 1
              and torch.equal(k[:, 0, :, 0], want) and torch.equal(v[:, 0, :2, 0], want[:, :2] + 10))
    except Exception as exc:  # noqa: BLE001 - any other shape of the cache API: the plain path
        return None, f"DynamicCache does not take row layers ({type(exc).__name__}: {_first_line(exc)})"
    return (RowLayer, None) if ok else (None, "DynamicCache.update does not hand a layer's update its rows")


def cache_tensors(cache) -> list[tuple]:
    """Per-layer (keys, values) of a transformers DynamicCache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def token_logprobs(h, target, lm_head):
    """log p(target | h) for each row: lm_head logits minus their log-sum-exp, in float32.

    The logits are float32 products of the (bf16/fp16) hidden states and weights, never rounded to
    the compute dtype first: a bf16 logit of 30 is off by up to 0.06-0.1 nats, noise in visual_gain.
    GPU: one float32 [rows, vocab] block per chunk of rows, at most `_LOGIT_BYTES`; the log-sum-exp
    runs in place on it, so that block is the chunk's peak (`_logprob_blocks`). Half-precision
    weights need torch's `mm(..., out_dtype=float32)` (CUDA, torch >= 2.8); without it the vocabulary
    is walked in slices as on CPU, each slice upcast on its own.
    CPU: with a small hidden size the [rows, 151 936] product is bound by memory traffic, not
    arithmetic, so the vocabulary is walked in slices of `_CPU_VOCAB_SLICE` words with an online
    log-sum-exp (running max and rescaled sum): every slice's logits stay in cache. Same value up
    to float32 rounding (≈ 1e-6, tested); 2.5× faster on the bench's lm_head + log-sum-exp.
    """
    weight, bias = lm_head.weight, lm_head.bias
    if h.device.type != "cpu" and (weight.dtype == h.dtype and (h.dtype == _f32() or _mm_out_f32(h.device))):
        return _logprob_blocks(h, target, weight, bias, block_rows(weight.shape[0], _LOGIT_BYTES))
    return _logprob_slices(h, target, weight, bias, _CPU_ROWS, _CPU_VOCAB_SLICE)


def block_rows(vocab: int, block_bytes: int) -> int:
    """Rows per chunk so that one float32 [rows, vocab] logits block fits in `block_bytes`."""
    return max(1, block_bytes // (4 * vocab))


def _f32():
    import torch

    return torch.float32


def _f32_logits(hh, weight, bias):
    """float32 [rows, n] = hh @ weight.T (+ bias), products summed and kept in float32."""
    import torch
    import torch.nn.functional as F

    if hh.dtype == weight.dtype == torch.float32:
        out = F.linear(hh, weight)
    elif hh.device.type == "cuda" and hh.dtype == weight.dtype and _mm_out_f32(hh.device):
        out = torch.mm(hh, weight.t(), out_dtype=torch.float32)
    else:  # upcast both (callers keep `weight` to one vocabulary slice here)
        out = F.linear(hh.float(), weight.float())
    if bias is not None:
        out += bias.float()
    return out


_MM_OUT_F32: dict[str, bool] = {}


def _mm_out_f32(device) -> bool:
    """Whether torch.mm(bf16, bf16, out_dtype=float32) runs on this device type (probed once)."""
    import torch

    key = device.type
    if key not in _MM_OUT_F32:
        try:
            a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
            _MM_OUT_F32[key] = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_OUT_F32[key] = False
    return _MM_OUT_F32[key]


def _logprob_blocks(h, target, weight, bias, rows: int):
    """Whole-vocabulary float32 logits per chunk of `rows`; max, exp and sum in place on that block."""
    import torch

    out = torch.empty(len(target), dtype=torch.float32, device=h.device)
    for a in range(0, len(target), rows):
        logits = _f32_logits(h[a:a + rows], weight, bias)   # the chunk's one [rows, vocab] block
        tt = target[a:a + rows]
        tlogit = logits.gather(1, tt[:, None])[:, 0]
        m = logits.amax(dim=1)
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # an all -inf row: its sum is 0 anyway
        out[a:a + rows] = tlogit - (m + logits.sub_(m[:, None]).exp_().sum(dim=1).log())
        del logits
    return out


def _logprob_slices(h, target, weight, bias, rows: int, vslice: int):
    """Vocabulary walked in slices of `vslice` words with an online log-sum-exp (see token_logprobs)."""
    import torch

    vocab = weight.shape[0]
    out = torch.empty(len(target), dtype=torch.float32, device=h.device)
    for a in range(0, len(target), rows):
        hh, tt = h[a:a + rows], target[a:a + rows]
        n = len(tt)
        run_max = torch.full((n,), -float("inf"), dtype=torch.float32, device=h.device)
        run_sum = torch.zeros(n, dtype=torch.float32, device=h.device)
        tlogit = torch.empty(n, dtype=torch.float32, device=h.device)
        for v in range(0, vocab, vslice):
            lg = _f32_logits(hh, weight[v:v + vslice], None if bias is None else bias[v:v + vslice])
            new_max = torch.maximum(run_max, lg.amax(dim=1))
            # a row whose logits so far are all -inf: exp(-inf - -inf) would be NaN; its sum is 0 anyway
            shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
            run_sum = run_sum * torch.exp(run_max - shift) + torch.exp(lg - shift[:, None]).sum(dim=1)
            run_max = new_max
            here = (tt >= v) & (tt < v + lg.shape[1])
            if here.any():
                tlogit[here] = lg[here, tt[here] - v]
        out[a:a + rows] = tlogit - (run_max + torch.log(run_sum))
    return out


def _best_attention(device, dtype=None) -> str:
    """FlashAttention-2 where transformers can use it (enables packing), else PyTorch SDPA.

    Asks transformers' own `is_flash_attn_2_available()` (the `flash-attn` distribution, version >= 2.3.3,
    a CUDA torch) rather than `import flash_attn`, which an old build or another package of that name
    passes before loading fails. FA2 runs in bf16/fp16 only, so `--dtype fp32` gets SDPA. flash-attn is
    optional (`pip install flash-attn`); without it `--pack auto` scores padded batches, and
    `vlprep score` prints which layout ran."""
    import torch

    if device.type == "cuda" and dtype in (None, torch.bfloat16, torch.float16):
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            return "flash_attention_2"
    return "sdpa"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
