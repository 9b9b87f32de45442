"""Per-item `resized_height` / `resized_width` (qwen-vl-utils): the size a record asks for.

qwen-vl-utils 0.0.14 (spec §5 step 3, §6.5): when an image or video item carries both keys, its
size is `smart_resize(resized_height, resized_width, 28)` with the default *image* band
(3136 … 12 845 056 px), whatever the item's min_pixels / max_pixels / total_pixels say and whatever
the source size is. The reference silently ignores a lone key; vlprep refuses it, as it refuses
values that are not positive integers or are absurdly large, naming the option and its value.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping

from .errors import AspectRatioError, FormatError, ImageTooLargeError
from .sizing import MAX_RATIO, smart_resize

RESIZED_KEYS = ("resized_height", "resized_width")
# qwen-vl-utils 0.0.14's default image band in tokens (min/max_pixels = tokens * factor²: 3136 …
# 12 845 056 px for factor 28), used for a requested size regardless of the preset's or job's band.
REQUESTED_MIN_TOKENS = 4
REQUESTED_MAX_TOKENS = 16384
# A side above this is a data error, not a request (the result is capped at 12.8 MP anyway).
MAX_RESIZED_SIDE = 1_000_000


def resized_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The resized_height / resized_width an item's options carry (keys with None values left out)."""
    return {k: options[k] for k in RESIZED_KEYS if options and options.get(k) is not None}


def _side(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FormatError(f"{key}={value!r}: must be a positive integer number of pixels")
    if not float(value).is_integer():  # 280.0 (a float column) is fine, 280.5 / nan / inf are not
        raise FormatError(f"{key}={value!r}: must be a whole number of pixels")
    if not 0 < value <= MAX_RESIZED_SIDE:
        raise FormatError(f"{key}={value!r}: must be between 1 and {MAX_RESIZED_SIDE:,} pixels")
    return int(value)


def requested_size(resized_height: Any = None, resized_width: Any = None, factor: int = 28, *,
                   max_image_pixels: int | None = None) -> tuple[int, int] | None:
    """(H, W) for an item carrying resized_height and resized_width, None when it carries neither.

    Raises FormatError when only one is given or a value is not a positive whole number up to
    MAX_RESIZED_SIDE, AspectRatioError when their ratio or the result's is above 200 (the model's
    processor smart-resizes the result again and would refuse it), and ImageTooLargeError when
    the result is above `max_image_pixels` (the job's decompression-bomb limit, if given).
    """
    if resized_height is None and resized_width is None:
        return None
    if resized_height is None or resized_width is None:
        if resized_width is None:
            given, value, missing = "resized_height", resized_height, "resized_width"
        else:
            given, value, missing = "resized_width", resized_width, "resized_height"
        raise FormatError(f"{given}={value!r} is given without {missing}: give both (qwen-vl-utils resizes "
                          f"to an explicit size only when both are set) or neither")
    h = _side("resized_height", resized_height)
    w = _side("resized_width", resized_width)
    if max(h, w) / min(h, w) > MAX_RATIO:
        raise AspectRatioError(f"resized_height={h}, resized_width={w}: aspect ratio {max(h, w) / min(h, w):.1f} "
                               f"is above {MAX_RATIO}, which the model refuses; fix the size the record asks for")
    H, W = smart_resize(h, w, factor, REQUESTED_MIN_TOKENS * factor ** 2, REQUESTED_MAX_TOKENS * factor ** 2)
    if max(H, W) / min(H, W) > MAX_RATIO:
        # e.g. 41x8200 rounds to 28x8204: the model's processor, which smart-resizes it again, refuses it
        raise AspectRatioError(f"resized_height={h}, resized_width={w} give {W}x{H} (WxH), aspect ratio "
                               f"{max(H, W) / min(H, W):.1f}, above {MAX_RATIO}, which the model refuses; "
                               f"fix the size the record asks for")
    if max_image_pixels is not None and H * W > max_image_pixels:
        raise ImageTooLargeError(f"resized_height={h}, resized_width={w} give {W}x{H} (WxH) = {H * W:,} pixels, above "
                                 f"the image pixel limit of {max_image_pixels:,} (image.max_image_pixels)")
    return H, W


def image_size_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The size keyword arguments one image item adds to `process_image` / `image_target_size`: its
    resized_height / resized_width when it has either (its min/max_pixels then do not apply, as in
    qwen-vl-utils), else its own min_pixels / max_pixels."""
    resized = resized_options(options)
    if resized:
        return resized
    return {k: int(options[k]) for k in ("min_pixels", "max_pixels") if options and options.get(k) is not None}
