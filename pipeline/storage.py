"""How a sample's pixels are stored in a shard: each pixel once, losslessly compressed.

Shard format 2 (format 1 stored `pixel_values` as one raw `.npy` member: every image twice, because
patchify repeats a still image to `temporal_patch_size` frames, and nothing compressed). Format 2
stores the distinct frames behind the patch rows (`processors.patches.stored_frames`: an image's
temporal copy and a video's padding frame are left out), one member per frame, in the job's codec:

    {key}.img000.png            image 0, its one resized frame (uint8 H x W x 3)
    {key}.vid000.f0003.png      video 0, sampled frame 3
    {key}.pixels.json           format, codec, patch geometry, items (kind, size, members, crc32)

The consumer rebuilds `pixel_values` with `patchify` and the geometry written beside the frames
(taken from the sample's preset when it was written), so it is bit-identical to what the encoder
made; the writer checks that before anything lands in the shard. Every member carries a crc32, so a
truncated or corrupt member is an error naming the shard, the sample and the member, never garbage.

Codecs (chosen by measurement, docs/storage.md; `storage.codec` in the job config), all lossless:
    zstd-delta  (default) green subtracted from red/blue, each row minus the row above (uint8 wrap),
                zstd level 1, no header: the only candidate with both <= 1/4 of format 1 on photos
                and >= 100 loader samples/s per core at ~1 000 tokens
    webp        Pillow lossless WebP (method 0): the smallest on photos and video, decodes ~3x
                slower; a frame over WebP's 16383-pixel side limit is written as PNG
    png         Pillow PNG, zlib level 6: any viewer opens it, webdataset decodes it; slowest write
    zstd        the raw frame as .npy, zstd level 3 (`zstd -d` + numpy.load open it): decodes
                fastest on flat documents/screenshots, ~1/2 of format 1 on photos
    npy         the raw frame as .npy, uncompressed (each pixel once, no compression)
    lz4-delta   zstd-delta's filter, then LZ4 (4-byte length + raw block, pyarrow's liblz4): for
                training-speed-bound readers; decompresses ~2x faster, ~1.5-1.8x the bytes on photos
"""
from __future__ import annotations

import io
import json
import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 2
CODECS = ("png", "webp", "zstd-delta", "zstd", "npy", "lz4-delta")
DEFAULT_CODEC = "zstd-delta"
DESCRIPTOR = "pixels.json"          # member suffix of the per-sample pixel descriptor
V1_MEMBER = "pixel_values.npy"      # format 1: raw patch rows
WEBP_MAX_SIDE = 16383
_STEM = {"image": "img", "video": "vid"}
_EXT = {"png": "png", "webp": "webp", "zstd-delta": "delta.zst", "zstd": "npy.zst", "npy": "npy",
        "lz4-delta": "delta.lz4"}
_CODEC_OF_EXT = {v: k for k, v in _EXT.items()}
# measured on the filtered frames (docs/storage.md): level 1 is both the smallest on photos, documents,
# screenshots and drawn scenes (0.451 vs 0.486 at 3 and 0.464 at 6 on photos) and ~9x faster than 6
ZSTD_DELTA_LEVEL = 1
# lz4-delta's LZ4 level (write side only: the block format and its decoder are the same at every
# level). Measured on the filtered frames (docs/storage.md "lz4-delta"): 1 = LZ4 fast, 2+ = LZ4 HC.
LZ4_DELTA_LEVEL = 1


class StorageError(ValueError):
    """A shard's pixels cannot be written or read back exactly; the message names what and where."""


@dataclass(frozen=True)
class Geometry:
    """The patch layout constants a rebuild needs (from the sample's preset at write time)."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    fixed_size: tuple[int, int] | None = None   # qwen-vl: pixel_values are whole frames [k, H, W, 3]

    @classmethod
    def of(cls, preset) -> "Geometry":
        return cls(int(preset.patch_size), int(preset.merge_size), int(preset.temporal_patch_size),
                   tuple(preset.fixed_size) if preset.fixed_size else None)

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size ** 2

    def to_dict(self) -> dict:
        return {"patch_size": self.patch_size, "merge_size": self.merge_size,
                "temporal_patch_size": self.temporal_patch_size,
                "fixed_size": list(self.fixed_size) if self.fixed_size else None}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        fs = d.get("fixed_size")
        return cls(int(d["patch_size"]), int(d["merge_size"]), int(d["temporal_patch_size"]),
                   tuple(int(v) for v in fs) if fs else None)


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise ValueError(f"storage.codec {codec!r} is not one of {list(CODECS)} (lossless all; default {DEFAULT_CODEC})")
    return codec


# -- frame codecs ------------------------------------------------------------------------------------

def encode_frame(frame: np.ndarray, codec: str) -> tuple[str, bytes]:
    """(member extension, bytes) of one uint8 [H, W, 3] frame; deterministic for the same input."""
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    if codec == "webp" and max(frame.shape[:2]) > WEBP_MAX_SIDE:
        codec = "png"
    if codec in ("png", "webp"):
        from PIL import Image

        buf = io.BytesIO()
        img = Image.fromarray(frame)
        if codec == "png":
            img.save(buf, "PNG", compress_level=6)
        else:
            img.save(buf, "WEBP", lossless=True, method=0, quality=0, exact=True)
        return _EXT[codec], buf.getvalue()
    if codec == "npy":
        return _EXT[codec], _npy(frame)
    if codec == "zstd":
        return _EXT[codec], _zstd(3).compress(_npy(frame), asbytes=True)
    if codec in ("zstd-delta", "lz4-delta"):
        # subtract green from red and blue (channels move together), then each row minus the row
        # above, all in uint8 wrap-around arithmetic: the exact inverse is a cumulative sum down
        # the rows (vectorised across the row) and adding green back. No header: H, W are in the
        # descriptor.
        x = frame.copy()
        x[..., 0] -= frame[..., 1]
        x[..., 2] -= frame[..., 1]
        x[1:] -= x[:-1].copy()
        if codec == "zstd-delta":
            return _EXT[codec], _zstd(ZSTD_DELTA_LEVEL).compress(x.tobytes(), asbytes=True)
        # lz4-delta: a 4-byte little-endian length, then the LZ4 block. The length is checked
        # against the descriptor's H*W*3 before decoding: pyarrow's raw-LZ4 decompress hands back a
        # buffer of the size asked for even when the block decodes to fewer bytes.
        return _EXT[codec], (x.nbytes.to_bytes(4, "little")
                             + _lz4(LZ4_DELTA_LEVEL).compress(x.tobytes(), asbytes=True))
    raise ValueError(check_codec(codec))


def decode_frame(ext: str, data: bytes, size: tuple[int, int], into: np.ndarray | None = None) -> np.ndarray:
    """Inverse of `encode_frame`; raises StorageError when the bytes do not give an [H, W, 3] frame.
    `into`: a uint8 [H, W, 3] array to decode into (returned), saving a copy of the frame."""
    codec = _CODEC_OF_EXT.get(ext)
    if codec is None:
        raise StorageError(f"unknown pixel member extension .{ext}")
    h, w = size
    if codec in ("png", "webp"):
        from PIL import Image

        img = Image.open(io.BytesIO(data))
        img.load()
        if img.mode != "RGB":
            raise StorageError(f"{codec} frame has mode {img.mode}, expected RGB")
        out = np.asarray(img)
    elif codec == "npy":
        out = _load_npy(data)
    elif codec == "zstd":
        out = _load_npy(_zstd(3).decompress(data, h * w * 3 + 128, asbytes=True))
    else:   # zstd-delta, lz4-delta: the filtered frame, no header (H, W come from the descriptor)
        if codec == "lz4-delta":
            n = int.from_bytes(bytes(data[:4]), "little") if len(data) >= 4 else -1
            if n != h * w * 3:
                raise StorageError(f"lz4-delta frame holds {n} bytes, expected {h * w * 3} ({h}x{w}x3)")
            buf = _lz4().decompress(memoryview(data)[4:], n)
        else:
            buf = _zstd(ZSTD_DELTA_LEVEL).decompress(data, h * w * 3)
        if buf.size != h * w * 3:
            raise StorageError(f"{codec} frame decompressed to {buf.size} bytes, expected {h * w * 3}")
        return undelta(np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3), into)
    if out.shape != (h, w, 3) or out.dtype != np.uint8:
        raise StorageError(f"frame decoded to {out.dtype} {out.shape}, expected uint8 ({h}, {w}, 3)")
    if into is not None:
        into[...] = out
        return into
    return out


def undelta(d: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of zstd-delta's filter: green added back to red and blue, then a running sum down the
    rows (uint8, wrap-around). Both steps are linear mod 256, so they commute and are done in the
    order that is cheapest; the result is the exact inverse (tests/test_dataset_speed_issue12.py
    compares it with the row-by-row definition). `out`: a uint8 [H, W, 3] array to write into.

    Where the time goes on a 1036x756 frame (docs/training.md "## Speed"): a numpy call per row
    costs ~1 us of overhead against ~0.1 us of adding, and the per-channel adds on the interleaved
    RGB are strided (not SIMD). So: green is added with contiguous masked ops over large chunks,
    and the running sum runs over sqrt(H) blocks of sqrt(H) rows at once (each call adds one row of
    every block), then carries each block's last row into the next block: ~2 sqrt(H) calls, not H."""
    h, w, c = d.shape
    if out is None:
        out = np.empty((h, w, c), np.uint8)
    src, dst = d.reshape(-1), out.reshape(-1)
    n = src.size
    if n:
        _add_green(src, dst)
    x = out.reshape(h, w * c)
    k = max(1, math.isqrt(h))
    nb = h // k                       # nb blocks of k rows, then h - nb*k rows one by one
    full = nb * k
    blocks = x[:full].reshape(nb, k, w * c)
    for j in range(1, k):             # running sum inside every block at once
        np.add(blocks[:, j], blocks[:, j - 1], out=blocks[:, j])
    for b in range(1, nb):            # carry: block b-1 is final, its last row goes into block b
        np.add(blocks[b], blocks[b - 1, -1], out=blocks[b])
    for i in range(max(full, 1), h):
        np.add(x[i], x[i - 1], out=x[i])
    return out


_GREEN_CHUNK = 3 * 65536              # bytes per pass (a multiple of 3: chunks start on a pixel)
_GREEN_MASKS: list = []


def _add_green(src: np.ndarray, dst: np.ndarray) -> None:
    """dst = src with the green byte of each RGB pixel added to its red and blue bytes (flat uint8,
    len a multiple of 3): contiguous, SIMD-friendly ops with two periodic byte masks, chunk by chunk."""
    if not _GREEN_MASKS:
        to_red = np.zeros(_GREEN_CHUNK, np.uint8)
        to_red[0::3] = 0xFF           # tmp[j] = src[j+1] & mask: green lands on the red at j = 3i
        to_blue = np.zeros(_GREEN_CHUNK, np.uint8)
        to_blue[1::3] = 0xFF          # tmp[j] = src[j] & mask, added at j+1: green lands on the blue
        _GREEN_MASKS[:] = [to_red, to_blue]
    to_red, to_blue = _GREEN_MASKS
    n = src.size
    tmp = np.empty(min(n, _GREEN_CHUNK), np.uint8)
    for s in range(0, n, _GREEN_CHUNK):
        e = min(n, s + _GREEN_CHUNK)
        m = e - s - 1
        a, b, t = src[s:e], dst[s:e], tmp[:m]
        np.bitwise_and(a[1:], to_red[:m], out=t)
        np.add(a[:-1], t, out=b[:-1])
        b[-1] = a[-1]                 # a blue byte: nothing from the right
        np.bitwise_and(a[:-1], to_blue[:m], out=t)
        np.add(b[1:], t, out=b[1:])


def _ext_of(name: str) -> str:
    for ext in sorted(_CODEC_OF_EXT, key=len, reverse=True):
        if name.endswith("." + ext):
            return ext
    return name.rpartition(".")[2]


def _zstd(level: int = 3):
    import pyarrow as pa

    return pa.Codec("zstd", compression_level=level)


def _lz4(level: int | None = None):
    """LZ4 raw block (no frame header; the decompressed size is H*W*3, the crc32 is the descriptor's)."""
    import pyarrow as pa

    return pa.Codec("lz4_raw") if level is None else pa.Codec("lz4_raw", compression_level=level)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=][a-z]\d+)', 'fortran_order': False, 'shape': \(([\d, ]*)\), \}\s*\n")
_NPY_DTYPES: dict[bytes, np.dtype] = {}


def load_npy(data) -> np.ndarray:
    """A .npy member's array (a writable copy). The headers `np.save` writes for plain C-order arrays
    are parsed with one regex (np.load parses them with ast.literal_eval, a third of a small sample's
    read time) and remembered (a shard repeats a few hundred distinct headers: same dtype, a few
    lengths); anything else goes to np.load, which also raises the errors of a corrupt member."""
    data = bytes(data)
    if data[:6] == b"\x93NUMPY" and data[6:7] in (b"\x01", b"\x02", b"\x03"):
        start = 10 if data[6] == 1 else 12
        body = start + int.from_bytes(data[8:start], "little")
        head = data[:body]
        known = _NPY_HEADERS.get(head)
        if known is None:
            known = _parse_npy_header(data[start:body])
            if len(_NPY_HEADERS) >= 4096:
                _NPY_HEADERS.clear()
            _NPY_HEADERS[head] = known
        if known:
            dtype, shape, count = known
            if len(data) - body == count * dtype.itemsize:
                return np.frombuffer(data, dtype, count, body).reshape(shape).copy()
    return np.load(io.BytesIO(data), allow_pickle=False)


_NPY_HEADERS: dict[bytes, tuple | None] = {}


def _parse_npy_header(header: bytes) -> tuple | None:
    """(dtype, shape, count) of a plain C-order header np.save writes, else None (np.load's case)."""
    m = _NPY_HEADER.fullmatch(header)
    if m is None:
        return None
    descr, dims = m.group(1), m.group(2)
    dtype = _NPY_DTYPES.get(descr)
    if dtype is None:
        dtype = _NPY_DTYPES.setdefault(descr, np.dtype(descr.decode()))
    if dtype.hasobject:
        return None
    shape = tuple(int(v) for v in dims.split(b",") if v.strip())
    return dtype, shape, int(np.prod(shape, dtype=np.int64)) if shape else 1


_load_npy = load_npy


# -- one sample ----------------------------------------------------------------------------------------

def split_items(pixel_values: np.ndarray, image_grid_thw, video_grid_thw, geometry: Geometry) -> list[tuple[str, np.ndarray]]:
    """[(kind, distinct frames [n, H, W, 3])] per image then per video, in placeholder order."""
    from processors.patches import stored_frames

    pv = np.asarray(pixel_values)
    if geometry.fixed_size is not None:            # qwen-vl: already whole frames
        return [("image", pv[i:i + 1]) for i in range(len(pv))]
    items, row = [], 0
    g = geometry
    for kind, grids in (("image", image_grid_thw), ("video", video_grid_thw)):
        for grid in np.asarray(grids).reshape(-1, 3):
            n = int(np.prod(grid))
            frames = stored_frames(pv[row:row + n], tuple(int(v) for v in grid), g.patch_size, g.merge_size,
                                   g.temporal_patch_size)
            items.append((kind, frames))
            row += n
    if row != len(pv):
        raise StorageError(f"pixel_values has {len(pv)} rows but the grids cover {row}")
    return items


def rebuild_pixel_values(items: list[tuple[str, np.ndarray]], geometry: Geometry) -> np.ndarray:
    """pixel_values uint8 from the distinct frames of each item: [N, 3*tp*p*p] (qwen-vl: [k, H, W, 3])."""
    from processors.patches import patchify

    g = geometry
    if g.fixed_size is not None:
        if not items:
            return np.zeros((0, *g.fixed_size, 3), dtype=np.uint8)
        return np.concatenate([f for _, f in items], axis=0)
    if not items:
        return np.zeros((0, g.patch_dim), dtype=np.uint8)
    parts = [patchify(f, g.patch_size, g.merge_size, g.temporal_patch_size)[0] for _, f in items]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def pixel_members(key: str, pixel_values: np.ndarray, image_grid_thw, video_grid_thw, preset,
                  codec: str) -> list[tuple[str, bytes]]:
    """The format-2 members holding a sample's pixels: one per distinct frame plus the descriptor.

    The frames are rebuilt into pixel_values and compared with the input before anything is returned,
    so a shard never holds pixels that would not come back bit for bit."""
    check_codec(codec)
    geometry = Geometry.of(preset)
    items = split_items(pixel_values, image_grid_thw, video_grid_thw, geometry)
    rebuilt = rebuild_pixel_values(items, geometry)
    if rebuilt.shape != np.shape(pixel_values) or not np.array_equal(rebuilt, pixel_values):
        raise StorageError(f"sample {key!r}: the stored frames do not rebuild pixel_values exactly "
                           f"({np.shape(pixel_values)} vs {rebuilt.shape}); write with storage.codec=npy "
                           f"and report this")
    members, described = [], []
    counters = {"image": 0, "video": 0}
    for kind, frames in items:
        i = counters[kind]
        counters[kind] += 1
        names, crcs = [], []
        for j, frame in enumerate(frames):
            ext, data = encode_frame(frame, codec)
            # an image is one frame; several only when its rows' temporal copies differ (not encoder output)
            stem = f"img{i:03d}" if kind == "image" and len(frames) == 1 else f"{_STEM[kind]}{i:03d}.f{j:04d}"
            names.append(f"{stem}.{ext}")
            crcs.append(zlib.crc32(data))
            members.append((f"{key}.{stem}.{ext}", data))
        described.append({"kind": kind, "size": [int(frames.shape[1]), int(frames.shape[2])],
                          "members": names, "crc32": crcs})
    desc = {"format": FORMAT_VERSION, "codec": codec, "preset": preset.name, "geometry": geometry.to_dict(),
            "rows": int(len(pixel_values)), "items": described}
    members.append((f"{key}.{DESCRIPTOR}",
                    json.dumps(desc, sort_keys=True, separators=(",", ":")).encode("utf-8")))
    return members


@dataclass
class StoredPixels:
    """A sample's stored frames as read from a shard, before the rebuild into pixel_values."""

    geometry: Geometry
    items: list[tuple[str, np.ndarray]]   # (kind, frames uint8 [n, H, W, 3])
    rows: int

    def pixel_values(self) -> np.ndarray:
        pv = rebuild_pixel_values(self.items, self.geometry)
        if len(pv) != self.rows:
            raise StorageError(f"rebuilt {len(pv)} pixel rows, the descriptor says {self.rows}")
        return pv

    @property
    def frames_nbytes(self) -> int:
        return sum(f.nbytes for _, f in self.items)


class LazyFrames:
    """One item's frames still compressed: (kind, shape [n, H, W, 3] uint8) known, the members decoded
    (crc32 checked) only by `decode_into` — straight into a caller's buffer, e.g. a batch's transfer
    buffer (pipeline.dataset.to_transfer), so no per-sample frame array is allocated and copied."""

    __slots__ = ("kind", "shape", "members", "where")
    dtype = np.uint8

    def __init__(self, kind: str, shape: tuple, members: list, where: str):
        self.kind, self.shape, self.members, self.where = kind, shape, members, where

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape)

    def decode_into(self, out: np.ndarray) -> np.ndarray:
        """Decode into `out` (uint8, `self.shape`, C-contiguous); a damaged member raises StorageError
        naming the shard, the sample and the member."""
        h, w = self.shape[1:3]
        try:
            for j, (name, crc, data) in enumerate(self.members):
                _decode_member(name, crc, data, h, w, out[j])
        except StorageError as exc:
            raise StorageError(f"{self.where}: {exc}") from None
        return out

    def numpy(self) -> np.ndarray:
        return self.decode_into(np.empty(self.shape, dtype=np.uint8))


class LazyPixels:
    """StoredPixels whose frames stay compressed until used (`read_pixels(..., lazy=True)`): `.items`
    decodes them all on first access (then it is a StoredPixels in all but name); `.lazy` gives the
    LazyFrames for a consumer that decodes them into its own buffer."""

    def __init__(self, geometry: Geometry, lazy: list[LazyFrames], rows: int):
        self.geometry, self.lazy, self.rows = geometry, lazy, rows
        self._items = None

    @property
    def items(self) -> list[tuple[str, np.ndarray]]:
        if self._items is None:
            self._items = [(lf.kind, lf.numpy()) for lf in self.lazy]
        return self._items

    pixel_values = StoredPixels.pixel_values

    @property
    def frames_nbytes(self) -> int:
        return sum(lf.nbytes for lf in self.lazy)


def _decode_member(name: str, crc, data, h: int, w: int, out: np.ndarray) -> None:
    """One frame member into `out` ([H, W, 3] uint8), its crc32 checked; StorageError names the member."""
    if data is None:
        raise StorageError(f"member {name} is missing")
    if isinstance(data, np.ndarray):     # already decoded by a webdataset reader
        if data.dtype != np.uint8 or data.shape != (h, w, 3):
            raise StorageError(f"member {name} was decoded to {data.dtype} {data.shape}; read the "
                               f"shard without image decoding (raw bytes) to get exact pixels")
        out[...] = data
        return
    if zlib.crc32(data) != int(crc):
        raise StorageError(f"member {name} is corrupt (crc32 mismatch, {len(data)} bytes)")
    try:
        decode_frame(_ext_of(name), data, (h, w), out)
    except StorageError as exc:
        raise StorageError(f"member {name}: {exc}") from None
    except Exception as exc:    # a decoder's own error on damaged bytes
        raise StorageError(f"member {name} does not decode ({type(exc).__name__}: {exc})") from None


def read_pixels(members: dict[str, bytes], where: str, lazy: bool = False) -> StoredPixels | LazyPixels:
    """Decode a format-2 sample's pixel members (`members`: suffix after `{key}.` -> bytes).

    `where` names the shard and sample in every error ("shards/u0.tar, sample 'abc'"). `lazy=True`:
    the descriptor is checked and every member's presence too, but the frames stay compressed (a
    LazyPixels); a corrupt member's StorageError then comes where the frames are decoded."""
    raw = members.get(DESCRIPTOR)
    if raw is None:
        raise StorageError(f"{where}: no {DESCRIPTOR} member (not a vlprep shard, or written by a different version)")
    try:
        desc = json.loads(raw)
        version = int(desc["format"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{where}: {DESCRIPTOR} is corrupt ({exc})") from None
    if version != FORMAT_VERSION:
        raise StorageError(f"{where}: shard format {version} is newer than this vlprep reads "
                           f"(format {FORMAT_VERSION}); upgrade vlprep or re-run `vlprep prepare`")
    try:
        geometry = Geometry.from_dict(desc["geometry"])
        items = []
        for it in desc["items"]:
            h, w = (int(v) for v in it["size"])
            names, crcs = it["members"], it["crc32"]
            if lazy:
                got = [(name, crc, members.get(name)) for name, crc in zip(names, crcs)]
                for name, _, data in got:
                    if data is None:
                        raise StorageError(f"member {name} is missing")
                items.append(LazyFrames(it["kind"], (len(names), h, w, 3), got, where))
                continue
            frames = np.empty((len(names), h, w, 3), dtype=np.uint8)
            for j, (name, crc) in enumerate(zip(names, crcs)):
                _decode_member(name, crc, members.get(name), h, w, frames[j])
            items.append((it["kind"], frames))
        if lazy:
            return LazyPixels(geometry, items, int(desc["rows"]))
        return StoredPixels(geometry, items, int(desc["rows"]))
    except StorageError as exc:
        raise StorageError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"{where}: {DESCRIPTOR} is corrupt ({type(exc).__name__}: {exc})") from None


def pixels_from_row(row: dict) -> np.ndarray:
    """pixel_values of a format-2 sample as a webdataset reader yields it (`webdataset.WebDataset(urls)
    .decode()`, `ray.data.read_webdataset`): `pixels.json` decoded or not, frame members as bytes
    (or as uint8 arrays if a reader decoded the images)."""
    members = {}
    for k, v in row.items():
        if k == DESCRIPTOR and isinstance(v, dict):
            v = json.dumps(v).encode("utf-8")
        elif isinstance(v, (bytes, bytearray, memoryview)):
            v = bytes(v)
        members[k] = np.asarray(v) if not isinstance(v, bytes) and k.startswith(("img", "vid")) else v
    where = f"{row.get('__url__', '?')}, sample {row.get('__key__')!r}"
    return read_pixels(members, where).pixel_values()
