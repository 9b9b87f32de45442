"""Every input format parses to the same canonical Sample; malformed records raise the right class."""
from __future__ import annotations

import base64
import hashlib
import json

import pytest

from processors.errors import FormatError, PlaceholderMismatchError
from processors.formats import detect_format, parse_record, sample_id
from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart, VideoPart

# One conversation: an image then a question, an answer, a video question, an answer.
CANONICAL_MESSAGES = [
    Message("system", [TextPart("Be brief.")]),
    Message("user", [ImagePart(0), TextPart("\nWhat is in the picture?")]),
    Message("assistant", [TextPart("A cat on a red sofa.")]),
    Message("user", [TextPart("And here? "), VideoPart(0)]),
    Message("assistant", [TextPart("The cat jumps.")]),
]
CANONICAL_IMAGES = [MediaRef("image", path="imgs/cat.jpg")]
CANONICAL_VIDEOS = [MediaRef("video", path="clips/cat.mp4")]

LLAVA_QWEN = {
    "id": 17,
    "image": "imgs/cat.jpg",
    "video": "clips/cat.mp4",
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image>\nWhat is in the picture?"},
        {"from": "gpt", "value": "A cat on a red sofa."},
        {"from": "human", "value": "And here? <video>"},
        {"from": "gpt", "value": "The cat jumps."},
    ],
}
SHAREGPT = {
    "system": "Be brief.",
    "images": ["imgs/cat.jpg"],
    "videos": ["clips/cat.mp4"],
    "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the picture?"},
        {"from": "gpt", "value": "A cat on a red sofa."},
        {"from": "human", "value": "And here? <video>"},
        {"from": "gpt", "value": "The cat jumps."},
    ],
}
LLAMAFACTORY = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\nWhat is in the picture?"},
        {"role": "assistant", "content": "A cat on a red sofa."},
        {"role": "user", "content": "And here? <video>"},
        {"role": "assistant", "content": "The cat jumps."},
    ],
    "images": ["imgs/cat.jpg"],
    "videos": ["clips/cat.mp4"],
}
OPENAI = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "image": "imgs/cat.jpg"},
                                     {"type": "text", "text": "\nWhat is in the picture?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat on a red sofa."}]},
        {"role": "user", "content": [{"type": "text", "text": "And here? "},
                                     {"type": "video", "video": "file://clips/cat.mp4"}]},
        {"role": "assistant", "content": "The cat jumps."},
    ]
}
OPENAI_URL = json.loads(json.dumps(OPENAI))
OPENAI_URL["messages"][1]["content"][0] = {"type": "image_url", "image_url": {"url": "imgs/cat.jpg"}}
# HF chat-template style: parts name no media, the record lists them
OPENAI_POOL = json.loads(json.dumps(OPENAI))
OPENAI_POOL["messages"][1]["content"][0] = {"type": "image"}
OPENAI_POOL["messages"][3]["content"][1] = {"type": "video"}
OPENAI_POOL["images"] = ["imgs/cat.jpg"]
OPENAI_POOL["videos"] = ["clips/cat.mp4"]

ALL = {
    "llava_qwen": (LLAVA_QWEN, "llava"),
    "sharegpt": (SHAREGPT, "llava"),
    "llamafactory": (LLAMAFACTORY, "llamafactory"),
    "openai": (OPENAI, "openai"),
    "openai_image_url": (OPENAI_URL, "openai"),
    "openai_pool": (OPENAI_POOL, "openai"),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_same_conversation_same_sample(name):
    record, detected = ALL[name]
    assert detect_format(record) == detected
    s = parse_record(record, source="train.jsonl", index=3)
    assert s.messages == CANONICAL_MESSAGES
    assert s.images == CANONICAL_IMAGES
    assert s.videos == CANONICAL_VIDEOS
    assert (s.source, s.record_index, s.meta["format"]) == ("train.jsonl", 3, detected)
    # round trip through the plain-data form used across process borders
    assert Sample.from_dict(json.loads(json.dumps(s.to_dict()))) == s


@pytest.mark.parametrize("fmt", ["llava", "qwen", "sharegpt", "llamafactory"])
def test_explicit_tagged_format_names(fmt):
    assert parse_record(LLAVA_QWEN, fmt=fmt).messages == CANONICAL_MESSAGES


def test_sample_id():
    assert parse_record(LLAVA_QWEN, source="a", index=1).id == "17"
    expect = hashlib.sha1(b"data/train.json:5").hexdigest()[:16]
    assert sample_id("data/train.json", 5, LLAMAFACTORY) == expect
    assert parse_record(LLAMAFACTORY, source="data/train.json", index=5).id == expect
    assert sample_id("data/train.json", 6, LLAMAFACTORY) != expect
    assert sample_id("x", 0, {"id": ""}) == hashlib.sha1(b"x:0").hexdigest()[:16]
    assert sample_id("x", 0, {"id": "abc"}) == "abc"


def test_llava_caption_without_placeholder_prepends_images():
    rec = {"image": ["a.jpg", "b.jpg"], "conversations": [
        {"from": "human", "value": "Describe the pictures."}, {"from": "gpt", "value": "Two dogs."}]}
    s = parse_record(rec)
    assert s.messages[0].parts == [ImagePart(0), ImagePart(1), TextPart("Describe the pictures.")]
    with pytest.raises(PlaceholderMismatchError, match="0 <image> placeholder.*2 image"):
        parse_record(rec, missing_placeholders="error")
    # a video without a tag goes after the images already at the front
    rec2 = {"images": ["a.jpg"], "videos": ["v.mp4"], "messages": [
        {"role": "user", "content": "<image>What now?"}, {"role": "assistant", "content": "x"}]}
    assert parse_record(rec2).messages[0].parts == [ImagePart(0), VideoPart(0), TextPart("What now?")]


def test_placeholder_mismatches():
    rec = {"messages": [{"role": "user", "content": "<image><image>Compare these."},
                        {"role": "assistant", "content": "Alike."}], "images": ["a.jpg"]}
    with pytest.raises(PlaceholderMismatchError, match=r"demo.json#4: 2 <image> placeholder\(s\) .* 1 image"):
        parse_record(rec, source="demo.json", index=4)
    rec = {"messages": [{"role": "user", "content": "<video>Hi"}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(PlaceholderMismatchError, match=r"1 <video> placeholder\(s\) in the text but 0 video"):
        parse_record(rec)
    pool = json.loads(json.dumps(OPENAI_POOL))
    pool["images"].append("extra.jpg")
    with pytest.raises(PlaceholderMismatchError, match="1 image.*not referenced"):
        parse_record(pool)
    pool = json.loads(json.dumps(OPENAI_POOL))
    pool["images"] = []
    with pytest.raises(PlaceholderMismatchError, match="message 1 part 0: image part names no image"):
        parse_record(pool)
    assert issubclass(PlaceholderMismatchError, FormatError)


BAD = [
    ([1, 2], FormatError, "record is a list"),
    ({"text": "hello"}, FormatError, "no 'messages' or 'conversations'"),
    ({"conversations": []}, FormatError, "non-empty list"),
    ({"conversations": [{"from": "human"}]}, FormatError, r"message 0 \(user\): content must be a string, got NoneType"),
    ({"conversations": [{"value": "hi"}]}, FormatError, "no 'role' / 'from'"),
    ({"conversations": [{"from": "observation", "value": "x"}]}, FormatError, "unsupported role 'observation'"),
    ({"conversations": ["hi"]}, FormatError, "message 0 is a str"),
    ({"messages": [{"role": "user", "content": 5}]}, FormatError, "content must be a string, got int"),
    ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}]}, FormatError,
     "unknown part type 'audio'"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}, FormatError,
     "text part needs a string"),
    ({"messages": [{"role": "user", "content": ["plain string part"]}]}, FormatError, "a part must be an object"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": 3}]}]}, FormatError,
     "image must be a path, data URL"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": "  "}]}]}, FormatError, "empty image path"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]},
     FormatError, "not valid base64"),
    ({"image": "a.jpg", "images": ["a.jpg"], "conversations": [{"from": "human", "value": "<image>"}]}, FormatError,
     "both 'image' and 'images'"),
    ({"image": 5, "conversations": [{"from": "human", "value": "<image>"}]}, FormatError, "must be a string or a list"),
    ({"images": [{"name": "x"}], "conversations": [{"from": "human", "value": "<image>"}]}, FormatError,
     "needs 'path' or 'bytes'"),
    ({"system": ["x"], "conversations": [{"from": "human", "value": "hi"}]}, FormatError, "top-level 'system'"),
    ({"system": "a", "conversations": [{"from": "system", "value": "b"}, {"from": "human", "value": "hi"}]},
     FormatError, "both a top-level 'system' and a system message"),
    ({"videos": [[]], "messages": [{"role": "user", "content": "<video>"}]}, FormatError, "frame list is empty"),
]


@pytest.mark.parametrize("record,cls,msg", BAD, ids=range(len(BAD)))
def test_malformed_records(record, cls, msg):
    with pytest.raises(cls, match=msg) as e:
        parse_record(record, source="bad.jsonl", index=9)
    assert type(e.value) is cls
    assert str(e.value).startswith("bad.jsonl#9: ")


def test_unknown_fmt_argument():
    with pytest.raises(ValueError, match="unknown input format 'yaml'"):
        parse_record(LLAMAFACTORY, fmt="yaml")


def test_data_urls_frames_options_and_bytes():
    png = b"\x89PNG\r\n\x1a\nfake-bytes"
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    rec = {"messages": [
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "image", "image": "big.jpg", "min_pixels": 3136, "max_pixels": 200704, "uuid": "ignored"},
            {"type": "video", "video": ["f0.jpg", "f1.jpg", "f2.jpg", "f3.jpg"], "fps": 1.0},
            {"type": "video", "video": "clip.mp4", "nframes": 8, "video_start": 1.5, "video_end": 4.0,
             "max_pixels": 100352},
            {"text": "What changed?"},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "Everything."}]},
    ]}
    s = parse_record(rec)
    assert s.images == [
        MediaRef("image", data=png, options={"mime": "image/png"}),
        MediaRef("image", path="big.jpg", options={"min_pixels": 3136, "max_pixels": 200704}),
    ]
    assert s.videos == [
        MediaRef("video", frames=["f0.jpg", "f1.jpg", "f2.jpg", "f3.jpg"], options={"fps": 1.0}),
        MediaRef("video", path="clip.mp4",
                 options={"nframes": 8, "video_start": 1.5, "video_end": 4.0, "max_pixels": 100352}),
    ]
    assert s.messages[0].parts == [ImagePart(0), ImagePart(1), VideoPart(0), VideoPart(1), TextPart("What changed?")]
    # tagged family: bytes, HF datasets dicts and frame lists
    rec2 = {"images": [png, {"path": "p.jpg", "bytes": None}, {"bytes": png, "path": "orig.jpg"}],
            "videos": [["a.jpg", "b.jpg"]],
            "messages": [{"role": "user", "content": "<image><image><image><video>"}]}
    s2 = parse_record(rec2)
    assert s2.images == [MediaRef("image", data=png), MediaRef("image", path="p.jpg"),
                         MediaRef("image", data=png, path="orig.jpg")]
    assert s2.videos == [MediaRef("video", frames=["a.jpg", "b.jpg"])]


def test_roles_normalised():
    rec = {"conversations": [{"from": "Human", "value": "a"}, {"from": "GPT", "value": "b"},
                             {"role": "user", "value": "c"}, {"from": "model", "value": "d"},
                             {"from": "bot", "value": "e"}]}
    assert [m.role for m in parse_record(rec).messages] == ["user", "assistant", "user", "assistant", "assistant"]


def test_demo_corpus_parses(shared_corpus):
    n = 0
    for name in ("mllm_demo.json", "mllm_video_demo.json"):
        records = json.loads((shared_corpus / name).read_text())
        for k, rec in enumerate(records):
            s = parse_record(rec, source=name, index=k)
            assert s.meta["format"] == "llamafactory"
            assert [m.role for m in s.messages] == [m["role"] for m in rec["messages"]]
            assert [m.path for m in s.images] == rec.get("images", [])
            assert [m.path for m in s.videos] == rec.get("videos", [])
            # placeholder text is removed, everything else kept
            for m, raw in zip(s.messages, rec["messages"]):
                assert m.text == raw["content"].replace("<image>", "").replace("<video>", "")
                assert sum(isinstance(p, ImagePart) for p in m.parts) == raw["content"].count("<image>")
            n += 1
    first = parse_record(json.loads((shared_corpus / "mllm_demo.json").read_text())[0], source="mllm_demo.json", index=0)
    assert first.messages[0].parts == [ImagePart(0), TextPart("Who are they?")]
    assert first.messages[2].parts == [TextPart("What are they doing?"), ImagePart(1)]
    assert first.id == hashlib.sha1(b"mllm_demo.json:0").hexdigest()[:16]
    assert n >= 6
