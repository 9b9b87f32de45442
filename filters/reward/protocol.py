"""The scorer protocol: what the stage needs from a scorer, nothing more.

A scorer is set up once per worker on one device, then called on collated batches and returns
named float64 columns (one value per sample, NaN where the signal does not apply: e.g. pixel
statistics for a text-only sample). Column names are `{scorer}.{signal}` (docs/CONTRACTS.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: `filters` must stay importable without it
    import torch

    from .batching import HostBatch


class ScorerError(ValueError):
    """A scorer cannot run on this input/checkpoint; the message says which and what to do."""


@runtime_checkable
class Scorer(Protocol):
    name: str

    def columns(self) -> list[str]:
        """Every column this scorer writes (known after `setup`, e.g. a reward head adds one)."""

    def setup(self, device: "torch.device") -> None:
        """Load weights onto `device`; called once per worker before the first batch."""

    def score(self, batch: "HostBatch") -> dict[str, np.ndarray]:
        """One float64 array of len(batch) per column."""


def resolve_device(device: str | None = "auto"):
    """'auto' -> cuda when a GPU is visible, else cpu; 'cuda' without a GPU is an error."""
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = parse_device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScorerError(f"device {device!r} requested but torch sees no CUDA GPU (torch {torch.__version__}); "
                          "use --device cpu or install a CUDA build of torch")
    return dev


def parse_device(device: str):
    """torch.device of a --device value ('auto' is not a device: resolve_device handles it)."""
    import torch

    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ScorerError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None


DTYPES = ("auto", "bf16", "fp16", "fp32")


def compute_dtype(device, requested: str = "auto"):
    """The scorers' compute dtype on `device`.

    auto: bf16 (the released checkpoints' dtype) on a GPU that runs bf16 natively (compute capability
    >= 8: A100, H100, L4, RTX 30xx+), fp16 on older GPUs (V100, T4: torch emulates bf16 there, slowly),
    float32 on CPU (bf16 matmuls are slow there). An explicit bf16 on a GPU without native bf16 is refused.
    """
    import torch

    if requested not in DTYPES:
        raise ScorerError(f"--dtype {requested!r}: choose from {list(DTYPES)}")
    cuda = device.type == "cuda"
    native_bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    if requested == "auto":
        return (torch.bfloat16 if native_bf16 else torch.float16) if cuda else torch.float32
    if requested == "bf16" and cuda and not native_bf16:
        raise ScorerError(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no native bf16; "
                          "use --dtype fp16 (or auto)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[requested]


class Vocab:
    """The tokenizer the shards were written with and the ids the scorers look for in them: its
    SpecialIds (processors.tokenizer.special_ids, the one source) and its <|endoftext|> (pad / stop).
    `path` None = the built-in Qwen2 ranks with the preset's table (Qwen2 … Qwen3-VL checkpoints);
    a Hugging Face tokenizer folder for Qwen3.5 / Qwen3.6's 248k vocabulary (job.json's `tokenizer:`)."""

    def __init__(self, path: str | None, preset):
        from processors.tokenizer import get_tokenizer, special_ids

        try:
            self.tokenizer = get_tokenizer(path, preset=preset) if path else get_tokenizer(preset=preset)
            self.ids = special_ids(self.tokenizer, preset)
            self.pad = int(self.tokenizer.token_to_id("<|endoftext|>"))
        except (FileNotFoundError, KeyError) as exc:
            raise ScorerError(f"tokenizer {path or 'built-in'}: {str(exc).strip(chr(39))}; pass --tokenizer PATH "
                              "(the tokenizer folder the shards were prepared with)") from None
        except Exception as exc:  # noqa: BLE001 - VlprepError (a missing special token): its one line
            raise ScorerError(str(exc)) from None
        self.path = path

    @property
    def eos(self) -> list[int]:
        return [self.ids.im_end, self.pad]

    def top(self) -> int:
        """One past the tokenizer's highest id (rows above it in an embedding are unused padding)."""
        return max(int(self.tokenizer.vocab_size), self.pad + 1, *(i + 1 for i in vars(self.ids).values()))


_VOCABS: dict = {}


def vocab_for(path: str | None, preset) -> Vocab:
    """Vocab per (tokenizer path, preset name), built once per process."""
    from processors.presets import get_preset

    key = (path, get_preset(preset).name)
    if key not in _VOCABS:
        _VOCABS[key] = Vocab(path, preset)
    return _VOCABS[key]
