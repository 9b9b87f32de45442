"""Reading prepared shards back, and turning them into what a Qwen-VL model's forward() takes.

    loader = ShardLoader("prepared/")
    sample = loader.get("some-id")                       # numpy arrays + meta
    inputs = to_model_inputs(sample, "qwen2.5-vl", device="cuda")
    batch = to_model_inputs([s1, s2, s3], "qwen2.5-vl")  # padded, pixel_values concatenated

Shards hold each pixel once, losslessly compressed (pipeline/storage.py, shard format 2; format-1
shards with raw `pixel_values.npy` members are read too); the loader rebuilds the exact uint8
`pixel_values` rows. Normalisation (1/255, CLIP mean/std) happens in `to_model_inputs`, on the
requested device, after the uint8 copy (4x less host→device traffic than float32). Names follow
the Hugging Face processor: input_ids, attention_mask, labels, position_ids, pixel_values,
image_grid_thw, pixel_values_videos, video_grid_thw, second_per_grid_ts.
"""
from __future__ import annotations

import json
import os
import tarfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from processors.collate import (  # noqa: F401  (re-exported: the one collator lives in processors)
    PAD_ID,
    batch_to_model_inputs,
    collate,
    device_pixel_rows,
    normalize_pixels,
    pixel_values_of,
    split_pixel_rows,
)
from processors.sample import EncodedSample

from .storage import DESCRIPTOR, V1_MEMBER, StorageError, load_npy, read_pixels

ARRAYS = EncodedSample.ARRAY_FIELDS


class ShardLoader:
    """Random and sequential access to the shards of one prepare output directory."""

    def __init__(self, out_dir: str | os.PathLike):
        self.root = Path(out_dir)
        if not (self.root / "shards").is_dir():
            raise FileNotFoundError(f"{self.root}/shards not found: is {self.root} the output of `vlprep prepare`?")
        self._manifest = None
        self._index: dict[str, dict[str, tuple[int, int]]] = {}
        self._pad_id: int | None = None

    @property
    def pad_id(self) -> int:
        """The pad id of the tokenizer these shards were prepared with (pipeline.dataset.out_pad_id:
        248044 for a Qwen3.5-style 248k `tokenizer:`, else PAD_ID); pass it to to_model_inputs."""
        if self._pad_id is None:
            from .dataset import out_pad_id

            self._pad_id = out_pad_id(self.root)
        return self._pad_id

    # -- listing ---------------------------------------------------------------------------------
    def shards(self) -> list[str]:
        """Shard paths relative to the output directory, in name (= unit) order."""
        return sorted(f"shards/{p.name}" for p in (self.root / "shards").glob("*.tar"))

    @property
    def manifest(self):
        if self._manifest is None:
            from .io import read_manifest

            self._manifest = read_manifest(self.root)
        return self._manifest

    def ids(self) -> list[str]:
        return self.manifest.column("id").to_pylist()

    # -- reading ---------------------------------------------------------------------------------
    def iter_shard(self, shard: str, *, pixels: str = "rows", lazy: bool = False) -> Iterator[dict]:
        """Samples of one shard in stored order: {"id", 7 arrays, "meta"}.

        `pixels="frames"`: no `pixel_values`; a `stored_pixels` (storage.StoredPixels: the distinct
        frames and the patch geometry) instead, for consumers that rebuild the rows on their device
        (`to_model_inputs` does). A damaged shard raises StorageError naming the shard and sample.
        `lazy=True` (with pixels="frames"): the frames stay compressed until used (storage.LazyPixels;
        ShardDataset's workers decode them straight into the batch's transfer buffer)."""
        for key, members in self._iter_members(shard):
            yield _assemble(key, members, shard, pixels, lazy)

    def _iter_members(self, shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
        path = self._path(shard)
        key = None
        try:
            with open(path, "rb") as f:
                members: dict[str, bytes] = {}
                for name, data in tar_members(f):
                    k, _, rest = name.partition(".")
                    if k != key and key is not None:
                        yield key, members
                        members = {}
                    key = k
                    members[rest] = data
                if key is not None:
                    yield key, members
        except (tarfile.TarError, OSError, EOFError) as exc:
            at = f", sample {key!r}" if key is not None else ""
            raise StorageError(f"{shard}{at}: the shard is truncated or corrupt ({exc}); "
                               f"re-run `vlprep prepare` for its unit (delete the shard first)") from None

    def __iter__(self) -> Iterator[dict]:
        for shard in self.shards():
            yield from self.iter_shard(shard)

    def get(self, sample_id: str, *, pixels: str = "rows") -> dict:
        """One sample by id (looked up in the manifest, then read by offset from its shard)."""
        ids = self.manifest.column("id").to_pylist()
        try:
            row = ids.index(sample_id)
        except ValueError:
            raise KeyError(f"sample {sample_id!r} is not in {self.root}/manifest.parquet "
                           f"(dropped or failed? see ledger.parquet)") from None
        shard = self.manifest.column("shard")[row].as_py()
        key = self.manifest.column("key")[row].as_py()
        index = self._shard_index(shard)
        if key not in index:
            raise KeyError(f"sample {sample_id!r} (key {key!r}) is listed in the manifest but not in {shard}")
        members = {}
        with open(self._path(shard), "rb") as f:
            for rest, (offset, size) in index[key].items():
                f.seek(offset)
                members[rest] = f.read(size)
                if len(members[rest]) != size:
                    raise StorageError(f"{shard}, sample {key!r}: member {key}.{rest} is cut short "
                                       f"({len(members[rest])} of {size} bytes); the shard is truncated")
        return _assemble(key, members, shard, pixels)

    def _shard_index(self, shard: str) -> dict[str, dict[str, tuple[int, int]]]:
        if shard not in self._index:
            idx: dict[str, dict[str, tuple[int, int]]] = {}
            try:
                with tarfile.open(self._path(shard), "r:") as tar:
                    for m in tar:
                        if m.isfile():
                            k, _, rest = m.name.partition(".")
                            idx.setdefault(k, {})[rest] = (m.offset_data, m.size)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise StorageError(f"{shard}: the shard is truncated or corrupt ({exc}); re-run "
                                   f"`vlprep prepare` for its unit (delete the shard first)") from None
            self._index[shard] = idx
        return self._index[shard]

    def _path(self, shard: str) -> Path:
        p = self.root / shard
        if not p.exists():
            raise FileNotFoundError(f"shard {p} not found")
        return p


def tar_members(f) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the regular files of a tar stream, in order: the ustar/pax/GNU subset
    `tarfile` writes, read header by header (tarfile's own member parsing was a quarter of a small
    sample's read time). Header checksums are verified; a cut-short member or a bad header raises
    tarfile.ReadError; a stream that ends on a member boundary ends the iteration, as in tarfile."""
    pax: dict[str, str] = {}
    long_name = None
    first = True
    while True:
        hdr = f.read(512)
        if len(hdr) < 512:
            if hdr or first:
                raise tarfile.ReadError("unexpected end of data" if hdr else "empty file")
            return
        if hdr == _ZERO_BLOCK:
            return
        first = False
        try:
            chk = int(hdr[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
            size = int(hdr[124:136].split(b"\0", 1)[0].strip() or b"0", 8) if hdr[124] < 0x80 else \
                int.from_bytes(hdr[125:136], "big")
        except ValueError:
            raise tarfile.ReadError("invalid header") from None
        if chk != _header_sum(hdr):
            raise tarfile.ReadError("bad checksum")
        typ = hdr[156:157]
        if "size" in pax:
            size = int(pax["size"])
        data = f.read(size)
        if len(data) != size:
            raise tarfile.ReadError(f"member is cut short ({len(data)} of {size} bytes)")
        f.read(-size % 512)
        if typ == b"x":             # pax extended header for the next member
            pax = _pax_records(data)
            continue
        if typ == b"g":             # pax global header: nothing vlprep reads
            continue
        if typ == b"L":             # GNU long name for the next member
            long_name = data.rstrip(b"\0").decode("utf-8")
            continue
        if typ in (b"0", b"\0", b"7"):
            if "path" in pax:
                name = pax["path"]
            elif long_name is not None:
                name = long_name
            else:
                name = hdr[:100].split(b"\0", 1)[0].decode("utf-8")
                prefix = hdr[345:500].split(b"\0", 1)[0] if hdr[257:262] == b"ustar" else b""
                if prefix:
                    name = prefix.decode("utf-8") + "/" + name
            yield name, data
        pax, long_name = {}, None


_ZERO_BLOCK = bytes(512)


def _header_sum(hdr: bytes) -> int:
    """The ustar header checksum: the sum of the 512 header bytes with the 8-byte checksum field
    read as spaces. Exact and in C: the low 16 bits of Adler-32 are 1 + the byte sum mod 65521, and
    a 256-byte half sums to at most 65 280, so each half's sum comes out unreduced (a Python
    `sum()` over the bytes was ~4 us a member, most of the header parse)."""
    a = (zlib.adler32(hdr[:256]) & 0xFFFF) + (zlib.adler32(hdr[256:]) & 0xFFFF) - 2
    return a - sum(hdr[148:156]) + 256


def _pax_records(data: bytes) -> dict[str, str]:
    out, i = {}, 0
    while i < len(data):
        sp = data.index(b" ", i)
        n = int(data[i:sp])
        k, _, v = data[sp + 1:i + n - 1].partition(b"=")
        out[k.decode("utf-8")] = v.decode("utf-8")
        i += n
    return out


PIXEL_MODES = ("rows", "frames")


def _assemble(key: str, members: dict[str, bytes], shard: str = "?", pixels: str = "rows",
              lazy: bool = False) -> dict:
    if pixels not in PIXEL_MODES:
        raise ValueError(f"pixels={pixels!r}: use one of {PIXEL_MODES}")
    where = f"{shard}, sample {key!r}"
    out: dict = {}
    v1 = V1_MEMBER in members
    if not v1 and DESCRIPTOR not in members:
        raise StorageError(f"{where}: neither {key}.{DESCRIPTOR} (shard format 2) nor {key}.{V1_MEMBER} "
                           f"(format 1) is in the shard; it is truncated or not a `vlprep prepare` shard")
    for name in ARRAYS:
        if name == "pixel_values" and not v1:
            continue
        blob = members.get(f"{name}.npy")
        if blob is None:
            raise StorageError(f"{where}: member {key}.{name}.npy missing from the shard")
        try:
            out[name] = load_npy(blob)
        except (ValueError, OSError, EOFError) as exc:
            raise StorageError(f"{where}: member {key}.{name}.npy is corrupt ({exc})") from None
    if not v1:
        stored = read_pixels(members, where, lazy=lazy and pixels == "frames")
        if pixels == "frames":
            out["stored_pixels"] = stored
        else:
            out["pixel_values"] = stored.pixel_values()
    try:
        meta = json.loads(members.get("meta.json", b"{}"))
    except ValueError as exc:
        raise StorageError(f"{where}: member {key}.meta.json is corrupt ({exc})") from None
    out["meta"] = meta
    out["id"] = meta.get("id", key)
    return out


# -- model inputs (collation itself: processors.collate) --------------------------------------------

def to_model_inputs(sample_or_batch: dict | list[dict], preset=None, device="cpu", dtype=None,
                    pad_id: int = PAD_ID) -> dict:
    """torch tensors for a Qwen-VL forward(): one sample (batch of 1) or a list (padded batch).

    Integer tensors are int64; pixel_values / pixel_values_videos are normalised to float
    (`dtype`, default float32) on `device` from the stored uint8. Keys whose modality is absent
    (no images → no pixel_values/image_grid_thw) are left out, as the HF processor does.
    qwen-vl: pixel_values [k, 3, 448, 448]; position_ids [1, B, L] → [B, L].
    Samples read with pixels="frames" send only their stored frames to `device`, where they are
    patchified (bit-identical rows, each pixel crossing to the device once).
    `pad_id` fills the padded slots: PAD_ID (151643) is the built-in Qwen2 tokenizer's; shards
    prepared with another `tokenizer:` (a 248k vocabulary) need theirs, `ShardLoader(out).pad_id`.
    """
    samples = sample_or_batch if isinstance(sample_or_batch, list) else [sample_or_batch]
    _check_pad_id(samples, pad_id)
    if not any("stored_pixels" in s for s in samples):
        return batch_to_model_inputs(collate(samples, pad_id), preset, device, dtype)
    batch = collate(samples, pad_id, pixels=False)
    for key, kind in (("pixel_values", "image"), ("pixel_values_videos", "video")):
        rows = device_pixel_rows(samples, kind, device)
        batch[key] = rows if rows is not None else np.zeros((0, 0), dtype=np.uint8)
    return batch_to_model_inputs(batch, preset, device, dtype)


def _check_pad_id(samples: list[dict], pad_id: int) -> None:
    """Padding a batch whose ids lie beyond every built-in vocabulary with Qwen2's pad id (PAD_ID)
    would not give the prepared tokenizer's padding: one-line error naming the id to pass."""
    if pad_id != PAD_ID or len({int(s["input_ids"].shape[0]) for s in samples}) < 2:
        return
    from processors.presets import PRESETS
    from processors.tokenizer import get_tokenizer

    n = max(get_tokenizer(preset=p).vocab_size for p in PRESETS.values())  # every built-in table (Qwen-VL's too)
    top = max((int(s["input_ids"].max()) for s in samples if s["input_ids"].size), default=-1)
    if top >= n:
        raise ValueError(f"these samples hold token id {top}, beyond the built-in vocabularies ({n} ids), so "
                         f"PAD_ID {PAD_ID} is not their pad token: pass pad_id=ShardLoader(out).pad_id")


def iter_batches(samples: Iterable[dict], max_tokens: int, max_samples: int | None = None) -> Iterator[list[dict]]:
    """Group samples in order into lists whose padded size (count x longest) stays ≤ max_tokens.

    A sample longer than max_tokens forms a batch of its own (never split or dropped here).
    """
    batch: list[dict] = []
    longest = 0
    for s in samples:
        n = int(s["input_ids"].shape[0])
        grow = max(longest, n) * (len(batch) + 1)
        if batch and (grow > max_tokens or (max_samples and len(batch) >= max_samples)):
            yield batch
            batch, longest = [], 0
        batch.append(s)
        longest = max(longest, n)
    if batch:
        yield batch
