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
    system_prompt: str | None = "You are a helpful assistant."
    # How frames are picked and sized: "qwen-vl-utils" (0.0.14, spec §6: per-frame band, clip budget
    # spread over frames) or "transformers" (Qwen3VLVideoProcessor: fps-based count clamped to
    # [min_frames, min(max_frames, total)], np.linspace indices, ONE pixel band for the whole clip:
    # video_min_pixels .. video_max_pixels over t_bar * H * W, as its size.shortest/longest_edge).
    video_rule: str = "qwen-vl-utils"
    # The frame resize of the reference pipeline: "qwen-vl-utils" (torchvision v1 on float32) or
    # "transformers" (the video processor's uint8 bicubic+antialias on CPU, vlprep's `fast_videos`).
    video_resize: str = "qwen-vl-utils"
    # None: one <|vision_start|><|video_pad|>*n<|vision_end|> block per video (Qwen2/2.5-VL).
    # "4.57": "<{t:.1f} seconds>" + one vision block per temporal group (transformers 4.57, which the
    # Qwen3-VL fine-tuning code pins); "5.x": the same inside one extra outer vision_start/vision_end
    # pair (transformers >= 5 keeps the template's own pair around the groups).
    video_timestamps: str | None = None
    # Position ids: "qwen2-vl" (temporal id = patch index), "qwen2.5-vl" (absolute time via
    # tokens_per_second), "qwen3-vl" (each temporal group its own [1, h, w] grid, no time stride),
    # "1d" (qwen-vl: plain positions).
    rope: str = "qwen2.5-vl"
    # Added-token table of the built-in tokenizer (processors.tokenizer.TABLES).
    tokenizer_table: str = "qwen2"

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
QWEN2_VL = Preset(name="qwen2-vl", tokens_per_second=None, grounding="qwen2-vl", rope="qwen2-vl")
QWEN_VL = Preset(
    name="qwen-vl",
    tokens_per_second=None,
    grounding="qwen-vl",
    fixed_size=(448, 448),
    image_tokens_fixed=256,
    supports_video=False,
    rope="1d",
    tokenizer_table="qwen-vl",
)
# Qwen3-VL (docs/qwen3_vl.md): the released checkpoints' preprocessor_config.json /
# video_preprocessor_config.json: patch 16, merge 2, mean = std = 0.5, image size
# {shortest_edge: 65536, longest_edge: 16777216}, video size {shortest_edge: 4096,
# longest_edge: 25165824} over the whole clip, fps 2, min_frames 4, max_frames 768.
QWEN3_VL = Preset(
    name="qwen3-vl",
    patch_size=16,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    min_pixels=65_536,
    max_pixels=16_777_216,
    video_min_pixels=4_096,
    video_max_pixels=25_165_824,
    video_total_pixels=25_165_824,
    tokens_per_second=None,
    grounding="qwen3-vl",
    system_prompt=None,
    video_rule="transformers",
    video_resize="transformers",
    video_timestamps="4.57",
    rope="qwen3-vl",
    tokenizer_table="qwen3",
)
# The same with transformers 5.x's token layout around the timestamps (one outer vision pair).
QWEN3_VL_TF5 = replace(QWEN3_VL, name="qwen3-vl-tf5", video_timestamps="5.x")
# The same with qwen-vl-utils 0.0.14 frame sampling and budgets (image_patch_size=16: its token
# budgets times 32²), as a user who runs qwen-vl-utils before the processor gets them.
QWEN3_VL_QVU = replace(QWEN3_VL, name="qwen3-vl-qvu", video_rule="qwen-vl-utils", video_resize="qwen-vl-utils",
                       video_min_pixels=128 * 32 * 32, video_max_pixels=768 * 32 * 32,
                       video_total_pixels=int(128000 * 32 * 32 * 0.9))

PRESETS: dict[str, Preset] = {p.name: p for p in (QWEN25_VL, QWEN2_VL, QWEN_VL, QWEN3_VL, QWEN3_VL_TF5, QWEN3_VL_QVU)}
DEFAULT_PRESET = QWEN25_VL


def get_preset(name_or_preset: "str | Preset | None" = None) -> Preset:
    """Look a preset up by name (`qwen2.5-vl`, `qwen2-vl`, `qwen-vl`, `qwen3-vl`, `qwen3-vl-tf5`,
    `qwen3-vl-qvu`); a Preset passes through."""
    if name_or_preset is None:
        return DEFAULT_PRESET
    if isinstance(name_or_preset, Preset):
        return name_or_preset
    key = str(name_or_preset).strip().lower().replace("_", "-")
    aliases = {"qwen25-vl": "qwen2.5-vl", "qwen2.5vl": "qwen2.5-vl", "qwen2vl": "qwen2-vl", "qwenvl": "qwen-vl",
               "qwen3vl": "qwen3-vl"}
    key = aliases.get(key, key)
    if key not in PRESETS:
        raise UserInputError(f"unknown preset {name_or_preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]
