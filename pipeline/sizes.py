"""Bytes in and bytes out: what a sample's media weigh, what its shard members will weigh.

`media_bytes` is what `vlprep prepare` records per kept sample (manifest `media_bytes`: the sample's
media files as they sit on disk; a file used by n samples counts n times, as its pixels are stored n
times) beside `sample_bytes` (what the writer put in the tar). The pre-flight predicts `sample_bytes`
from the predicted sizes alone (`SizeModel`): everything but the pixels is arithmetic on the token
and item counts (the same member/padding rule the writer uses); the compressed pixel bytes are the
raw stored-frame bytes times a ratio measured on a few of the corpus's own items (`calibrate`), run
through the real encoder and codec. docs/storage.md has the measured ratios per content kind.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .storage import DEFAULT_CODEC, encode_frame
from .writer import member_bytes

NPY_HEADER = 128          # np.save's header for the small arrays a shard holds (version 1.0, padded to 64)
# Fallback compressed/raw ratios when the calibration has no item of a kind (bench/storage.py, photos).
DEFAULT_RATIOS = {"zstd-delta": 0.45, "webp": 0.42, "png": 0.52, "zstd": 0.95, "npy": 1.0, "lz4-delta": 0.84}


def media_bytes(sources) -> int:
    """Bytes of a sample's media as read: a file's size, inline bytes' length, a frame list's sum."""
    total = 0
    for src in sources:
        if isinstance(src, (bytes, bytearray, memoryview)):
            total += len(src)
        elif isinstance(src, (list, tuple)):
            total += media_bytes(src)
        elif isinstance(src, (str, os.PathLike)):
            try:
                total += os.stat(src).st_size
            except OSError:
                pass
    return total


def media_files(sources) -> list[tuple[str, str, int]]:
    """(kind, resolved path or "" for inline bytes, bytes) per (kind, source) pair."""
    out = []
    for kind, src in sources:
        path = "" if isinstance(src, (bytes, bytearray, memoryview)) else str(src)
        out.append((kind, path, media_bytes([src])))
    return out


def stored_frames_count(n_frames: int) -> int:
    """Frames a video of `n_frames` sampled frames stores (its padding repeat is not stored)."""
    return int(n_frames)


def raw_pixel_bytes(image_resized, video_resized, video_frames) -> tuple[int, int, int]:
    """(image bytes, video bytes, frame members) of the stored frames, uncompressed (uint8 RGB)."""
    img = sum(int(h) * int(w) * 3 for h, w in image_resized)
    vid = sum(int(h) * int(w) * 3 * stored_frames_count(n) for (h, w), n in zip(video_resized, video_frames))
    return img, vid, len(image_resized) + sum(int(n) for n in video_frames)


def fixed_bytes(n_tokens: int, n_images: int, n_videos: int, frame_members: int, video_frames_total: int,
                rope_rows: int = 3) -> int:
    """Tar bytes of everything but the compressed pixels: the arrays, meta.json, pixels.json and the
    frame members' headers/padding (half a block each on average)."""
    L = int(n_tokens)
    arrays = [4 * L, 4 * L, 4 * rope_rows * L, 12 * n_images, 12 * n_videos, 4 * n_videos]
    total = sum(member_bytes(NPY_HEADER + a) for a in arrays)
    # meta.json: ids, counts, sizes per item; per video frame index, frame time and (per 2) timestamps
    total += member_bytes(480 + 110 * n_images + 330 * n_videos + 45 * video_frames_total)
    total += member_bytes(150 + 80 * (n_images + n_videos) + 30 * frame_members)     # pixels.json
    return total + frame_members * (512 + 256)


@dataclass
class SizeModel:
    """Predicts a sample's shard bytes: fixed arithmetic + raw pixel bytes x the measured ratio.

    Ratios are measured per (kind, source file extension): a PNG source (screenshots, drawings,
    documents) and a JPEG photo of the same size compress very differently once resized."""

    codec: str = DEFAULT_CODEC
    ratios: dict = field(default_factory=dict)          # (kind, ext) -> compressed / raw
    calibration: dict = field(default_factory=dict)     # "kind .ext" -> {items, of, ratio}

    def ratio(self, kind: str, ext: str | None = None) -> float:
        if (kind, ext) in self.ratios:
            return self.ratios[(kind, ext)]
        same_kind = [r for (k, _), r in self.ratios.items() if k == kind] or list(self.ratios.values())
        return float(np.mean(same_kind)) if same_kind else DEFAULT_RATIOS.get(self.codec, 1.0)

    def sample_bytes(self, pred, rope_rows: int = 3) -> int:
        files = list(pred.media_files or [])
        img_ext = [_ext(f[1]) for f in files if f[0] == "image"]
        vid_ext = [_ext(f[1]) for f in files if f[0] == "video"]
        pixels = 0.0
        for i, (h, w) in enumerate(pred.image_resized):
            pixels += int(h) * int(w) * 3 * self.ratio("image", img_ext[i] if i < len(img_ext) else None)
        for i, ((h, w), n) in enumerate(zip(pred.video_resized, pred.video_frames)):
            raw = int(h) * int(w) * 3 * stored_frames_count(n)
            pixels += raw * self.ratio("video", vid_ext[i] if i < len(vid_ext) else None)
        _, _, members = raw_pixel_bytes(pred.image_resized, pred.video_resized, pred.video_frames)
        fixed = fixed_bytes(pred.n_tokens or 0, len(pred.image_resized), len(pred.video_resized), members,
                            sum(pred.video_frames), rope_rows)
        return int(round(pixels)) + fixed


def _ext(path: str) -> str:
    return Path(path).suffix.lower() if path else ""


def calibrate(preds, preset, encode_options: dict, codec: str = DEFAULT_CODEC, *, images: int = 8,
              videos: int = 3, max_video_frames: int = 8) -> SizeModel:
    """Compress a few of the corpus's own items through the encoder's resize and the codec: per
    (kind, source extension) up to `images` / `videos` items spread evenly over `preds` (deterministic);
    the ratio compressed/raw per group is what the prediction uses.

    `preds`: predictions carrying `media_files` ((kind, resolved path or "", bytes) per item, images
    first) and the predicted resized sizes. Unreadable items are skipped (the prediction reports them)."""
    from processors.image import process_image
    from processors.patches import stored_frames
    from processors.video import process_video

    groups: dict[tuple[str, str], list[tuple[str, tuple[int, int], int]]] = {}
    seen = set()
    for p in preds:
        files = [f for f in (p.media_files or [])]
        img_files = [f for f in files if f[0] == "image"]
        vid_files = [f for f in files if f[0] == "video"]
        items = [(f, size, 1) for f, size in zip(img_files, p.image_resized)]
        items += [(f, size, int(n)) for f, size, n in zip(vid_files, p.video_resized, p.video_frames)]
        for (kind, path, _), size, n in items:
            if path and (kind, path, tuple(size)) not in seen:
                seen.add((kind, path, tuple(size)))
                groups.setdefault((kind, _ext(path)), []).append((path, tuple(size), n))
    out = SizeModel(codec)
    p = preset
    for (kind, ext), items in sorted(groups.items()):
        k = images if kind == "image" else videos
        pick = [items[i] for i in sorted(set(np.linspace(0, len(items) - 1, min(k, len(items))).round().astype(int)))]
        raw = comp = used = 0
        for path, (h, w), n in pick:
            try:
                if kind == "image":
                    r = process_image(path, p, resized_height=h, resized_width=w)
                else:
                    r = process_video(path, p, nframes=max(2, min(n, max_video_frames) // 2 * 2),
                                      resized_height=h, resized_width=w, **_video_kw(encode_options))
                frames = (r.patches if p.fixed_size else
                          stored_frames(r.patches, r.grid_thw, p.patch_size, p.merge_size, p.temporal_patch_size))
            except Exception:
                continue
            for f in frames:
                raw += f.size
                comp += len(encode_frame(f, codec)[1])
            used += 1
        if raw:
            out.ratios[(kind, ext)] = comp / raw
            out.calibration[f"{kind} {ext or '(inline)'}"] = {"items": used, "of": len(items), "ratio": comp / raw}
    return out


def _video_kw(encode_options: dict) -> dict:
    return {"backend": encode_options.get("video_backend") or "pyav"}


def storage_stats(manifest, *, predicted: bool = False, codec: str | None = None, shards_on_disk: int | None = None,
                  model: SizeModel | None = None) -> dict:
    """The report's bytes in / bytes out block from a (predicted) manifest's media_bytes/sample_bytes."""
    names = set(manifest.column_names)
    bytes_in = int(np.nansum(manifest.column("media_bytes").to_numpy(zero_copy_only=False).astype(float))) \
        if "media_bytes" in names else None
    out_col = manifest.column("sample_bytes").to_numpy(zero_copy_only=False).astype(float) \
        if "sample_bytes" in names else None
    bytes_out = int(np.nansum(out_col)) if out_col is not None and len(out_col) and not np.isnan(out_col).all() else None
    block: dict[str, Any] = {"codec": codec, "predicted": predicted, "media_bytes_in": bytes_in,
                             "sample_bytes_out": bytes_out}
    if shards_on_disk is not None:
        block["shard_files_bytes"] = shards_on_disk
    if bytes_in and bytes_out is not None:
        block["out_over_in"] = bytes_out / bytes_in
    if manifest.num_rows and bytes_out is not None:
        block["bytes_per_sample"] = bytes_out / manifest.num_rows
    if model is not None:
        block["calibration"] = model.calibration
        block["ratio_default"] = {"image": model.ratio("image"), "video": model.ratio("video")}
    return block


def bytes_headline(block: dict) -> dict:
    """The two headline entries of a report: media bytes in, shard bytes out (predicted by a
    pre-flight, the shard files of a prepared run: one key, so `--compare` lines them up)."""
    out = block.get("sample_bytes_out")
    if not block.get("predicted") and block.get("shard_files_bytes") is not None:
        out = block["shard_files_bytes"]
    return {"media_bytes_in": block.get("media_bytes_in"), "shard_bytes_out": out}


def shard_files_bytes(out_dir) -> int:
    return sum(p.stat().st_size for p in (Path(out_dir) / "shards").glob("*.tar"))


def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def bytes_line(out_dir) -> str | None:
    """The prepare summary's bytes in / bytes out line, from the manifest and the shard files."""
    import pyarrow.parquet as pq

    path = Path(out_dir) / "manifest.parquet"
    if not path.exists():
        return None
    m = pq.read_table(path, columns=[c for c in ("media_bytes", "sample_bytes") if c in pq.read_schema(path).names])
    block = storage_stats(m, shards_on_disk=shard_files_bytes(out_dir))
    shards = block.get("shard_files_bytes")
    ratio = f" ({shards / block['media_bytes_in']:.1f}x the media)" if block.get("media_bytes_in") else ""
    return (f"bytes: media in {human(block.get('media_bytes_in'))} -> shards out {human(shards)}{ratio}, "
            f"{human(block.get('bytes_per_sample'))} per sample")
