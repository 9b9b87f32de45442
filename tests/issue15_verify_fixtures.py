"""#15 verify tests: multi-turn shard samples built with vlprep's own processors, tiny checkpoints
whose greedy answers depend on the input, and a per-turn plain-transformers reference generation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reference_forward import reference_generate
from test_reward_fixtures import photo, write_shard
from tiny_models import build_qwen3_vl, build_tiny_model, load_model

NEW_TOKENS = 6
FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")


def build_model(family: str, folder: Path, seed: int = 0):
    """A tiny random checkpoint (tests/tiny_models.py, `varied`: greedy answers vary with the input) saved
    with the image processor config of its preset, as a released checkpoint folder has them."""
    import transformers

    from processors.presets import get_preset

    if family == "qwen3-vl":
        build_qwen3_vl(folder, varied=True, seed=seed)
    else:
        build_tiny_model(family, folder, seed, varied=True)
    p = get_preset(family)
    common = dict(patch_size=p.patch_size, temporal_patch_size=2, merge_size=2, image_mean=list(p.image_mean),
                  image_std=list(p.image_std), size={"shortest_edge": 4 * p.patch_size ** 2 * 4,
                                                      "longest_edge": 16384 * p.patch_size ** 2 * 4})
    transformers.Qwen2VLImageProcessor(**common).save_pretrained(folder)  # (torchvision absent: its PIL twin)
    return load_model(folder)


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
    """Per-turn plain transformers path (tests/reference_forward.py): the prompt alone, no padding,
    greedy, the stop ids and vision ids of `special`."""
    eos = [special.im_end, special.im_end - 2]  # <|im_end|>, <|endoftext|> (adjacent in both vocabularies)
    rows = model.get_output_embeddings().weight.shape[0]
    return reference_generate(model, prompt, preset, max_new_tokens=new_tokens, stop=eos, pad=eos[1],
                              suppress=list(range(top or 151665, rows)) or None, image_pad=special.image_pad,
                              video_pad=special.video_pad)


def as_sample(enc) -> dict:
    return {"id": enc.id, **enc.arrays(), "meta": enc.meta}


def write_out(root: Path, family: str, units: dict[str, list], *, v1: bool = False) -> Path:
    """OUT with format-2 shards (pipeline.writer.ShardWriter: stored frames), manifest and ledger for
    {unit: [EncodedSample]}; v1=True writes format-1 shards (raw pixel_values members) instead."""
    from pipeline.writer import ShardWriter
    from processors.presets import get_preset

    out = Path(root)
    rows = []
    for unit, enc in units.items():
        if v1:
            shard = write_shard(out, unit, enc)
        else:
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
