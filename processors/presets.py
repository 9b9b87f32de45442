"""Model presets: one frozen object of constants per Qwen-VL generation.

Nothing here is read from environment variables; every processor takes a preset explicitly.
Numbers and their sources: ../shared/spec/qwen_preprocessing.md §1 and spec/DECISIONS.md.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import UserInputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Token ids shared by Qwen2-VL and Qwen2.5-VL (spec §10).
IMAGE_PAD_ID = 151655
VIDEO_PAD_ID = 151656
VISION_START_ID = 151652
VISION_END_ID = 151653
IM_START_ID = 151644
IM_END_ID = 151645
ENDOFTEXT_ID = 151643
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Preset:
    """Everything that differs between model generations, bound once."""

    name: str
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    # Image pixel band (released checkpoints' preprocessor_config: 4 ... 16384 tokens).
    min_pixels: int = 3136
    max_pixels: int = 12_845_056
    # Video per-frame band and whole-video budget (qwen-vl-utils 0.0.14).
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28
    video_total_pixels: int = int(128000 * 28 * 28 * 0.9)
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    # Qwen2.5-VL: temporal M-RoPE id = floor(k * second_per_grid_t * tokens_per_second).
    # None means Qwen2-VL semantics (temporal id = temporal patch index).
    tokens_per_second: float | None = 2.0
    # "qwen2.5-vl": absolute pixels on the resized image, JSON bbox_2d;
    # "qwen2-vl": 0-1000 on the original image, <|box_start|>(x1,y1),(x2,y2)<|box_end|>;
    # "qwen-vl": <ref>..</ref><box>(x1,y1),(x2,y2)</box>, int(x/W*1000) clamped to 0..999.
    grounding: str = "qwen2.5-vl"
    # Qwen-VL v1 resizes every image to a fixed square and has no video support.
    fixed_size: tuple[int, int] | None = None
    image_tokens_fixed: int | None = None
    supports_video: bool = True
    system_prompt: str = "You are a helpful assistant."

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def is_mrope(self) -> bool:
        return self.fixed_size is None

    def grid_thw(self, height: int, width: int, frames: int = 1) -> tuple[int, int, int]:
        """The patch grid of `frames` frames already resized to (height, width) (multiples of
        `factor`): the frame count padded to the temporal patch size, then patches per side."""
        return (-(-frames // self.temporal_patch_size), height // self.patch_size, width // self.patch_size)

    def visual_tokens(self, grid_thw) -> int:
        """Placeholder tokens one image/video grid expands to: prod(grid_thw) / merge_size²
        (Qwen-VL: its fixed count per image)."""
        if self.image_tokens_fixed is not None:
            return self.image_tokens_fixed
        t, h, w = (int(v) for v in grid_thw)
        return t * h * w // (self.merge_size ** 2)

    def with_overrides(self, **kwargs) -> "Preset":
        """A copy with some constants changed (e.g. a job-level pixel band)."""
        return replace(self, **kwargs)


QWEN25_VL = Preset(name="qwen2.5-vl")
QWEN2_VL = Preset(name="qwen2-vl", tokens_per_second=None, grounding="qwen2-vl")
QWEN_VL = Preset(
    name="qwen-vl",
    tokens_per_second=None,
    grounding="qwen-vl",
    fixed_size=(448, 448),
    image_tokens_fixed=256,
    supports_video=False,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (QWEN25_VL, QWEN2_VL, QWEN_VL)}
DEFAULT_PRESET = QWEN25_VL


def get_preset(name_or_preset: "str | Preset | None" = None) -> Preset:
    """Look a preset up by name (`qwen2.5-vl`, `qwen2-vl`, `qwen-vl`); a Preset passes through."""
    if name_or_preset is None:
        return DEFAULT_PRESET
    if isinstance(name_or_preset, Preset):
        return name_or_preset
    key = str(name_or_preset).strip().lower().replace("_", "-")
    aliases = {"qwen25-vl": "qwen2.5-vl", "qwen2.5vl": "qwen2.5-vl", "qwen2vl": "qwen2-vl", "qwenvl": "qwen-vl"}
    key = aliases.get(key, key)
    if key not in PRESETS:
        raise UserInputError(f"unknown preset {name_or_preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]
