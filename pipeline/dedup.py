"""Exact and near-duplicate detection that keeps the FIRST occurrence in input order, whatever
the number of workers or the order in which units finish.

Why an index pass rather than dedup inside the unit tasks: "first" is a global notion. Each unit
first computes, in parallel, a small key per record (cleaned text + media content hashes, and a
64-bit pHash per image for image samples) for the records that survive the cheap stages; the driver
walks those keys in unit order and tells each unit which of its records are duplicates (and of
whom). Units stay independent and resumable; the keys are cached in OUT/parts/index/ so a resumed
job does not recompute them. The same pass makes sample ids unique (a record whose id was already
used gets `{id}~{sha1(source:index)[:8]}`), because ids are the join key of manifest and scores.

Near-duplicates are looked for among image samples without videos: two samples with the same
number of images whose images' 64-bit pHashes (filters.dedup), position by position, are all within
`phash_threshold` bits are near-duplicates whatever their text; filters.dedup.NearDuplicateIndex
finds candidates by band matching at every image position, so the search is near-linear. Keep it off
for VQA corpora that ask many questions about one image.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable

from processors.formats import sample_id

_BIG_FILE = 64 << 20


def content_digest(media: Any) -> str:
    """sha1 of media bytes; for files over 64 MiB, of (size, first and last 8 MiB) to bound I/O."""
    h = hashlib.sha1()
    if isinstance(media, (list, tuple)):
        for m in media:
            h.update(content_digest(m).encode())
        return h.hexdigest()
    if isinstance(media, (bytes, bytearray, memoryview)):
        h.update(media)
        return h.hexdigest()
    size = os.path.getsize(media)
    with open(media, "rb") as f:
        if size <= _BIG_FILE:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(f.read(8 << 20))
            f.seek(-(8 << 20), os.SEEK_END)
            h.update(f.read(8 << 20))
    return h.hexdigest()


def media_bytes(media: Any) -> bytes:
    """What the exact key hashes for one media item: its bytes (≤ 64 MiB) or a bounded digest."""
    if isinstance(media, (bytes, bytearray, memoryview)):
        return bytes(media)
    if isinstance(media, (list, tuple)) or os.path.getsize(media) > _BIG_FILE:
        return content_digest(media).encode()
    with open(media, "rb") as f:
        return f.read()


def exact_key(prepared) -> str:
    """Same cleaned conversation + same media bytes in the same places → same key (filters.dedup)."""
    from filters.dedup import exact_key as _key

    return _key(prepared.sample, [media_bytes(m) for m in prepared.media])


def image_phashes(prepared) -> list[int]:
    """pHash of every image of the sample, in placeholder order."""
    from filters.dedup import phash

    return [phash(m) for m in prepared.media[:len(prepared.sample.images)]]


def phash_eligible(prepared) -> bool:
    s = prepared.sample
    return len(s.images) >= 1 and not s.videos


class Deduper:
    """Feed index rows in input order; get back per record a drop decision and/or a new id."""

    def __init__(self, exact: bool, phash: bool, threshold: int):
        from filters.dedup import NearDuplicateIndex

        self.exact, self.phash, self.threshold = exact, phash, threshold
        self.first_by_key: dict[str, str] = {}
        self.ids: set[str] = set()
        self.near = NearDuplicateIndex(threshold) if phash else None

    def feed(self, source: str, index: int, sid: str, key: str | None, ph: int | tuple[int, ...] | None) -> dict:
        ph = _phashes(ph)
        decision: dict = {}
        if sid in self.ids:
            sid = f"{sid}~{sample_id(source, index, None)[:8]}"
            decision["id"] = sid
        self.ids.add(sid)
        if key is None:          # the record fails an earlier stage; it is nobody's first occurrence
            return decision
        if self.exact and key in self.first_by_key:
            decision["drop"] = ("exact_dup", None, f"exact duplicate of {self.first_by_key[key]}")
            return decision
        if self.near is not None and ph is not None:
            match = self.near.check_and_add(sid, ph)
            if match is not None:
                first, dist = match
                what = "image" if len(ph) == 1 else f"each of the {len(ph)} images"
                decision["drop"] = ("near_dup", float(dist),
                                    f"{what} within {dist} bits (pHash) of {first}'s (threshold {self.threshold})")
                return decision
        self.first_by_key.setdefault(key, sid)
        return decision


def _phashes(value) -> tuple[int, ...] | None:
    """The index column: a list of hashes (an index written before multi-image support: one int)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value) or None
    return (int(value),)


def decide(unit_rows: Iterable[tuple[str, list[dict]]], exact: bool, phash: bool, threshold: int) -> dict[str, dict]:
    """{unit: {record_index: decision}} from index rows given unit by unit in input order."""
    d = Deduper(exact, phash, threshold)
    out: dict[str, dict] = {}
    for unit, rows in unit_rows:
        decisions = {}
        for r in rows:
            dec = d.feed(r["source"], r["record_index"], r["id"], r.get("key"), _phashes(r.get("phash")))
            if dec:
                decisions[int(r["record_index"])] = dec
        out[unit] = decisions
    return out
