"""Input formats → the canonical Sample.

Two families cover every supported format:

* **tagged** — text with `<image>` / `<video>` placeholders, media in side lists:
  LLaVA (`conversations`, `from`/`value` in human/gpt/system, `image`: str or list), the Qwen
  finetune format (the same plus `video`), LLaMA-Factory (`messages` with `role`/`content` strings,
  `images`/`videos` lists) and ShareGPT (`conversations` + `from`, optional top-level `system`).
* **parts** — OpenAI-style content lists (`messages` whose content is a list of
  `{"type": "text"|"image"|"image_url"|"video", ...}`), media named inside the parts; per-item options
  (fps, nframes, min_pixels, max_pixels, video_start, video_end, ...) go to MediaRef.options.

Placeholder rule (tagged family): the number of `<image>` tags must equal the number of images,
the same for videos; any difference raises PlaceholderMismatchError. One exception, common in
LLaVA-style caption data: a record with media of a kind but **no** tag of that kind at all gets
those media prepended to its first user turn (images before videos), unless
`missing_placeholders="error"`. The placeholder text is removed; the text around it (e.g. LLaVA's
"\\n" after `<image>`) is kept verbatim, as the Qwen finetune code and LLaMA-Factory keep it.

Media items may be a path string, a `data:<mime>;base64,` URL (→ MediaRef.data), raw bytes, a
Hugging Face datasets dict (`{"path": ..., "bytes": ...}`), or for videos a list of frames
(→ MediaRef.frames).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

from .errors import FormatError, PlaceholderMismatchError
from .sample import ImagePart, MediaRef, Message, Sample, TextPart, VideoPart

FORMATS = ("auto", "llava", "qwen", "sharegpt", "llamafactory", "openai")
_TAGGED = {"llava", "qwen", "sharegpt", "llamafactory"}

ROLE_MAP = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
}
# Per-item options the encoder understands (qwen-vl-utils names).
MEDIA_OPTIONS = frozenset({
    "min_pixels", "max_pixels", "resized_height", "resized_width", "total_pixels",
    "fps", "nframes", "min_frames", "max_frames", "video_start", "video_end", "sample_fps",
})
_TAG_RE = re.compile(r"(<image>|<video>)")
_DATA_URL_RE = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)


def sample_id(source: str, index: int, record: dict | None) -> str:
    """The record's own `id` (stringified) when it has a non-empty one, else sha1("source:index")[:16]."""
    if isinstance(record, dict):
        own = record.get("id")
        if own is not None and str(own) != "":
            return str(own)
    return hashlib.sha1(f"{source}:{index}".encode("utf-8")).hexdigest()[:16]


def detect_format(record: dict) -> str:
    """`openai` when some message content is a list, else the tagged family's name for the key used."""
    if "messages" in record:
        msgs = record["messages"]
        if isinstance(msgs, list) and any(isinstance(m, dict) and isinstance(m.get("content"), list) for m in msgs):
            return "openai"
        return "llamafactory"
    if "conversations" in record:
        return "llava"
    raise FormatError(
        f"no 'messages' or 'conversations' key (keys: {sorted(record)[:10]}); expected LLaVA / ShareGPT "
        f"'conversations', LLaMA-Factory or OpenAI-style 'messages'"
    )


def parse_record(
    record: dict,
    *,
    source: str = "",
    index: int = -1,
    fmt: str = "auto",
    missing_placeholders: str = "prepend",
) -> Sample:
    """Parse one input record into a Sample (see the module docstring for the formats and rules).

    fmt: "auto" or one of FORMATS; the tagged names (llava, qwen, sharegpt, llamafactory) share one
    parser. missing_placeholders: "prepend" (default) or "error".
    Raises FormatError / PlaceholderMismatchError naming the source and record index.
    """
    where = f"{source or '<record>'}#{index}"
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; choose one of {FORMATS}")
    if missing_placeholders not in ("prepend", "error"):
        raise ValueError(f"missing_placeholders must be 'prepend' or 'error', not {missing_placeholders!r}")
    try:
        if not isinstance(record, dict):
            raise FormatError(f"record is a {type(record).__name__}, expected a JSON object")
        kind = detect_format(record) if fmt == "auto" else fmt
        if kind == "openai":
            messages, images, videos = _parse_parts(record)
        else:
            messages, images, videos = _parse_tagged(record, missing_placeholders)
    except FormatError as e:  # PlaceholderMismatchError included; re-raised with the location
        raise type(e)(f"{where}: {e}") from None
    return Sample(
        id=sample_id(source, index, record),
        messages=messages,
        images=images,
        videos=videos,
        source=source,
        record_index=index,
        meta={"format": kind},
    )


# --- tagged family ------------------------------------------------------------------------------


def _conversation(record: dict) -> list:
    key = "conversations" if "conversations" in record else "messages" if "messages" in record else None
    if key is None:
        raise FormatError("no 'conversations' or 'messages' list")
    conv = record[key]
    if not isinstance(conv, list) or not conv:
        raise FormatError(f"'{key}' must be a non-empty list, got {_show(conv)}")
    return conv


def _role(msg: Any, k: int) -> str:
    if not isinstance(msg, dict):
        raise FormatError(f"message {k} is a {type(msg).__name__}, expected an object")
    raw = msg.get("role", msg.get("from"))
    if not isinstance(raw, str):
        raise FormatError(f"message {k} has no 'role' / 'from' string (keys: {sorted(msg)})")
    role = ROLE_MAP.get(raw.strip().lower())
    if role is None:
        raise FormatError(f"message {k}: unsupported role {raw!r}; supported: {sorted(ROLE_MAP)}")
    return role


def _parse_tagged(record: dict, missing: str):
    conv = _conversation(record)
    images = [_media(x, "image", f"image {i}") for i, x in enumerate(_media_list(record, "image"))]
    videos = [_media(x, "video", f"video {i}") for i, x in enumerate(_media_list(record, "video"))]
    messages: list[Message] = []
    system = record.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise FormatError(f"top-level 'system' must be a string, got {_show(system)}")
        if system:
            messages.append(Message("system", [TextPart(system)]))
    n_img = n_vid = 0
    for k, msg in enumerate(conv):
        role = _role(msg, k)
        text = msg.get("content", msg.get("value"))
        if not isinstance(text, str):
            raise FormatError(f"message {k} ({role}): content must be a string, got {_show(text)}")
        parts: list = []
        for piece in _TAG_RE.split(text):
            if piece == "<image>":
                parts.append(ImagePart(n_img))
                n_img += 1
            elif piece == "<video>":
                parts.append(VideoPart(n_vid))
                n_vid += 1
            elif piece:
                parts.append(TextPart(piece))
        messages.append(Message(role, parts))
    if messages and messages[0].role == "system" and system and len(messages) > 1 and messages[1].role == "system":
        raise FormatError("both a top-level 'system' and a system message; keep one")

    for kind, tag, n_tags, media, cls in (
        ("image", "<image>", n_img, images, ImagePart),
        ("video", "<video>", n_vid, videos, VideoPart),
    ):
        if n_tags == len(media):
            continue
        if n_tags == 0 and missing == "prepend":
            _prepend(messages, [cls(i) for i in range(len(media))], kind)
            continue
        raise PlaceholderMismatchError(
            f"{n_tags} {tag} placeholder(s) in the text but {len(media)} {kind}(s) listed; "
            f"each {kind} needs exactly one {tag}"
        )
    return messages, images, videos


def _prepend(messages: list[Message], parts: list, kind: str) -> None:
    user = next((m for m in messages if m.role == "user"), None)
    if user is None:
        raise PlaceholderMismatchError(f"{len(parts)} {kind}(s) without placeholders and no user turn to attach them to")
    # images go before videos: prepend videos after the images already placed at the front
    at = sum(1 for p in user.parts if isinstance(p, ImagePart)) if kind == "video" else 0
    user.parts[at:at] = parts


def _media_list(record: dict, kind: str) -> list:
    singular, plural = kind, kind + "s"
    if singular in record and plural in record:
        raise FormatError(f"both '{singular}' and '{plural}' keys; use one")
    value = record.get(plural, record.get(singular))
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)):
        return [value]
    if isinstance(value, list):
        return value
    raise FormatError(f"'{plural if plural in record else singular}' must be a string or a list, got {_show(value)}")


# --- parts family (OpenAI-style content lists) ----------------------------------------------------


def _parse_parts(record: dict):
    conv = record.get("messages")
    if not isinstance(conv, list) or not conv:
        raise FormatError(f"'messages' must be a non-empty list, got {_show(conv)}")
    # Parts like {"type": "image"} without a source take the next item of a top-level list.
    pool = {k: list(_media_list(record, k)) for k in ("image", "video")}
    images: list[MediaRef] = []
    videos: list[MediaRef] = []
    messages: list[Message] = []
    for k, msg in enumerate(conv):
        role = _role(msg, k)
        content = msg.get("content")
        if isinstance(content, str):
            messages.append(Message(role, [TextPart(content)] if content else []))
            continue
        if not isinstance(content, list):
            raise FormatError(f"message {k} ({role}): content must be a string or a list of parts, got {_show(content)}")
        parts: list = []
        for j, item in enumerate(content):
            at = f"message {k} part {j}"
            kind = _part_kind(item, at)
            if kind == "text":
                if not isinstance(item.get("text"), str):
                    raise FormatError(f"{at}: text part needs a string 'text', got {_show(item.get('text'))}")
                if item["text"]:
                    parts.append(TextPart(item["text"]))
                continue
            src = _part_source(item, kind)
            if src is None:
                if not pool[kind]:
                    raise PlaceholderMismatchError(
                        f"{at}: {kind} part names no {kind} and the record's '{kind}s' list is used up")
                src = pool[kind].pop(0)
            ref = _media(src, kind, at)
            ref.options.update({o: item[o] for o in MEDIA_OPTIONS if o in item})
            if kind == "image":
                parts.append(ImagePart(len(images)))
                images.append(ref)
            else:
                parts.append(VideoPart(len(videos)))
                videos.append(ref)
        messages.append(Message(role, parts))
    for kind, left in pool.items():
        if left:
            raise PlaceholderMismatchError(
                f"{len(left)} {kind}(s) in the record's '{kind}s' list are not referenced by any {kind} part")
    return messages, images, videos


def _part_kind(item: Any, at: str) -> str:
    if not isinstance(item, dict):
        raise FormatError(f"{at}: a part must be an object, got {_show(item)}")
    t = item.get("type")
    if t in ("image", "image_url"):
        return "image"
    if t in ("video", "video_url"):
        return "video"
    if t == "text":
        return "text"
    if t is None:  # the HF chat template's rule: the key names the kind
        for key, kind in (("image", "image"), ("image_url", "image"), ("video", "video"), ("text", "text")):
            if key in item:
                return kind
    raise FormatError(f"{at}: unknown part type {t!r} (keys {sorted(item)}); expected text, image, image_url or video")


def _part_source(item: dict, kind: str):
    for key in ((kind, f"{kind}_url") if kind == "image" else ("video", "video_url")):
        value = item.get(key)
        if isinstance(value, dict) and "url" in value:  # {"image_url": {"url": ...}}
            value = value["url"]
        if value is not None:
            return value
    return None


# --- media items --------------------------------------------------------------------------------


def _media(value: Any, kind: str, at: str) -> MediaRef:
    if isinstance(value, bytes):
        return MediaRef(kind, data=value)
    if isinstance(value, str):
        if not value.strip():
            raise FormatError(f"{at}: empty {kind} path")
        m = _DATA_URL_RE.match(value)
        if m:
            try:
                data = base64.b64decode(value[m.end():], validate=True)
            except (binascii.Error, ValueError) as e:
                raise FormatError(f"{at}: {kind} data URL is not valid base64 ({e})") from None
            return MediaRef(kind, data=data, options={"mime": m.group(1)} if m.group(1) else {})
        if value.startswith("file://"):
            value = value[len("file://"):]
        return MediaRef(kind, path=value)
    if isinstance(value, dict):  # Hugging Face datasets Image/Video feature: {"path", "bytes"}
        if value.get("bytes"):
            return MediaRef(kind, data=value["bytes"], path=value.get("path"))
        if isinstance(value.get("path"), str):
            return _media(value["path"], kind, at)
        raise FormatError(f"{at}: {kind} object needs 'path' or 'bytes' (keys {sorted(value)})")
    if isinstance(value, list) and kind == "video":
        if not value:
            raise FormatError(f"{at}: video frame list is empty")
        frames = []
        for i, f in enumerate(value):
            ref = _media(f, "image", f"{at} frame {i}")
            frames.append(ref.data if ref.data is not None else ref.path)
        return MediaRef("video", frames=frames)
    raise FormatError(f"{at}: {kind} must be a path, data URL, bytes or {{path, bytes}} object, got {_show(value)}")


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '…' if len(text) > 60 else text}"
