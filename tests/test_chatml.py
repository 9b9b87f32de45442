"""build_chatml against transformers' apply_chat_template + the processor's pad expansion (spec §8, §9).

The reference: a transformers fast tokenizer wrapping test_tokenizer's HF BPE (built from the raw
ranks), with the Qwen2-VL chat template written below from spec §9's rules; pads are expanded the
way the HF processor does it (each `<|image_pad|>` → N copies, in order, via a temporary
placeholder); the expanded text is tokenised whole and compared id for id.
"""
from __future__ import annotations

import functools
import unicodedata

import numpy as np
import pytest

from processors import presets
from processors.chatml import build_chatml
from processors.errors import FormatError, PlaceholderMismatchError, SequenceTooLongError
from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart, VideoPart
from processors.tokenizer import get_tokenizer
from test_tokenizer import hf_reference

# Spec §9, restated as Jinja: default system prompt when the first message is not system; string
# content verbatim; list content item by item (image / video / text), optional "Picture k: " /
# "Video k: " counted over the conversation; `<|im_end|>\n` after every message.
QWEN2_VL_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif content['type'] == 'video' or 'video' in content -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' ~ video_count.value ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in content -%}"
    "{{- content['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@functools.lru_cache(maxsize=1)
def hf_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=hf_reference(), chat_template=QWEN2_VL_TEMPLATE)


def expand_pads(text: str, image_tokens, video_tokens) -> str:
    """The HF processor's expansion (spec §8 step 2)."""
    for pad, counts in (("<|image_pad|>", image_tokens), ("<|video_pad|>", video_tokens)):
        for n in counts:
            assert pad in text
            text = text.replace(pad, "<|placeholder|>" * n, 1)
        assert pad not in text
        text = text.replace("<|placeholder|>", pad)
    return text


def reference_ids(messages, image_tokens=(), video_tokens=(), **kw) -> list[int]:
    tok = hf_tokenizer()
    text = tok.apply_chat_template(messages, tokenize=False, **kw)
    return tok(expand_pads(text, image_tokens, video_tokens), add_special_tokens=False)["input_ids"]


def make(conv, sample_id="t"):
    """conv: [(role, [str | "IMG" | "VID", ...] or str)] → (Sample, HF messages)."""
    msgs, hf, n_img, n_vid = [], [], 0, 0
    for role, content in conv:
        if isinstance(content, str):
            msgs.append(Message(role, [TextPart(content)]))
            hf.append({"role": role, "content": content})
            continue
        parts, items = [], []
        for c in content:
            if c == "IMG":
                parts.append(ImagePart(n_img))
                items.append({"type": "image"})
                n_img += 1
            elif c == "VID":
                parts.append(VideoPart(n_vid))
                items.append({"type": "video"})
                n_vid += 1
            else:
                parts.append(TextPart(c))
                items.append({"type": "text", "text": c})
        msgs.append(Message(role, parts))
        hf.append({"role": role, "content": items})
    sample = Sample(
        id=sample_id,
        messages=msgs,
        images=[MediaRef("image", path=f"{i}.jpg") for i in range(n_img)],
        videos=[MediaRef("video", path=f"{i}.mp4") for i in range(n_vid)],
    )
    return sample, hf


CASES = {
    "one_image": ([("user", ["IMG", "Describe this image."]), ("assistant", "A cat on a sofa.")], [2691], []),
    "multi_turn_media": (
        [
            ("system", "You are a careful annotator."),
            ("user", ["IMG", "IMG", "Compare the two pictures."]),
            ("assistant", "The second one is brighter."),
            ("user", ["What happens here?", "VID"]),
            ("assistant", ["A ball moves ", "from left to right."]),
        ],
        [4, 345],
        [7200],
    ),
    "multilingual": (
        [
            ("user", ["IMG", "这张图片里有什么？日本語でも答えて。"]),
            ("assistant", "一只猫 🐱 sits on a sofa — Кошка. قطة. Cafe\u0301"),
        ],
        [64],
        [],
    ),
    "grounding_digits": (
        [
            ("user", ["IMG", "Where is the dog?"]),
            ("assistant", "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(228,320),(961,970)<|box_end|>"),
        ],
        [391],
        [],
    ),
    "whitespace_edges": (
        [
            ("user", ["  leading spaces\n\n", "IMG", "\ntrailing newline\n"]),
            ("assistant", "\n\nstarts with newlines"),
            ("user", "\t tabbed "),
            ("assistant", "   spaces first\n"),
        ],
        [29],
        [],
    ),
    "text_only": ([("user", "Hi"), ("assistant", "Hello!")], [], []),
    "video_only": ([("user", ["VID", "What is she doing?"]), ("assistant", "She is cooking.")], [], [1440]),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("add_vision_id", [False, True])
def test_ids_equal_apply_chat_template(name, add_vision_id):
    conv, img, vid = CASES[name]
    sample, hf = make(conv)
    res = build_chatml(sample, presets.QWEN25_VL, get_tokenizer(), image_tokens=img, video_tokens=vid,
                       add_vision_id=add_vision_id)
    ref = reference_ids(hf, img, vid, add_vision_id=add_vision_id)
    assert res.input_ids.dtype == np.int32 and res.labels.dtype == np.int32
    assert res.input_ids.tolist() == ref
    assert res.text == hf_tokenizer().apply_chat_template(hf, tokenize=False, add_vision_id=add_vision_id)
    # decoding gives the NFC form of the expanded text (the tokenizer normalises before BPE)
    assert get_tokenizer().decode(res.input_ids) == unicodedata.normalize("NFC", expand_pads(res.text, img, vid))
    assert res.n_image_tokens == sum(img) and res.n_video_tokens == sum(vid)
    assert int((res.input_ids == presets.IMAGE_PAD_ID).sum()) == sum(img)
    assert int((res.input_ids == presets.VIDEO_PAD_ID).sum()) == sum(vid)


def test_generation_prompt_and_spec_prefix():
    sample, hf = make([("user", ["IMG", "Describe this image."])])
    res = build_chatml(sample, None, None, image_tokens=[4], add_generation_prompt=True)
    assert res.text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert res.input_ids[:15].tolist() == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198,
                                           151644, 872, 198, 151652]
    assert res.input_ids[15:19].tolist() == [presets.IMAGE_PAD_ID] * 4
    assert res.input_ids.tolist() == reference_ids(hf, [4], add_generation_prompt=True)
    assert (res.labels == -100).all()


def test_system_prompt_override_and_none():
    sample, hf = make([("user", "Hi"), ("assistant", "Hello!")])
    custom = build_chatml(sample, None, None, system_prompt="Be brief.")
    assert custom.input_ids.tolist() == reference_ids([{"role": "system", "content": "Be brief."}] + hf)
    bare = build_chatml(sample, None, None, system_prompt=None)
    assert bare.text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    assert bare.input_ids.tolist() == hf_reference().encode(bare.text).ids


def _supervised(res):
    return [i for i, l in enumerate(res.labels.tolist()) if l != -100]


def test_labels_exact_positions_text():
    tok = get_tokenizer()
    sample, _ = make([("user", "Hi"), ("assistant", "Hello!")])
    res = build_chatml(sample, None, tok)
    ids = res.input_ids.tolist()
    # 0..10 system block, 11 <|im_start|> 12 user 13 \n 14 Hi 15 <|im_end|> 16 \n
    # 17 <|im_start|> 18 assistant 19 \n 20 Hello 21 ! 22 <|im_end|> 23 \n
    assert len(ids) == 24
    assert ids[17:20] == [151644, tok.token_to_id("assistant"), 198]
    assert _supervised(res) == [20, 21, 22, 23]
    assert res.labels[20:].tolist() == ids[20:] and ids[22:] == [151645, 198]
    assert res.n_supervised == 4


def test_labels_multi_turn_and_vision_in_assistant():
    sample, hf = make([
        ("user", ["IMG", "Q1"]),
        ("assistant", "A1"),
        ("user", "Q2"),
        ("assistant", ["See ", "IMG", " here"]),
    ])
    res = build_chatml(sample, None, None, image_tokens=[4, 8])
    ids = res.input_ids.tolist()
    assert ids == reference_ids(hf, [4, 8])
    # locate the two assistant headers by their ids
    heads = [i for i in range(len(ids) - 2) if ids[i:i + 3] == [151644, 77091, 198]]
    assert len(heads) == 2
    a1 = heads[0] + 3                      # "A", "1"? — whatever A1 encodes to, then <|im_end|> \n
    n_a1 = len(get_tokenizer().encode("A1"))
    first = list(range(a1, a1 + n_a1 + 2))
    a2 = heads[1] + 3
    see = len(get_tokenizer().encode("See "))
    vis = list(range(a2 + see, a2 + see + 10))  # vision_start + 8 pads + vision_end
    rest = list(range(a2 + see + 10, len(ids)))
    assert ids[vis[0]] == presets.VISION_START_ID and ids[vis[-1]] == presets.VISION_END_ID
    assert _supervised(res) == first + list(range(a2, a2 + see)) + rest
    assert ids[-2:] == [151645, 198] and rest[-2:] == [len(ids) - 2, len(ids) - 1]


def test_labels_content_starting_with_newline_straddles_header():
    tok = get_tokenizer()
    sample, hf = make([("user", "Hi"), ("assistant", "\nHello")])
    res = build_chatml(sample, None, tok)
    ids = res.input_ids.tolist()
    assert ids == reference_ids(hf)
    # "assistant\n\nHello": BPE fuses the header's "\n" with the content's "\n" into one token
    k = ids.index(77091)
    assert tok.decode([ids[k + 1]]) == "\n\n"
    assert _supervised(res) == list(range(k + 1, len(ids)))


def test_hf_folder_tokenizer_gives_same_ids_and_labels(tmp_path):
    hf_reference().save(str(tmp_path / "tokenizer.json"))
    folder = get_tokenizer(tmp_path)
    conv, img, vid = CASES["whitespace_edges"]
    sample, _ = make(conv + [("assistant", "\n😀 emoji first")])
    ours = build_chatml(sample, None, get_tokenizer(), image_tokens=img, video_tokens=vid)
    theirs = build_chatml(sample, None, folder, image_tokens=img, video_tokens=vid)
    assert theirs.input_ids.tolist() == ours.input_ids.tolist()
    assert theirs.labels.tolist() == ours.labels.tolist()


def test_placeholder_errors():
    tok = get_tokenizer()
    sample, _ = make([("user", ["IMG", "IMG", "x"]), ("assistant", "y")])
    with pytest.raises(PlaceholderMismatchError, match="2 image placeholder.*2 image.*1 image token count"):
        build_chatml(sample, None, tok, image_tokens=[4])
    sample.messages[0].parts[1] = ImagePart(5)
    with pytest.raises(PlaceholderMismatchError, match=r"missing image index\(es\) \[5\]"):
        build_chatml(sample, None, tok, image_tokens=[4, 4])
    sample.messages[0].parts[:2] = [ImagePart(1), ImagePart(0)]
    with pytest.raises(PlaceholderMismatchError, match="not in order"):
        build_chatml(sample, None, tok, image_tokens=[4, 4])
    s2, _ = make([("user", ["VID", "x"])])
    s2.videos.append(MediaRef("video", path="extra.mp4"))
    with pytest.raises(PlaceholderMismatchError, match="1 video placeholder.*2 video"):
        build_chatml(s2, None, tok, video_tokens=[4, 4])
    s3, _ = make([("user", ["IMG", "literal <|image_pad|> in text"])])
    with pytest.raises(PlaceholderMismatchError, match=r"5 <\|image_pad\|> tokens in the sequence, 4 expected"):
        build_chatml(s3, None, tok, image_tokens=[4])
    s4, _ = make([("user", ["IMG", "x"])])
    with pytest.raises(PlaceholderMismatchError, match="positive int"):
        build_chatml(s4, None, tok, image_tokens=[0])


def test_format_errors():
    s, _ = make([("narrator", "x")])
    with pytest.raises(FormatError, match="role 'narrator'"):
        build_chatml(s, None, None)
    with pytest.raises(FormatError, match="no messages"):
        build_chatml(Sample(id="e", messages=[]), None, None)


def test_max_length():
    sample, _ = make([("user", ["IMG", "Describe."]), ("assistant", "A cat.")])
    full = build_chatml(sample, None, None, image_tokens=[100])
    L = len(full.input_ids)
    assert len(build_chatml(sample, None, None, image_tokens=[100], max_length=L).input_ids) == L
    with pytest.raises(SequenceTooLongError, match=f"{L} tokens > max_length {L - 1}") as e:
        build_chatml(sample, None, None, image_tokens=[100], max_length=L - 1)
    assert (e.value.length, e.value.limit) == (L, L - 1)
    assert e.value.code == "too_long"


def test_qwen_vl_v1_format():
    v1 = get_tokenizer(preset="qwen-vl")
    sample, _ = make([
        ("user", ["IMG", "What is this?"]),
        ("assistant", "<ref>the cat</ref><box>(12,34),(567,890)</box>"),
        ("user", ["IMG", "And this?"]),
        ("assistant", "A dog."),
    ])
    res = build_chatml(sample, presets.QWEN_VL, v1, image_tokens=[256, 256])
    block = "<img>" + "<imgpad>" * 256 + "</img>\n"
    expanded = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\nPicture 1: {block}What is this?<|im_end|>\n"
        "<|im_start|>assistant\n<ref>the cat</ref><box>(12,34),(567,890)</box><|im_end|>\n"
        f"<|im_start|>user\nPicture 2: {block}And this?<|im_end|>\n"
        "<|im_start|>assistant\nA dog.<|im_end|>\n"
    )
    assert res.input_ids.tolist() == v1.encode(expanded)
    assert v1.decode(res.input_ids) == expanded
    ids = res.input_ids.tolist()
    first = ids.index(151857)
    assert ids[first + 1:first + 257] == [151859] * 256 and ids[first + 257] == 151858
    assert int((res.input_ids == 151859).sum()) == 512
    assert res.labels[first:first + 258].tolist() == [-100] * 258
    with pytest.raises(PlaceholderMismatchError, match="exactly 256 tokens, image 0 got 64"):
        build_chatml(sample, presets.QWEN_VL, v1, image_tokens=[64, 256])
    sv, _ = make([("user", ["VID", "x"])])
    with pytest.raises(FormatError, match="qwen-vl has no video support"):
        build_chatml(sv, "qwen-vl", None, video_tokens=[4])
    # default tokenizer follows the preset
    assert build_chatml(sample, "qwen-vl", None, image_tokens=[256, 256]).input_ids.tolist() == ids


def test_demo_corpus_matches_reference(shared_corpus):
    import json

    from processors.formats import parse_record

    checked = 0
    for name in ("mllm_demo.json", "mllm_video_demo.json"):
        records = json.loads((shared_corpus / name).read_text())
        for k, rec in enumerate(records):
            s = parse_record(rec, source=name, index=k)
            img = [4 + 13 * i for i in range(len(s.images))]
            vid = [60 + 7 * i for i in range(len(s.videos))]
            hf = [{"role": m.role, "content": [
                {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": p.type} for p in m.parts
            ]} for m in s.messages]
            res = build_chatml(s, None, None, image_tokens=img, video_tokens=vid)
            assert res.input_ids.tolist() == reference_ids(hf, img, vid), (name, k)
            checked += 1
    assert checked >= 6
