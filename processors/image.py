"""Images: load (EXIF, alpha on white, any mode to RGB), resize (Pillow bicubic on uint8), patchify.

The exact path reproduces `transformers.Qwen2VLImageProcessorPil` (5.x) on an image opened with
Pillow and EXIF-transposed: same RGB conversion, same Pillow bicubic resize, same patch layout,
kept as uint8 (normalisation is `patches.normalize_patches`, done by the consumer).

`fast=True` trades exactness for speed on big downscales: a JPEG is decoded at 1/2, 1/4 or 1/8
scale by libjpeg (DCT scaling, `Image.draft`) before the bicubic resize, and Pillow's
`reducing_gap` box-reduces huge downscales first. docs/images.md has the measured deviation.
"""
from __future__ import annotations

import io
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import AspectRatioError, ImageDecodeError, ImageTooLargeError, VlprepError
from .patches import patchify
from .presets import Preset, get_preset
from .resized_size import requested_size
from .sizing import smart_resize

# Twice Pillow's default MAX_IMAGE_PIXELS (89 478 485): the size at which Pillow itself refuses to
# open a file. About 13 400 x 13 400, far above any training resolution (the band tops out at
# 12.8 MP), yet it stops a few-KB PNG from claiming gigapixels.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970

EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = {5, 6, 7, 8}
# Where Pillow's getexif() looks for an orientation (besides TIFF tags): EXIF blocks and XMP packets.
_EXIF_INFO_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")
# Fast mode: Pillow box-reduces first when the downscale is at least this many times; 3.0 is the
# value Pillow documents as indistinguishable from a direct resize.
_FAST_REDUCING_GAP = 3.0

@dataclass
class ImageResult:
    """One image, ready for a shard. `patches` is uint8 [N, 1176] (uint8 [1, 448, 448, 3] for qwen-vl)."""

    patches: np.ndarray
    grid_thw: tuple[int, int, int]
    original_size: tuple[int, int]  # (h, w) after EXIF orientation
    resized_size: tuple[int, int]  # (H, W)
    merge_size: int = 2            # the preset's: patches merged merge_size x merge_size into one token

    @property
    def num_tokens(self) -> int:
        """LLM tokens this image expands to (patches merged merge_size x merge_size)."""
        t, h, w = self.grid_thw
        return t * h * w // (self.merge_size ** 2)


# ---------------------------------------------------------------- opening and the pixel limit


def _describe(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    return f"<{type(src).__name__}>"


def _check_pixel_limit(size: tuple[int, int], name: str, max_image_pixels: int | None) -> None:
    if max_image_pixels is None:
        return
    width, height = size
    pixels = width * height
    if pixels > max_image_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} (WxH) = {pixels:,} pixels is above the decompression-bomb limit of "
            f"{max_image_pixels:,} pixels (checked from the header, nothing decoded); if the file is "
            f"genuine, raise max_image_pixels (per call, or the job's image.max_image_pixels)"
        )


def open_image(src, *, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image lazily (header only) and enforce the pixel limit before any pixel is decoded.

    A PIL image passes through (its size is still checked). Raises ImageDecodeError for missing,
    empty or unrecognised files and ImageTooLargeError above the limit.
    """
    name = _describe(src)
    if isinstance(src, Image.Image):
        _check_pixel_limit(src.size, name, max_image_pixels)
        return src
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageDecodeError("empty image bytes (0 bytes): the record's image data is missing")
        fp = io.BytesIO(src)
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise ImageDecodeError(f"{path}: image file not found (check the media root and the path in the record)")
        if os.path.getsize(path) == 0:
            raise ImageDecodeError(f"{path}: image file is empty (0 bytes)")
        fp = path
    else:
        raise TypeError(f"image source must be a path, bytes or a PIL image, got {type(src).__name__}")
    try:
        im = Image.open(fp)
    except Image.DecompressionBombError as exc:
        # Pillow's own global limit fired before ours could (it is lower than max_image_pixels).
        raise ImageTooLargeError(
            f"{name}: refused by Pillow's own limit ({exc}); raise both max_image_pixels and "
            f"PIL.Image.MAX_IMAGE_PIXELS to open it"
        ) from exc
    except UnidentifiedImageError as exc:
        raw = src[:16] if not isinstance(fp, str) else _read_head(fp, 16)
        head = raw[:8].hex(" ")
        known = _format_from_magic(raw)
        if known:
            raise ImageDecodeError(f"{name}: truncated or corrupt {known} file (its header says {known}, but the "
                                   f"image data cannot be read; first bytes: {head})") from exc
        raise ImageDecodeError(f"{name}: not a recognised image format (first bytes: {head})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: cannot read the image header: {exc}") from exc
    _check_pixel_limit(im.size, name, max_image_pixels)
    return im


_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _format_from_magic(head: bytes) -> str | None:
    """The image format a file's first bytes announce (None: no known signature)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)


def _read_head(path: str, n: int = 8) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1 = upright). Unreadable EXIF counts as upright, as Pillow's exif_transpose does."""
    if not hasattr(im, "tag_v2") and not any(key in im.info for key in _EXIF_INFO_KEYS):
        return 1  # nothing getexif() could read an orientation from; skips ~0.1 ms of parsing
    try:
        value = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not make the image unusable
        return 1
    return value if value in _TRANSPOSE_FOR_ORIENTATION else 1


def image_size_from_header(src) -> tuple[int, int]:
    """(height, width) as the image will be after EXIF orientation, without decoding pixels."""
    im = open_image(src, max_image_pixels=None)
    width, height = im.size
    if _orientation(im) in _SWAPS_SIDES:
        width, height = height, width
    return height, width


# ---------------------------------------------------------------- decoding to RGB


@contextmanager
def _decode_guard(name: str):
    """Turn whatever Pillow raises while decoding into an ImageDecodeError naming the file."""
    try:
        yield
    except VlprepError:  # already specific (aspect ratio, too large, ...)
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error) as exc:
        raise ImageDecodeError(f"{name}: corrupt or truncated image data ({exc})") from exc


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB the way transformers 5.x converts a PIL image: transparency composited onto white.

    Any alpha band (RGBA, LA, PA, ...) or a `transparency` entry (palette, grey or RGB tRNS, GIF)
    goes through RGBA and alpha_composite over opaque white; every other mode (CMYK, L, P, 1,
    I;16, I, F, YCbCr) is Pillow's plain convert("RGB") (16-bit and float values are clipped to
    0..255 by Pillow, not rescaled).
    """
    has_alpha = "A" in im.getbands() or im.info.get("transparency") is not None
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode == "RGB":
        return im
    return im.convert("RGB")


def load_image(src, *, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode a path / bytes / PIL image to an upright RGB PIL image (EXIF applied, alpha on white)."""
    im = open_image(src, max_image_pixels=max_image_pixels)
    name = _describe(src)
    with _decode_guard(name):
        im.load()
        orientation = _orientation(im)  # after load(): PNG may carry eXIf after the pixel data
        rgb = _to_rgb(im)
        if orientation != 1:
            rgb = rgb.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
        if rgb is src:  # never hand the caller's own object back (they may mutate one of them)
            rgb = rgb.copy()
    return rgb


# ---------------------------------------------------------------- resizing


def _as_rgb_array(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.uint8)


def resize_image(img: Image.Image, height: int, width: int, *, fast: bool = False) -> np.ndarray:
    """Pillow bicubic resize of an RGB image to (height, width) -> uint8 [H, W, 3].

    Non-RGB images are converted first (alpha on white). No EXIF handling here: pass `load_image`'s
    result. No resize when the size already matches (Pillow would return an identical copy).
    `fast=True`: an undecoded JPEG from `open_image` is decoded at reduced scale when the target is
    at most half its size and the remaining (< 2x) downscale is bilinear; large downscales are
    box-reduced first. Otherwise fast equals exact.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height} (WxH)")
    box = None
    if fast:
        box = _draft_for(img, width, height)
    rgb = _to_rgb(img)
    if rgb.size == (width, height) and box is None:
        return _as_rgb_array(rgb)
    # After a JPEG draft the remaining downscale is under 2x, where bilinear (half bicubic's taps)
    # stays within ~1 dB of bicubic's PSNR against exact mode (docs/images.md) at ~25% less time.
    resample = Image.Resampling.BILINEAR if box is not None else Image.Resampling.BICUBIC
    resized = rgb.resize(
        (width, height),
        resample,
        box=box,
        reducing_gap=_FAST_REDUCING_GAP if fast else None,
    )
    return _as_rgb_array(resized)


def _draft_for(im: Image.Image, width: int, height: int) -> tuple[float, float, float, float] | None:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale when the target allows it.

    Returns the source box (in the reduced image's coordinates) that covers exactly the original
    picture, or None when no draft applies (not a JPEG, already decoded, target above half size).
    """
    if getattr(im, "format", None) != "JPEG" or not getattr(im, "tile", None):
        return None
    src_w, src_h = im.size
    if width * 2 > src_w or height * 2 > src_h:
        return None
    drafted = im.draft(im.mode, (width, height))
    if drafted is None:
        return None
    _, box = drafted
    return tuple(box)


# ---------------------------------------------------------------- the full image path


def _target_size(height: int, width: int, preset: Preset, min_pixels, max_pixels) -> tuple[int, int]:
    if preset.fixed_size is not None:
        return preset.fixed_size
    return smart_resize(
        height,
        width,
        factor=preset.factor,
        min_pixels=preset.min_pixels if min_pixels is None else min_pixels,
        max_pixels=preset.max_pixels if max_pixels is None else max_pixels,
    )


def image_target_size(
    height: int,
    width: int,
    preset: "Preset | str | None" = None,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    resized_height: int | None = None,
    resized_width: int | None = None,
    max_image_pixels: int | None = None,
) -> tuple[int, int]:
    """The (H, W) `process_image` gives an image of (height, width), from the sizes alone.

    With resized_height / resized_width: qwen-vl-utils' requested size (`resized_size.requested_size`),
    then the image processor's own smart_resize of that size with the band — the identity when the
    requested size lies inside the band. Raises what process_image raises for these sizes.
    """
    preset = get_preset(preset)
    requested = requested_size(resized_height, resized_width, preset.factor, max_image_pixels=max_image_pixels)
    if requested is not None:
        height, width = requested
    return _target_size(height, width, preset, min_pixels, max_pixels)


def process_image(
    src,
    preset: "Preset | str | None" = None,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    resized_height: int | None = None,
    resized_width: int | None = None,
    fast: bool = False,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> ImageResult:
    """Load, smart-resize and patchify one image (uint8 all the way).

    min_pixels / max_pixels override the preset's band for this call. resized_height and
    resized_width (both or neither) ask for qwen-vl-utils' explicit size: the image is resized to
    `requested_size(...)` first, then — as the model's image processor does with the result — to
    smart_resize of that size with the band, which is a second resize only when the requested size
    lies outside the band. Raises ImageDecodeError, ImageTooLargeError, AspectRatioError or (for bad
    resized_* values) FormatError, with the file or the option named.
    """
    preset = get_preset(preset)
    requested = requested_size(resized_height, resized_width, preset.factor, max_image_pixels=max_image_pixels)
    name = _describe(src)
    im = open_image(src, max_image_pixels=max_image_pixels)
    with _decode_guard(name):
        decode = _decode_resized_fast if fast else _decode_resized_exact
        pixels, original = decode(im, preset, min_pixels, max_pixels, name, requested)
        if requested is not None:
            pixels = _processor_resize(pixels, preset, min_pixels, max_pixels, name)
    resized = (pixels.shape[0], pixels.shape[1])
    if preset.fixed_size is not None:
        # Qwen-VL v1: the vision tower patchifies a fixed 448x448 square itself.
        gh, gw = resized[0] // preset.patch_size, resized[1] // preset.patch_size
        return ImageResult(np.array(pixels[None]), (1, gh, gw), original, resized, preset.merge_size)
    patches, grid = patchify(
        pixels[None],
        patch_size=preset.patch_size,
        merge_size=preset.merge_size,
        temporal_patch_size=preset.temporal_patch_size,
    )
    return ImageResult(patches, grid, original, resized, preset.merge_size)


def _processor_resize(pixels: np.ndarray, preset, min_pixels, max_pixels, name) -> np.ndarray:
    """The image processor's pass over an image already at its requested size: smart_resize with the
    band, a second bicubic resize of the uint8 pixels only when that changes the size."""
    H, W = _target_with_error_context(pixels.shape[0], pixels.shape[1], preset, min_pixels, max_pixels, name)
    if (H, W) == pixels.shape[:2]:
        return pixels
    return resize_image(Image.fromarray(pixels), H, W)


def _target_with_error_context(h, w, preset, min_pixels, max_pixels, name):
    try:
        return _target_size(h, w, preset, min_pixels, max_pixels)
    except AspectRatioError as exc:  # say which file
        raise AspectRatioError(f"{name}: {exc}") from exc


def _decode_resized_exact(im, preset, min_pixels, max_pixels, name, requested=None):
    """The oracle's order: decode, EXIF-transpose, RGB, bicubic resize (skipped at equal size) to
    `requested` when given, else to smart_resize of the upright size."""
    im.load()
    orientation = _orientation(im)
    rgb = _to_rgb(im)
    if orientation != 1:
        rgb = rgb.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
    w, h = rgb.size
    H, W = requested or _target_with_error_context(h, w, preset, min_pixels, max_pixels, name)
    return resize_image(rgb, H, W), (h, w)


def _decode_resized_fast(im, preset, min_pixels, max_pixels, name, requested=None):
    """Size from the header, draft-decode in the file's own orientation, resize, then transpose.

    Resizing before the transpose is what lets libjpeg's reduced decode apply to rotated photos;
    bicubic resampling is symmetric, so the order changes nothing but rounding.
    """
    if im.format != "JPEG":
        im.load()  # no reduced decode for other formats; a PNG may keep its EXIF after the pixels
    orientation = _orientation(im)
    w, h = im.size
    if orientation in _SWAPS_SIDES:
        w, h = h, w
    H, W = requested or _target_with_error_context(h, w, preset, min_pixels, max_pixels, name)
    raw_h, raw_w = (W, H) if orientation in _SWAPS_SIDES else (H, W)
    pixels = resize_image(im, raw_h, raw_w, fast=True)
    if orientation != 1:
        pixels = np.asarray(Image.fromarray(pixels).transpose(_TRANSPOSE_FOR_ORIENTATION[orientation]))
    return pixels, (h, w)
