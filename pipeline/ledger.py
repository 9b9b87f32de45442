"""Where every input record ends: kept, dropped (stage, rule, value) or error (stage, type, message).

An `Outcome` is what a record's trip through the stages returns; `ledger_row` and `manifest_row`
turn it into the rows of the unit's parquet parts. `accounting` checks
`inputs == kept + dropped + errors` on a merged ledger.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

STAGES = ("read", "clean", "filter", "encode", "write", "select")


@dataclass
class Outcome:
    id: str
    source: str
    record_index: int
    status: str = "kept"                   # kept | dropped | error
    stage: str | None = None
    rule: str | None = None
    value: float | None = None
    message: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def dropped(cls, id, source, index, stage, rule, value=None, message="") -> "Outcome":
        return cls(id, source, index, "dropped", stage, rule, None if value is None else float(value), message)

    @classmethod
    def error(cls, id, source, index, stage, exc_or_type, message=None) -> "Outcome":
        """An error row; the type is an exception's `code` (processors.errors) or its class name."""
        if isinstance(exc_or_type, BaseException):
            etype = getattr(exc_or_type, "code", None) or type(exc_or_type).__name__
            message = message or f"{type(exc_or_type).__name__}: {exc_or_type}"
        else:
            etype = str(exc_or_type)
        return cls(id, source, index, "error", stage, etype, None, (message or "")[:2000])


def ledger_row(unit: str, o: Outcome) -> dict:
    return {"id": o.id, "source": o.source, "record_index": o.record_index, "unit": unit, "status": o.status,
            "stage": o.stage, "rule": o.rule, "value": o.value, "message": o.message}


def manifest_row(unit: str, shard: str, key: str, meta: dict, pixel_rows: int, sample_bytes: int | None = None,
                 media_bytes: int | None = None) -> dict:
    images = meta.get("images") or []
    videos = meta.get("videos") or []
    return {
        "id": meta["id"], "source": meta["source"], "record_index": int(meta["record_index"]),
        "unit": unit, "shard": shard, "key": key, "preset": meta.get("preset"),
        "n_tokens": meta.get("n_tokens"), "n_text_tokens": meta.get("n_text_tokens"),
        "n_image_tokens": meta.get("n_image_tokens"), "n_video_tokens": meta.get("n_video_tokens"),
        "n_supervised_tokens": meta.get("n_supervised_tokens"),
        "n_images": len(images), "n_videos": len(videos), "n_boxes": int(meta.get("n_boxes") or 0),
        "pixel_rows": int(pixel_rows),
        "image_sizes": [list(map(int, i["original_size"])) for i in images],
        "image_resized": [list(map(int, i["resized_size"])) for i in images],
        "video_durations": [_f(v.get("duration")) for v in videos],
        "video_fps": [_f(v.get("video_fps")) for v in videos],
        "video_sample_fps": [_f(v.get("sample_fps")) for v in videos],
        "video_frames": [len(v.get("frame_indices") or []) for v in videos],
        "video_sizes": [list(map(int, v["original_size"])) for v in videos],
        "video_resized": [list(map(int, v["resized_size"])) for v in videos],
        "sample_bytes": sample_bytes,
        "media_bytes": media_bytes,
    }


def _f(x) -> float | None:
    return None if x is None else float(x)


@dataclass
class Accounting:
    inputs: int
    kept: int
    dropped: int
    errors: int
    reasons: Counter            # (status, stage, rule) -> count, for dropped and error rows

    @property
    def balanced(self) -> bool:
        return self.inputs == self.kept + self.dropped + self.errors


def accounting(ledger: pa.Table, expected_inputs: int | None = None) -> Accounting:
    """Counts of a ledger. `inputs` is the independently counted number of records when given."""
    status = ledger.column("status").to_pylist()
    counts = Counter(status)
    reasons: Counter = Counter()
    mask = pc.not_equal(ledger.column("status"), "kept")
    rest = ledger.filter(mask)
    for st, stage, rule in zip(rest.column("status").to_pylist(), rest.column("stage").to_pylist(),
                               rest.column("rule").to_pylist()):
        reasons[(st, stage, rule)] += 1
    inputs = ledger.num_rows if expected_inputs is None else expected_inputs
    return Accounting(inputs, counts.get("kept", 0), counts.get("dropped", 0), counts.get("error", 0), reasons)
