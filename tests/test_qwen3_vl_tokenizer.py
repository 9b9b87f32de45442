"""Qwen3.5 / Qwen3.6 checkpoints: Qwen3VLProcessor preprocessing with another vocabulary (~248k, other
special ids). With `tokenizer:` pointing at a local HF tokenizer folder, the ids come from that
tokenizer — ChatML, position ids and the placeholder guard — and a missing token is a one-line error."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from media_factory import gradient_rgb
from processors.encode import EncodeOptions, encode_sample
from processors.errors import VlprepError
from processors.presets import IGNORE_INDEX, get_preset
from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart, VideoPart
from processors.tokenizer import get_tokenizer, special_ids
from test_qwen3_vl import GOLDEN, hf_model  # noqa: F401  (fixture)

# Special ids as public Qwen3.5 configs show them (vision_start 248053, video 248057, …); the rest of
# this tiny vocabulary is the 256 byte-level symbols.
QWEN35_IDS = {"<|endoftext|>": 248044, "<|im_start|>": 248045, "<|im_end|>": 248046, "<|vision_start|>": 248053,
              "<|vision_end|>": 248054, "<|image_pad|>": 248056, "<|video_pad|>": 248057}


def make_tokenizer_folder(path, ids=QWEN35_IDS):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab.update(ids)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ids])
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(path)
    return path


def _sample(tmp_path):
    p = tmp_path / "im.png"
    Image.fromarray(gradient_rgb(120, 90, seed=3)).save(p)
    return Sample("s", [Message("user", [ImagePart(0), TextPart("What? "), VideoPart(0)]),
                        Message("assistant", [TextPart("A bar.")])],
                  images=[MediaRef("image", str(p))], videos=[MediaRef("video", str(GOLDEN / "qwen3_vl_clip.mp4"))])


def test_special_ids_come_from_the_tokenizer_folder(tmp_path, hf_model):  # noqa: F811
    folder = make_tokenizer_folder(tmp_path / "tok")
    tok = get_tokenizer(folder)
    preset = get_preset("qwen3-vl")
    ids = special_ids(tok, preset)
    assert (ids.vision_start, ids.vision_end, ids.image_pad, ids.video_pad, ids.im_end) == (
        248053, 248054, 248056, 248057, 248046)
    enc = encode_sample(_sample(tmp_path), preset, tokenizer=tok, options=EncodeOptions(fast_videos=True))
    seq = enc.input_ids
    assert not np.isin(seq, [151652, 151653, 151655, 151656, 151645]).any()
    assert int((seq == 248056).sum()) == enc.meta["n_image_tokens"] > 0
    assert int((seq == 248057).sum()) == enc.meta["n_video_tokens"] == 3 * 6
    assert int((seq == 248053).sum()) == 1 + 3  # the image's block and one per temporal group
    assert "<0.3 seconds>" in tok.decode(seq)
    # labels: the answer, its <|im_end|> and the newline after it
    sup = seq[enc.labels != IGNORE_INDEX]
    assert tok.decode(sup) == "A bar.<|im_end|>\n"
    # position ids: transformers' get_rope_index reads only the token types, so it is the reference here
    import torch

    ids_t = torch.tensor(seq, dtype=torch.long)[None]
    types = torch.zeros_like(ids_t, dtype=torch.int32)
    types[ids_t == 248056] = 1
    types[ids_t == 248057] = 2
    with torch.no_grad():
        pos, delta = hf_model.get_rope_index(ids_t, types, image_grid_thw=torch.tensor(enc.image_grid_thw).long(),
                                             video_grid_thw=torch.tensor(enc.video_grid_thw).long())
    assert np.array_equal(enc.position_ids, pos[:, 0].numpy()) and enc.rope_delta == int(delta.reshape(-1)[0])


def test_a_missing_token_is_named(tmp_path):
    ids = {k: v for k, v in QWEN35_IDS.items() if k != "<|video_pad|>"}
    tok = get_tokenizer(make_tokenizer_folder(tmp_path / "tok", ids))
    with pytest.raises(VlprepError, match=r"has no <\|video_pad\|> token, which preset qwen3-vl needs; point `tokenizer:`"):
        special_ids(tok, "qwen3-vl")
    with pytest.raises(VlprepError, match="video_pad"):
        encode_sample(_sample(tmp_path), "qwen3-vl", tokenizer=tok)
