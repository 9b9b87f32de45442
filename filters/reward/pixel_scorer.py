"""`pixels` scorer: image statistics computed on the device straight from the uint8 patch rows.

No image is decoded again and nothing is unpatchified: a patch row is `[3, tp, 14, 14]` pixels
(channel-major, spec §4 step 8), so luminance, per-patch uniformity and a Laplacian over each
patch's 12x12 interior are all local to a row. Patch borders are skipped (a 14x14 patch loses its
outer ring), which is enough for ranking sharpness and saves the unpatchify gather.

Columns (per sample; NaN for samples with no image or video)
  pixels.blank       share of 14x14 patches that are near-uniform (luma std < 2 grey levels);
                     the sample's worst item (max over its images/videos)
  pixels.luma_std    std of luminance in [0, 1] over the item; the sample's lowest item
  pixels.sharpness   variance of the 4-neighbour Laplacian of luminance (grey levels^2, the scale of
                     `cv2.Laplacian(gray, CV_64F).var()`), on the resized pixels; the lowest item
  pixels.brightness  mean luminance in [0, 1] (pixel-weighted over the sample's items)
  pixels.clipped     share of pixels with luminance <= 2 or >= 253 grey levels (pixel-weighted)
Luminance is Rec.601 (0.299 R + 0.587 G + 0.114 B), as PIL's "L" conversion.
"""
from __future__ import annotations

import numpy as np

from .batching import HostBatch

# signals where a lower value is the better sample (a threshold keeps what is <= it)
LOWER_IS_BETTER = frozenset({"pixels.blank", "pixels.clipped"})
COLUMNS = ["pixels.blank", "pixels.luma_std", "pixels.sharpness", "pixels.brightness", "pixels.clipped"]
_UNIFORM_STD = 2.0      # grey levels: JPEG noise on a flat area stays under this
_CLIP_LO, _CLIP_HI = 2.0, 253.0
_ROWS_PER_CHUNK = 8192  # bounds the float32 working set (~38 MB per chunk)


class PixelScorer:
    name = "pixels"

    def setup(self, device) -> None:
        self.device = device

    def columns(self) -> list[str]:
        return list(COLUMNS)

    def score(self, batch: HostBatch) -> dict[str, np.ndarray]:
        import torch

        items = batch.pixel_items()
        n = len(batch)
        out = {c: np.full(n, np.nan) for c in COLUMNS}
        if not items:
            return out
        p, tp = batch.preset.patch_size, batch.preset.temporal_patch_size
        u8 = batch.uint8_patches()
        owner = torch.empty(u8.shape[0], dtype=torch.long, device=u8.device)
        for k, (_, _, _, a, b) in enumerate(items):
            owner[a:b] = k
        stats = torch.zeros(len(items), 7, dtype=torch.float64, device=u8.device)
        w = torch.tensor([0.299, 0.587, 0.114], device=u8.device, dtype=torch.float32).view(1, 3, 1, 1, 1)
        with torch.inference_mode():
            for a in range(0, u8.shape[0], _ROWS_PER_CHUNK):
                x = u8[a:a + _ROWS_PER_CHUNK].to(torch.float32).view(-1, 3, tp, p, p)
                y = (x * w).sum(1)  # [R, tp, p, p] luminance, grey levels
                flat = y.flatten(1)
                lap = (4 * y[..., 1:-1, 1:-1] - y[..., :-2, 1:-1] - y[..., 2:, 1:-1]
                       - y[..., 1:-1, :-2] - y[..., 1:-1, 2:]).flatten(1)
                uniform = (y.flatten(2).std(-1, unbiased=False) < _UNIFORM_STD).float().sum(1)
                clipped = ((flat <= _CLIP_LO) | (flat >= _CLIP_HI)).float().sum(1)
                rows = torch.stack([flat.sum(1), (flat * flat).sum(1), lap.sum(1), (lap * lap).sum(1),
                                    uniform, clipped, torch.full_like(uniform, float(tp))], 1)
                stats.index_add_(0, owner[a:a + _ROWS_PER_CHUNK], rows.double())
        s = stats.cpu().numpy()
        npix = np.array([(b - a) * tp * p * p for _, _, _, a, b in items], dtype=np.float64)
        nlap = np.array([(b - a) * tp * (p - 2) ** 2 for _, _, _, a, b in items], dtype=np.float64)
        mean = s[:, 0] / npix
        std = np.sqrt(np.maximum(s[:, 1] / npix - mean**2, 0.0))
        lap_mean = s[:, 2] / nlap
        sharp = np.maximum(s[:, 3] / nlap - lap_mean**2, 0.0)
        blank = s[:, 4] / s[:, 6]
        owner_sample = np.array([it[0] for it in items])
        for si in np.unique(owner_sample):
            k = owner_sample == si
            wts = npix[k] / npix[k].sum()
            out["pixels.blank"][si] = blank[k].max()
            out["pixels.luma_std"][si] = (std[k] / 255.0).min()
            out["pixels.sharpness"][si] = sharp[k].min()
            out["pixels.brightness"][si] = float((mean[k] / 255.0 * wts).sum())
            out["pixels.clipped"][si] = float((s[k, 5] / npix[k] * wts).sum())
        return out
