"""vlprep processors: pure, reusable preprocessing for Qwen-VL family models.

    from processors import process_image, get_tokenizer, encode_sample, get_preset

No Ray and no torch at import time; names are resolved lazily so importing the package is cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "presets": ["Preset", "get_preset", "PRESETS", "QWEN25_VL", "QWEN2_VL", "QWEN_VL", "QWEN3_VL", "DEFAULT_PRESET"],
    "errors": [
        "VlprepError", "MediaError", "ImageDecodeError", "ImageTooLargeError", "AspectRatioError",
        "VideoDecodeError", "VideoTimeoutError", "VideoTooShortError", "FormatError",
        "PlaceholderMismatchError", "SequenceTooLongError", "GroundingError", "PathEscapeError",
    ],
    "sample": ["Sample", "Message", "TextPart", "ImagePart", "VideoPart", "MediaRef", "EncodedSample"],
    "sizing": ["smart_resize"],
    "image": ["load_image", "image_size_from_header", "resize_image", "process_image", "image_target_size",
              "ImageResult"],
    "patches": ["patchify", "unpatchify", "normalize_patches"],
    "tokenizer": ["get_tokenizer", "QwenTokenizer", "special_ids", "SpecialIds"],
    "chatml": ["build_chatml", "ChatMLResult"],
    "formats": ["parse_record", "sample_id", "detect_format"],
    "grounding": ["Box", "Point", "Quad", "parse_grounding", "convert_grounding_text", "convert_objects",
                  "render_objects", "objects_from_pixels"],
    "rope": ["get_rope_index", "temporal_ids", "video_timestamps"],
    "video": ["probe_video", "sample_frame_indices", "process_video", "VideoInfo", "VideoResult"],
    "encode": ["encode_sample", "EncodeOptions"],
    "plan": ["plan_image", "plan_video", "plan_sample", "ImagePlan", "VideoPlan", "VideoHeader", "SamplePlan"],
    "media": ["resolve_media_path"],
    "text": ["clean_text", "clean_text_report", "clean_sample"],
}
_NAME_TO_MODULE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_NAME_TO_MODULE)


def __getattr__(name: str):
    module = _NAME_TO_MODULE.get(name)
    if module is None:
        raise AttributeError(f"module 'processors' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"processors.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
