"""#15 verify tests: multi-turn shard samples built with vlprep's own processors, tiny checkpoints
whose greedy answers depend on the input, and a per-turn plain-transformers reference generation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from test_reward_fixtures import VOCAB, photo, tiny_config

NEW_TOKENS = 6
FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")


def build_model(family: str, folder: Path, seed: int = 0):
    """A tiny random checkpoint (initializer_range 0.2: greedy answers vary with the input) saved with
    the image processor config of its preset, as a released checkpoint folder has them."""
    import torch
    import transformers

    from processors.presets import get_preset

    torch.manual_seed(seed)
    if family == "qwen3-vl":
        cfg = transformers.Qwen3VLConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, head_dim=16, vocab_size=VOCAB, initializer_range=0.2,
                             rope_scaling={"rope_type": "default", "mrope_section": [4, 2, 2],
                                           "mrope_interleaved": True}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                               num_position_embeddings=64, deepstack_visual_indexes=[1], initializer_range=0.2))
        cls = transformers.Qwen3VLForConditionalGeneration
    else:
        cfg = tiny_config(family)
        cfg.text_config.initializer_range = 0.2
        cls = (transformers.Qwen2VLForConditionalGeneration if family == "qwen2-vl"
               else transformers.Qwen2_5_VLForConditionalGeneration)
    cfg.initializer_range = 0.2
    model = cls(cfg).eval()
    model.save_pretrained(folder)
    p = get_preset(family)
    common = dict(patch_size=p.patch_size, temporal_patch_size=2, merge_size=2, image_mean=list(p.image_mean),
                  image_std=list(p.image_std), size={"shortest_edge": 4 * p.patch_size ** 2 * 4,
                                                      "longest_edge": 16384 * p.patch_size ** 2 * 4})
    transformers.Qwen2VLImageProcessor(**common).save_pretrained(folder)  # (torchvision absent: its PIL twin)
    return model


def encode_conversation(sid: str, turns: list[tuple[str, str]], *, images: dict | None = None,
                        videos: dict | None = None, secs=(), preset="qwen2.5-vl", tokenizer=None):
    """An EncodedSample of a multi-turn conversation: `turns` [(question, answer)]; images / videos:
    {turn index: [frames]} placed before that turn's question (sides already multiples of the patch
    factor: no resize). ChatML/labels, M-RoPE ids and patches from vlprep's processors."""
    from processors.chatml import build_chatml
    from processors.patches import patchify
    from processors.presets import get_preset
    from processors.rope import get_rope_index
    from processors.sample import EncodedSample, ImagePart, MediaRef, Message, Sample, TextPart, VideoPart
    from processors.tokenizer import get_tokenizer, special_ids

    preset = get_preset(preset)
    tok = tokenizer or get_tokenizer(preset=preset)
    images, videos = images or {}, videos or {}
    msgs, img, vid = [], [], []
    for k, (q, a) in enumerate(turns):
        parts = []
        for im in images.get(k, []):
            parts.append(ImagePart(len(img)))
            img.append(patchify(np.asarray(im)[None], preset.patch_size))
        for v in videos.get(k, []):
            parts.append(VideoPart(len(vid)))
            vid.append(patchify(np.asarray(v), preset.patch_size))
        msgs += [Message("user", parts + [TextPart(q)]), Message("assistant", [TextPart(a)])]
    sample = Sample(sid, msgs, images=[MediaRef("image") for _ in img], videos=[MediaRef("video") for _ in vid])
    chat = build_chatml(sample, preset, tok, image_tokens=[int(np.prod(g)) // 4 for _, g in img],
                        video_tokens=[int(np.prod(g)) // 4 for _, g in vid])
    ids = np.asarray(chat.input_ids, np.int32)
    ig = np.array([g for _, g in img], np.int32).reshape(-1, 3)
    vg = np.array([g for _, g in vid], np.int32).reshape(-1, 3)
    sec = np.array(secs, np.float32)
    pos, delta = get_rope_index(ids, ig, vg, sec if len(vid) else None, preset, token_ids=special_ids(tok, preset))
    pv = (np.concatenate([p for p, _ in img + vid]) if img or vid
          else np.zeros((0, preset.patch_dim), np.uint8))
    return EncodedSample(sid, ids, np.asarray(chat.labels, np.int32), np.asarray(pos, np.int32), pv, ig, vg, sec,
                         int(delta), {"id": sid})


def greedy(model, prompt: dict, preset, special, new_tokens: int = NEW_TOKENS, top: int | None = None) -> list[int]:
    """Per-turn plain transformers path: the prompt alone, no padding, greedy, the stop ids of `special`."""
    import torch

    from processors.patches import normalize_patches

    ids = torch.tensor(np.asarray(prompt["input_ids"]), dtype=torch.long)[None]
    tt = torch.zeros_like(ids)
    tt[ids == special.image_pad] = 1
    tt[ids == special.video_pad] = 2
    kw = {}
    pv = torch.from_numpy(normalize_patches(prompt["pixel_values"], preset.image_mean, preset.image_std,
                                            patch_size=preset.patch_size))
    ig, vg = np.asarray(prompt["image_grid_thw"]).reshape(-1, 3), np.asarray(prompt["video_grid_thw"]).reshape(-1, 3)
    n_img = int(np.prod(ig, axis=1).sum()) if len(ig) else 0
    if n_img:
        kw.update(pixel_values=pv[:n_img], image_grid_thw=torch.from_numpy(ig).long())
    if len(vg):
        kw.update(pixel_values_videos=pv[n_img:], video_grid_thw=torch.from_numpy(vg).long())
        if model.config.model_type == "qwen2_5_vl":
            kw["second_per_grid_ts"] = torch.from_numpy(np.asarray(prompt["second_per_grid_ts"]))
    eos = [special.im_end, special.im_end - 2]  # <|im_end|>, <|endoftext|> (adjacent in both vocabularies)
    rows = model.get_output_embeddings().weight.shape[0]
    top = top or 151665
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=tt, **kw,
                             max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos[1],
                             suppress_tokens=list(range(top, rows)) or None)
    row = out[0, ids.shape[1]:].tolist()
    stop = [k for k, t in enumerate(row) if t in eos]
    return row[:stop[0]] if stop else row


def as_sample(enc) -> dict:
    return {"id": enc.id, **enc.arrays(), "meta": enc.meta}


def write_out(root: Path, family: str, units: dict[str, list]) -> Path:
    """OUT with format-2 shards (pipeline.writer.ShardWriter: stored frames), manifest and ledger for
    {unit: [EncodedSample]}."""
    from pipeline.writer import ShardWriter
    from processors.presets import get_preset

    out = Path(root)
    rows = []
    for unit, enc in units.items():
        shard = f"shards/{unit}.tar"
        with ShardWriter(out / shard, preset=get_preset(family)) as w:  # format 2: stored frames
            for e in enc:
                w.write(e.id, e, e.meta)
        rows += [{"id": e.id, "unit": unit, "shard": shard, "preset": family, "n_tokens": len(e.input_ids)}
                 for e in enc]
    pq.write_table(pa.Table.from_pylist(rows), out / "manifest.parquet")
    led = [{"id": r["id"], "source": "t", "record_index": i, "unit": r["unit"], "status": "kept", "stage": "write",
            "rule": None, "value": None, "message": None} for i, r in enumerate(rows)]
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("record_index", pa.int64()),
                        ("unit", pa.string()), ("status", pa.string()), ("stage", pa.string()),
                        ("rule", pa.string()), ("value", pa.float64()), ("message", pa.string())])
    pq.write_table(pa.Table.from_pylist(led, schema=schema), out / "ledger.parquet")
    return out


def scores(out: Path) -> dict[str, dict]:
    rows = {}
    for f in sorted((Path(out) / "scores").glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            rows[r["id"]] = r
    return rows


def frames(h: int, w: int, seed: int, n: int = 1):
    return [photo(h, w, seed + k) for k in range(n)]
