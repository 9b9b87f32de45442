import hashlib
import io
import random

import numpy as np
import pytest
from PIL import Image

from filters.dedup import NearDuplicateIndex, exact_key, hamming, normalized_text, phash
from processors.sample import ImagePart, Message, Sample, TextPart


def scene(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """A smooth random picture (upscaled noise plus a bright disc), different for each seed."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8))
    img = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    y, x = np.mgrid[0:height, 0:width]
    cx, cy = rng.integers(40, width - 40), rng.integers(40, height - 40)
    img[(x - cx) ** 2 + (y - cy) ** 2 < 30 ** 2] += 90
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ------------------------------------------------------------------ exact key

def convo(user_parts, answer, sid="a", source="x.json"):
    return Sample(sid, [Message("user", user_parts), Message("assistant", [TextPart(answer)])], source=source)


def test_exact_key_is_sha1_of_the_documented_layout():
    s = convo([ImagePart(0), TextPart("What is  this?")], "A cat &amp; a dog.")
    media = [b"\x89PNG fake bytes"]
    payload = ("user\x1fi\x1ft:What is this?" + "\x1e" + "assistant\x1ft:A cat & a dog."
               + "\x1d" + hashlib.sha1(media[0]).hexdigest())
    assert exact_key(s, media) == hashlib.sha1(payload.encode()).hexdigest()


def test_exact_key_ignores_id_source_and_cosmetic_text_differences():
    a = convo([ImagePart(0), TextPart("What is this?")], "A cat.", sid="1", source="a.json")
    b = convo([ImagePart(0), TextPart("What   is\nthis? ")], "A cat.", sid="2", source="b.jsonl")
    assert exact_key(a, [b"img"]) == exact_key(b, [b"img"])


def test_exact_key_changes_with_content_media_and_layout():
    base = convo([ImagePart(0), TextPart("What is this?")], "A cat.")
    key = exact_key(base, [b"img"])
    assert exact_key(base, [b"img2"]) != key
    assert exact_key(convo([ImagePart(0), TextPart("What is this?")], "A dog."), [b"img"]) != key
    assert exact_key(convo([TextPart("What is this?"), ImagePart(0)], "A cat."), [b"img"]) != key
    assert exact_key(convo([ImagePart(0), TextPart("what is this?")], "A cat."), [b"img"]) != key  # case matters
    swapped = Sample("a", [Message("assistant", base.messages[0].parts), Message("user", base.messages[1].parts)])
    assert exact_key(swapped, [b"img"]) != key


def test_normalized_text():
    assert normalized_text("  Tom &amp;\n\n Jerry\t!") == "Tom & Jerry !"


# ------------------------------------------------------------------ perceptual hash

def test_phash_finds_resized_and_recompressed_copy_not_a_different_image():
    original = scene(1)
    h = phash(original)
    copy = jpeg_bytes(original.resize((200, 150), Image.Resampling.BILINEAR), quality=60)
    assert hamming(h, phash(copy)) <= 4
    # other pictures are far away
    others = [hamming(h, phash(scene(seed))) for seed in range(2, 12)]
    assert min(others) >= 12, others


def test_phash_inputs_agree_and_are_deterministic(tmp_path):
    img = scene(3)
    path = tmp_path / "s.png"
    img.save(path)
    png = path.read_bytes()
    h = phash(img)
    assert h == phash(np.asarray(img)) == phash(png) == phash(str(path)) == phash(scene(3))
    assert 0 <= h < 2 ** 64
    assert bin(h).count("1") in range(24, 41)  # median split: about half the bits set


def test_hamming():
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(2 ** 64 - 1, 0) == 64


# ------------------------------------------------------------------ near-duplicate index

def brute_force(hashes, h, threshold):
    for i, other in enumerate(hashes):
        if hamming(h, other) <= threshold:
            return i, hamming(h, other)
    return None


def flip(h: int, bits: list[int]) -> int:
    for b in bits:
        h ^= 1 << b
    return h


@pytest.mark.parametrize("threshold", [0, 3, 6, 10])
def test_index_matches_brute_force(threshold):
    rng = random.Random(threshold)
    base = [rng.getrandbits(64) for _ in range(1500)]
    index = NearDuplicateIndex(threshold)
    for i, h in enumerate(base):
        index.add(i, h)
    queries = []
    for _ in range(300):
        src = rng.choice(base)
        d = rng.randint(0, threshold + 2)
        queries.append(flip(src, rng.sample(range(64), d)))
    queries += [rng.getrandbits(64) for _ in range(100)]
    for q in queries:
        assert index.query(q) == brute_force(base, q, threshold)


def test_index_compares_few_candidates():
    rng = random.Random(7)
    index = NearDuplicateIndex(threshold=6)
    for i in range(20000):
        index.add(i, rng.getrandbits(64))
    index.comparisons = 0
    for _ in range(200):
        index.query(rng.getrandbits(64))
    # 7 bands of ~9 bits: about 7 * 20000 / 2**9 ≈ 270 candidates per query, not 20000
    assert index.comparisons / 200 < 1000


def test_first_occurrence_wins_and_duplicates_are_not_added():
    index = NearDuplicateIndex(threshold=4)
    a = 0x0123456789ABCDEF
    b = flip(a, [0, 1, 2])  # 3 bits from a
    c = flip(b, [10, 11, 12])  # 3 from b, 6 from a
    assert index.check_and_add("a", a) is None
    assert index.check_and_add("b", b) == ("a", 3)
    # b was a duplicate, so it is not a representative: c is compared with a only (6 bits) and kept
    assert index.check_and_add("c", c) is None
    assert len(index) == 2
    # b lies 3 bits from both a and c: the earliest-added match is reported
    assert index.query(b) == ("a", 3)
    later_first = NearDuplicateIndex(threshold=4)
    later_first.add("c", c)
    later_first.add("a", a)
    assert later_first.query(b) == ("c", 3)


def test_index_rejects_bad_threshold():
    with pytest.raises(ValueError, match="threshold must be in 0..63"):
        NearDuplicateIndex(64)


# ------------------------------------------------------------------ multi-image entries

def test_index_matches_multi_image_entries_position_by_position():
    idx = NearDuplicateIndex(threshold=3)
    a, b, c = 0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210, 0x0F0F_0F0F_F0F0_F0F0
    assert idx.check_and_add("pair", (a, b)) is None
    assert idx.check_and_add("first-only", (a ^ 0b1, c)) is None       # first image near, second not
    assert idx.query((a ^ 0b11, b ^ 0b1)) == ("pair", 2)                 # worst position counts
    assert idx.query((b, a)) is None                                     # order matters
    assert idx.query(a) is None and idx.query((a, b, c)) is None         # the number of images must match
    assert idx.query((a ^ 0b1111, b)) is None                            # 4 bits > threshold 3
    # a candidate that matches only the first image must not hide a later full match
    idx2 = NearDuplicateIndex(threshold=3)
    idx2.add("decoy", (a, c))
    idx2.add("real", (a ^ 0b1, b))
    assert idx2.query((a, b ^ 0b1)) == ("real", 1)


def brute_force_multi(entries, h, threshold):
    """(key, distance) of the earliest entry with as many hashes as `h`, each position within threshold."""
    for key, e in entries:
        if len(e) == len(h) and all(hamming(x, y) <= threshold for x, y in zip(e, h)):
            return key, max(hamming(x, y) for x, y in zip(e, h))
    return None


def near(rng, h, max_bits):
    return flip(h, rng.sample(range(64), rng.randint(0, max_bits)))


@pytest.mark.parametrize("threshold", [0, 5, 9])
def test_multi_image_index_agrees_with_brute_force(threshold):
    rng = random.Random(11 + threshold)
    templates = [rng.getrandbits(64) for _ in range(4)]  # logos / reference images many samples share
    idx = NearDuplicateIndex(threshold=threshold)
    entries = []
    for i in range(800):
        n = rng.choice([1, 2, 3])
        r = rng.random()
        if entries and r < 0.3:  # a near copy of a kept entry
            base = rng.choice(entries)[1]
            h = tuple(near(rng, x, threshold + 2) for x in base)
        elif r < 0.7:  # some positions hold a (possibly re-encoded) shared image
            h = tuple(near(rng, rng.choice(templates), 2) if rng.random() < 0.6 else rng.getrandbits(64)
                      for _ in range(n))
        else:
            h = tuple(rng.getrandbits(64) for _ in range(n))
        want = brute_force_multi(entries, h, threshold)
        assert idx.query(h) == want, i
        got = idx.check_and_add(i, h)
        assert got == want, i
        if got is None:
            entries.append((i, h))
    assert len(idx) == len(entries)


def test_multi_image_index_shared_first_image_stays_near_linear():
    # Many samples share their first image (a template) and differ in the second: candidates must
    # come from the second image's bands too, not from every entry sharing the first.
    rng = random.Random(3)
    template = rng.getrandbits(64)
    n = 3000
    idx = NearDuplicateIndex(threshold=6)
    entries = []
    for i in range(n):
        h = (template, rng.getrandbits(64))
        assert idx.check_and_add(i, h) is None  # random second images: nothing to drop
        entries.append((i, h))
    # 7 bands of ~9 bits: about 7 * i / 2**9 candidates at the i-th entry (~20 per entry overall),
    # where walking the first image's buckets cost i (1500 per entry)
    assert idx.comparisons < 40 * n, idx.comparisons

    queries = []
    for _ in range(300):
        _, (a, b) = rng.choice(entries)
        queries.append((near(rng, a, 8), near(rng, b, 8)))      # in or just over the threshold
    queries += [(template, rng.getrandbits(64)) for _ in range(100)]
    queries += [(rng.getrandbits(64), rng.choice(entries)[1][1]) for _ in range(50)]  # other first image
    queries += [(template,), (template, template, template)]                        # other lengths
    table = np.array([e for _, e in entries], dtype=np.uint64)  # brute force, vectorised: (n, 2)

    def brute_force_pairs(q):
        if len(q) != 2:
            return brute_force_multi(entries, q, 6)
        x = table ^ np.array(q, dtype=np.uint64)
        dist = np.unpackbits(x.view(np.uint8).reshape(n, 2, 8), axis=-1).sum(-1)  # per-position popcount
        hits = np.flatnonzero((dist <= 6).all(axis=1))
        return (int(hits[0]), int(dist[hits[0]].max())) if len(hits) else None

    idx.comparisons = 0
    for q in queries:
        assert idx.query(q) == brute_force_pairs(q), q
    assert idx.comparisons / len(queries) < 200, idx.comparisons  # ~40 per query, not 3000


def test_exact_key_counts_per_item_media_options():
    # Same text and image but another resized size (or fps) gives other tensors: not a duplicate.
    from processors.sample import MediaRef

    def with_opts(**opts):
        s = convo([ImagePart(0), TextPart("What is this?")], "A cat.")
        s.images = [MediaRef("image", path="a.jpg", options=opts)]
        return s

    plain = with_opts()
    assert exact_key(plain, [b"img"]) == exact_key(convo([ImagePart(0), TextPart("What is this?")], "A cat."), [b"img"])
    small = exact_key(with_opts(resized_height=280, resized_width=280), [b"img"])
    assert small != exact_key(plain, [b"img"])
    assert small != exact_key(with_opts(resized_height=560, resized_width=560), [b"img"])
    assert small == exact_key(with_opts(resized_width=280, resized_height=280), [b"img"])   # key order
    payload = ("user\x1fi\x1ft:What is this?\x1eassistant\x1ft:A cat.\x1d" + hashlib.sha1(b"img").hexdigest()
               + '\x1c[{"resized_height": 280, "resized_width": 280}]')
    assert small == hashlib.sha1(payload.encode()).hexdigest()
