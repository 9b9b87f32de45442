"""Duplicate detection: an exact key per sample, and perceptual hashes for near-duplicate images.

Determinism: the pipeline walks samples in input order and keeps the FIRST occurrence; the index
below answers "does an earlier kept item match?" and reports the earliest-added match, so the
outcome never depends on hash-table order.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from typing import Hashable

import numpy as np
from PIL import Image, ImageOps

from processors.sample import ImagePart, Sample, TextPart, VideoPart
from processors.text import clean_text

# ---------------------------------------------------------------- exact key

_SEP_PART, _SEP_MSG, _SEP_MEDIA, _SEP_OPTIONS = "\x1f", "\x1e", "\x1d", "\x1c"


def normalized_text(text: str) -> str:
    """The text as the key sees it: cleaned, and every whitespace run made one space, so copies that
    differ only in line wrapping or entity escaping collide."""
    return " ".join(clean_text(text).split())


def exact_key(sample: Sample, media_bytes: list[bytes]) -> str:
    """sha1 hex over the conversation (roles, normalised text, where media sit) and the media bytes
    (in placeholder order: images then videos, as the caller lists them).

    Layout hashed: messages joined by \\x1e, each "role\\x1f" + parts joined by \\x1f, a text part
    as "t:" + normalized_text, an image part "i", a video part "v"; then \\x1d and the sha1 hex
    of each media item joined by \\x1d; then, only when some item carries per-item options
    (resized_height, min_pixels, fps, ...: they change the tensors), \\x1c and the JSON list of every
    item's options (images then videos, sorted keys). The sample id and source are left out on
    purpose: the same record in two files is a duplicate.
    """
    messages = []
    for m in sample.messages:
        parts = []
        for p in m.parts:
            if isinstance(p, TextPart):
                parts.append("t:" + normalized_text(p.text))
            elif isinstance(p, ImagePart):
                parts.append("i")
            elif isinstance(p, VideoPart):
                parts.append("v")
        messages.append(_SEP_PART.join([m.role, *parts]))
    media = [hashlib.sha1(b).hexdigest() for b in media_bytes]
    payload = _SEP_MSG.join(messages) + _SEP_MEDIA + _SEP_MEDIA.join(media)
    options = [dict(ref.options) for ref in (*sample.images, *sample.videos)]
    if any(options):
        payload += _SEP_OPTIONS + json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- perceptual hash

HASH_SIZE = 8  # 8x8 low frequencies -> 64-bit hash
_IMG_SIZE = 32  # DCT over a 32x32 grayscale thumbnail (the usual pHash setting)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(_IMG_SIZE)


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    opened = Image.open(io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image)
    # Our own file handle, so it is safe to ask a JPEG for a reduced-scale decode (much faster).
    opened.draft("RGB", (4 * _IMG_SIZE, 4 * _IMG_SIZE))
    return opened


def phash(image) -> int:
    """64-bit DCT perceptual hash (PIL image, uint8 array, encoded bytes or a path).

    Grayscale, 32x32 box-filter thumbnail, 2-D DCT-II, the 8x8 lowest frequencies; a bit is set
    where the coefficient is above the median of those 64 (DC excluded from the median, since it
    only tracks brightness). Survives resizing and recompression; a different picture differs in
    about half the bits.
    """
    img = ImageOps.exif_transpose(_to_pil(image)).convert("L").resize((_IMG_SIZE, _IMG_SIZE), Image.Resampling.BOX)
    pixels = np.asarray(img, dtype=np.float64)
    coeffs = (_DCT @ pixels @ _DCT.T)[:HASH_SIZE, :HASH_SIZE].ravel()
    median = np.median(coeffs[1:])
    bits = coeffs > median
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class NearDuplicateIndex:
    """Finds an earlier entry within `threshold` bits without comparing against every entry.

    An entry is one 64-bit hash or a tuple of them (a multi-image sample, images in order); two
    entries match when they have the same number of hashes and every position is within
    `threshold` bits (the reported distance is the largest of those).

    Multi-index hashing: 64 bits are cut into threshold + 1 bands; two hashes within `threshold`
    bits agree exactly on at least one band (pigeonhole). Band tables are kept per (number of
    hashes, position), so a match of an n-hash query shares a band value with it at EVERY position.
    A single hash compares only the entries sharing one of its band values (the first in-threshold
    entry of each bucket is that bucket's earliest). A tuple takes, position by position, the
    entries sharing a band value there and intersects those sets, starting from the position with
    the fewest bucket entries (so many samples sharing one image, a logo or a reference picture,
    cost no more than their other images' buckets); the survivors are checked in insertion order.
    Use `check_and_add` in input order: a duplicate is reported and not added, so kept items are the
    only representatives and the first occurrence always wins.
    """

    def __init__(self, threshold: int = 6, bits: int = 64):
        if not 0 <= threshold < bits:
            raise ValueError(f"threshold must be in 0..{bits - 1}, got {threshold}")
        self.threshold = threshold
        self.bits = bits
        n_bands = threshold + 1
        edges = [round(i * bits / n_bands) for i in range(n_bands + 1)]
        self._bands = [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:])]
        # (number of hashes, position) -> one {band value: [entry positions, in insertion order]} per band
        self._tables: dict[tuple[int, int], list[dict[int, list[int]]]] = {}
        self._keys: list[Hashable] = []
        self._hashes: list[tuple[int, ...]] = []
        self.comparisons = 0  # full Hamming checks made, to see the banding at work

    def __len__(self) -> int:
        return len(self._keys)

    @staticmethod
    def _as_tuple(h: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
        t = (int(h),) if isinstance(h, (int, np.integer)) else tuple(int(x) for x in h)
        if not t:
            raise ValueError("an entry needs at least one hash")
        return t

    def add(self, key: Hashable, h: int | tuple[int, ...]) -> None:
        t = self._as_tuple(h)
        pos = len(self._keys)
        self._keys.append(key)
        self._hashes.append(t)
        for i, x in enumerate(t):
            tables = self._tables.get((len(t), i))
            if tables is None:
                tables = self._tables[(len(t), i)] = [defaultdict(list) for _ in self._bands]
            for table, (shift, mask) in zip(tables, self._bands):
                table[(x >> shift) & mask].append(pos)

    def _distance(self, a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
        """Largest per-position distance, or None as soon as one position is over the threshold."""
        if len(a) != len(b):
            return None
        worst = 0
        for x, y in zip(a, b):
            d = hamming(x, y)
            if d > self.threshold:
                return None
            worst = max(worst, d)
        return worst

    def query(self, h: int | tuple[int, ...]) -> tuple[Hashable, int] | None:
        """(key, distance) of the earliest-added entry within the threshold, or None."""
        t = self._as_tuple(h)
        n = len(t)
        if n == 1:
            best = None  # fast path: the first in-threshold entry of each bucket is that bucket's earliest
            for table, (shift, mask) in zip(self._tables.get((1, 0), ()), self._bands):
                for pos in table.get((t[0] >> shift) & mask, ()):
                    if best is not None and pos >= best:
                        break  # bucket lists are in insertion order
                    self.comparisons += 1
                    if self._distance(t, self._hashes[pos]) is not None:
                        best = pos
                        break
            return None if best is None else (self._keys[best], self._distance(t, self._hashes[best]))
        # several hashes: a bucket's first entry may be near on one image and far on another, so the
        # candidates are every entry sharing a band value at every position (a match always does).
        per_position = []
        for i, x in enumerate(t):
            tables = self._tables.get((n, i))
            if tables is None:
                return None  # no entry with n hashes yet
            buckets = [b for table, (shift, mask) in zip(tables, self._bands)
                       if (b := table.get((x >> shift) & mask))]
            if not buckets:
                return None
            per_position.append((sum(map(len, buckets)), i, buckets))
        per_position.sort(key=lambda e: (e[0], e[1]))
        _, _, buckets = per_position[0]
        candidates = set().union(*buckets)
        for size, i, buckets in per_position[1:]:
            if size <= len(candidates):
                candidates.intersection_update(*[set().union(*buckets)])
            else:  # its buckets are the bigger side: keep the candidates sharing a band value there
                keys = [((t[i] >> shift) & mask, shift, mask) for shift, mask in self._bands]
                hashes = self._hashes
                candidates = {c for c in candidates
                              if any((hashes[c][i] >> shift) & mask == k for k, shift, mask in keys)}
            if not candidates:
                return None
        for pos in sorted(candidates):
            self.comparisons += 1
            d = self._distance(t, self._hashes[pos])
            if d is not None:
                return self._keys[pos], d
        return None

    def check_and_add(self, key: Hashable, h: int | tuple[int, ...]) -> tuple[Hashable, int] | None:
        """The earlier match if `h` is a near duplicate (then nothing is added), else add and return None."""
        match = self.query(h)
        if match is None:
            self.add(key, h)
        return match
