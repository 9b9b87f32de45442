"""The canonical Sample every input format is parsed into, and the EncodedSample the encoder returns.

A Sample is plain data (json-serialisable through `to_dict`) so it can cross Ray process borders.
Message content is an ordered list of parts; image/video parts refer to `Sample.images` /
`Sample.videos` by index, in placeholder order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TextPart:
    text: str
    type: str = "text"


@dataclass
class ImagePart:
    index: int  # into Sample.images
    type: str = "image"


@dataclass
class VideoPart:
    index: int  # into Sample.videos
    type: str = "video"


Part = TextPart | ImagePart | VideoPart


@dataclass
class Message:
    role: str  # "system" | "user" | "assistant"
    parts: list[Part]

    @property
    def text(self) -> str:
        """Concatenated text parts (media parts omitted)."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass
class MediaRef:
    """One image or video as the record names it.

    `path`: a path as written in the record (resolved against a media root later), or None.
    `data`: raw bytes (e.g. from a webdataset tar or a data: URL), or None.
    `frames`: for a video given as a list of images, the list of frame paths/bytes.
    `options`: per-item overrides from the record (min_pixels, max_pixels, fps, nframes,
    video_start, video_end, resized_height, resized_width, ...).
    """

    kind: str  # "image" | "video"
    path: str | None = None
    data: bytes | None = None
    frames: list[Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    id: str
    messages: list[Message]
    images: list[MediaRef] = field(default_factory=list)
    videos: list[MediaRef] = field(default_factory=list)
    source: str = ""
    record_index: int = -1
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        def media(m: MediaRef) -> dict:
            return {"kind": m.kind, "path": m.path, "data": m.data, "frames": m.frames, "options": m.options}

        return {
            "id": self.id,
            "messages": [
                {"role": m.role, "parts": [p.__dict__.copy() for p in m.parts]} for m in self.messages
            ],
            "images": [media(m) for m in self.images],
            "videos": [media(m) for m in self.videos],
            "source": self.source,
            "record_index": self.record_index,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Sample":
        def part(p: dict) -> Part:
            t = p["type"]
            if t == "text":
                return TextPart(p["text"])
            if t == "image":
                return ImagePart(p["index"])
            if t == "video":
                return VideoPart(p["index"])
            raise ValueError(f"unknown part type {t!r}")

        def media(m: dict) -> MediaRef:
            return MediaRef(m["kind"], m.get("path"), m.get("data"), m.get("frames"), dict(m.get("options") or {}))

        return cls(
            id=d["id"],
            messages=[Message(m["role"], [part(p) for p in m["parts"]]) for m in d["messages"]],
            images=[media(m) for m in d.get("images", [])],
            videos=[media(m) for m in d.get("videos", [])],
            source=d.get("source", ""),
            record_index=d.get("record_index", -1),
            meta=dict(d.get("meta") or {}),
        )


@dataclass
class EncodedSample:
    """Model-ready tensors for one sample, named as the Hugging Face processor names them.

    input_ids int32 [L]; labels int32 [L] (-100 where unsupervised); position_ids int32 [3, L]
    (M-RoPE; [1, L] plain positions for qwen-vl); pixel_values uint8 [N, 3·tp·p²] (1176; 1536 for qwen3-vl; all images then
    all videos, in placeholder order; qwen-vl: uint8 [k, 448, 448, 3]); image_grid_thw /
    video_grid_thw int32 [k, 3]; second_per_grid_ts float32 [v]; rope_delta int.
    meta: json-serialisable facts (sizes before/after resize, durations, frame indices and
    timestamps, boxes before/after, token counts).
    """

    id: str
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    pixel_values: np.ndarray
    image_grid_thw: np.ndarray
    video_grid_thw: np.ndarray
    second_per_grid_ts: np.ndarray
    rope_delta: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    ARRAY_FIELDS = (
        "input_ids",
        "labels",
        "position_ids",
        "pixel_values",
        "image_grid_thw",
        "video_grid_thw",
        "second_per_grid_ts",
    )

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.ARRAY_FIELDS}
