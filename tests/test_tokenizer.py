"""vlprep's tiktoken-based tokenizer against a Hugging Face BPE tokenizer built from the same ranks.

The reference is built here, independently of processors/tokenizer.py: vocab = byte-level-mapped
ranks, merges derived from the ranks, NFC normaliser, Split(spec regex, "isolated") + ByteLevel
pre-tokenizers, ByteLevel decoder, and the spec §10 added tokens. `hf_reference()` is imported by
test_chatml.py too.
"""
from __future__ import annotations

import base64
import functools
import pickle

import pytest

from processors import presets
from processors.tokenizer import (
    N_RANKS,
    QWEN2_ADDED_TOKENS,
    QwenTokenizer,
    default_ranks_path,
    get_tokenizer,
)

SPEC_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Spec §10 table, written out again here so a mistake in the module's table cannot hide.
SPEC_ADDED = [
    (151643, "<|endoftext|>", True), (151644, "<|im_start|>", True), (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True), (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True), (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True), (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True), (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True), (151655, "<|image_pad|>", True), (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False), (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False), (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False), (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False), (151664, "<|file_sep|>", False),
]


def _byte_to_unicode() -> dict[int, str]:
    # GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to U+0100.. in order.
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.lru_cache(maxsize=1)
def hf_reference():
    """A `tokenizers.Tokenizer` equivalent to the Qwen2 tokenizer.json, from the raw ranks file."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    ranks: dict[bytes, int] = {}
    for line in default_ranks_path().read_bytes().splitlines():
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    assert len(ranks) == N_RANKS
    b2u = _byte_to_unicode()

    def as_str(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {as_str(t): r for t, r in ranks.items()}
    # BPE merges from ranks: every split of a token into two tokens is a merge, ranked by the token
    # it produces (tiktoken merges the pair whose product has the lowest rank).
    merges = []
    for tok, rank in ranks.items():
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    bpe = models.BPE(vocab=vocab, merges=[(as_str(l), as_str(r)) for *_, l, r in merges], fuse_unk=False)
    hf = Tokenizer(bpe)
    hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPEC_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.add_tokens([AddedToken(t, special=s, normalized=False) for _, t, s in SPEC_ADDED])
    for i, t, _ in SPEC_ADDED:
        assert hf.token_to_id(t) == i, (t, hf.token_to_id(t), i)
    return hf


def hf_ids(text: str) -> list[int]:
    return hf_reference().encode(text, add_special_tokens=False).ids


TEXTS = [
    "Hello, world! How's it going? I'm fine; they've said we'll see.",
    "这是一只猫，坐在红色的沙发上。请描述图片中的内容。",
    "日本語のテキスト：東京タワーは３３３メートルです。カタカナ、ひらがな。",
    "النص العربي: القطة تجلس على الأريكة الحمراء.",
    "Русский текст: кошка сидит на красном диване. ЁЛКИ-палки!",
    "emoji 😀🐱‍👤 👨‍👩‍👧‍👦 flags 🇩🇪🇯🇵 and ❤️ hearts",
    # combining sequences that NFC composes: e + U+0301, A + U+030A, Hangul jamo, > + U+0338
    "Cafe\u0301 A\u030angstro\u0308m \u1100\u1161\u11a8 a>\u0338b",
    "The box is (123,456),(789,1000) and 3.14159 or 1,000,000 apples; year 2024-05-01",
    "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(12,345),(678,999)<|box_end|>",
    '```json\n[{"bbox_2d": [147, 134, 619, 407], "label": "cat"}]\n```',
    "tabs\tand  double  spaces   triple\n\nnewlines\n\n\n  indented\r\nwindows\r\n   trailing   ",
    "    leading spaces and a final newline\n",
    " \n \n\t\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n\nhello<|im_end|>\n",
    "special inside words: foo<|image_pad|>bar<|vision_start|><|vision_end|>baz<tool_call>x</tool_call>",
    "almost special: <|im_start| <im_end|> <|unknown|> < |im_end| >",
    "Mixed 中文 and English 混合 text with numbers 12345 和标点！？",
    "URLs https://example.com/a_b-c?d=1&e=%20 and emails a.b@c.de",
    "ﬁ ligature, full-width ＡＢＣ１２３ (NFC keeps compatibility forms)",
    "'S 'T 'RE 'Ve 'M 'LL 'D apostrophes case-insensitive; don't",
    "",
]


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_ids_equal_hf_bpe(text):
    tok = get_tokenizer()
    ids = tok.encode(text)
    assert ids == hf_ids(text)
    # round trip: decode gives back the NFC form of the text
    import unicodedata

    assert tok.decode(ids) == "".join(
        p if i % 2 else unicodedata.normalize("NFC", p) for i, p in enumerate(tok._added_re.split(text))
    )


def test_spec_prefix_ids():
    text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
    expect = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652]
    assert get_tokenizer().encode(text) == expect
    assert hf_ids(text) == expect


def test_digits_one_token_each():
    tok = get_tokenizer()
    ids = tok.encode("(123,4567)")
    assert [tok.decode([i]) for i in ids] == ["(", "1", "2", "3", ",", "4", "5", "6", "7", ")"]


def test_nfc_is_applied_between_added_tokens_only():
    tok = get_tokenizer()
    # Over the whole string NFC would turn ">" + U+0338 into "≯" and destroy <|im_end|>.
    ids = tok.encode("a<|im_end|>\u0338b")
    assert ids[1] == presets.IM_END_ID
    assert ids == hf_ids("a<|im_end|>\u0338b")
    assert tok.encode("e\u0301") == tok.encode("\u00e9")


def test_added_token_table_matches_spec_and_presets():
    tok = get_tokenizer()
    assert list(QWEN2_ADDED_TOKENS) == SPEC_ADDED
    for i, t, special in SPEC_ADDED:
        assert tok.token_to_id(t) == i
        assert tok.encode(t) == [i]
        assert tok.decode([i]) == t
        assert (i in tok.special_ids) == special
    assert tok.vocab_size == 151665
    assert tok.token_to_id("<|image_pad|>") == presets.IMAGE_PAD_ID
    assert tok.token_to_id("<|video_pad|>") == presets.VIDEO_PAD_ID
    assert tok.token_to_id("<|vision_start|>") == presets.VISION_START_ID
    assert tok.token_to_id("system") == 8948
    with pytest.raises(KeyError, match="neither an added token"):
        tok.token_to_id("<|not_a_token|>")


def test_qwen_vl_v1_table():
    v1 = get_tokenizer(preset="qwen-vl")
    assert v1 is QwenTokenizer.for_preset(presets.QWEN_VL)
    assert v1.token_to_id("<|endoftext|>") == 151643
    assert v1.token_to_id("<|im_start|>") == 151644
    assert v1.token_to_id("<|im_end|>") == 151645
    assert v1.token_to_id("<|extra_0|>") == 151646
    assert v1.token_to_id("<|extra_204|>") == 151850
    assert [v1.token_to_id(t) for t in ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>")] == list(
        range(151851, 151857))
    assert v1.token_to_id("<img>") == 151857
    assert v1.token_to_id("</img>") == 151858
    assert v1.token_to_id("<imgpad>") == 151859
    assert v1.vocab_size == 151860
    # v1 text tokens come from the same ranks; <|image_pad|> is not a v1 token, so it is split.
    text = "Picture 1: <img><imgpad></img>\n<ref>cat</ref><box>(1,2),(3,4)</box>"
    ids = v1.encode(text)
    assert ids[:5] == get_tokenizer().encode("Picture 1: ")
    assert ids[5:8] == [151857, 151859, 151858]
    assert v1.decode(ids) == text
    assert len(v1.encode("<|image_pad|>")) > 1
    # the Qwen2 tokenizer does not know <img>
    assert 151857 not in get_tokenizer().encode("<img>")
    assert get_tokenizer(preset="qwen2.5-vl") is get_tokenizer()


def test_pickle_round_trip_rebuilds_lazily():
    tok = get_tokenizer()
    blob = pickle.dumps(tok)
    assert len(blob) < 10_000  # the ranks are not shipped, only the path and the table
    clone = pickle.loads(blob)
    assert clone._enc is None
    text = TEXTS[1] + "<|im_end|>" + TEXTS[6]
    assert clone.encode(text) == tok.encode(text)


def test_decode_errors_and_replacement():
    tok = get_tokenizer()
    with pytest.raises(ValueError, match="outside this tokenizer's range"):
        tok.decode([151665])
    # a lone non-ASCII byte decodes to U+FFFD, as the HF byte-level decoder does
    bytes_ids = [i for i in range(256) if len(tok.token_bytes(i)) == 1 and tok.token_bytes(i)[0] >= 0x80]
    assert tok.decode(bytes_ids[:1]) == "\ufffd"
    assert tok.decode(bytes_ids[:1]) == hf_reference().decode(bytes_ids[:1])


def test_encode_rejects_non_string():
    with pytest.raises(TypeError, match="expects str"):
        get_tokenizer().encode(None)


def test_hf_folder_backend(tmp_path):
    hf_reference().save(str(tmp_path / "tokenizer.json"))
    tok = get_tokenizer(tmp_path)
    text = TEXTS[5] + "<|im_start|>" + TEXTS[7]
    assert tok.encode(text) == get_tokenizer().encode(text)
    assert tok.token_to_id("<|image_pad|>") == 151655
    assert 151655 in tok.special_ids and 151657 not in tok.special_ids
    assert pickle.loads(pickle.dumps(tok)).encode(text) == tok.encode(text)
    ours = get_tokenizer()
    for i in tok.encode(text) + [0, 128, 255, 151645]:  # includes partial-UTF-8 byte tokens
        assert tok.token_bytes(i) == ours.token_bytes(i)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        get_tokenizer(tmp_path / "missing")
