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
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScorerError(f"device {device!r} requested but torch sees no CUDA GPU (torch {torch.__version__}); "
                          "use --device cpu or install a CUDA build of torch")
    return dev


def compute_dtype(device):
    """bf16 on GPU (the released checkpoints' dtype), float32 on CPU (bf16 matmuls are slow there)."""
    import torch

    return torch.bfloat16 if device.type == "cuda" else torch.float32
