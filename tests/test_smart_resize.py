"""smart_resize: spec §3.3 vectors and equality with transformers 5.23's own function over a large grid."""
from __future__ import annotations

import numpy as np
import pytest

from processors.errors import AspectRatioError
from processors.sizing import smart_resize

HUB = dict(min_pixels=3136, max_pixels=12_845_056)
CLS = dict(min_pixels=3136, max_pixels=1_003_520)

# (id, h, w, band, expected (H, W)) — spec §3.3, "HF >= 4.57" column.
VECTORS = [
    ("T-I1", 1080, 1920, HUB, (1092, 1932)),
    ("T-I2", 1080, 1920, CLS, (728, 1316)),
    ("T-I3", 428, 640, HUB, (420, 644)),
    ("T-I3-cls", 428, 640, CLS, (420, 644)),
    ("T-I4", 480, 640, HUB, (476, 644)),
    ("T-I4-cls", 480, 640, CLS, (476, 644)),
    ("T-I5", 224, 224, HUB, (224, 224)),
    ("T-I6", 70, 70, HUB, (56, 56)),
    ("T-I7", 10, 10, HUB, (56, 56)),
    ("T-I8", 1, 200, HUB, (28, 812)),
    ("T-I9", 2000, 10, HUB, (812, 28)),
    ("T-I10", 4000, 3000, HUB, (4004, 2996)),
    ("T-I11", 12000, 9000, HUB, (4116, 3080)),
    ("T-I12a", 4000, 3000, CLS, (1148, 840)),
    ("T-I12b", 12000, 9000, CLS, (1148, 840)),
    ("T-I13", 100, 20000, HUB, (112, 19992)),
    ("T-I14'", 639, 31, dict(min_pixels=3136, max_pixels=20 * 28 * 28), (560, 28)),
    ("T-I15", 27, 332, HUB, (28, 336)),
]


@pytest.mark.parametrize("vid,h,w,band,expected", VECTORS, ids=[v[0] for v in VECTORS])
def test_spec_vectors(vid, h, w, band, expected):
    assert smart_resize(h, w, 28, **band) == expected


def test_t_i16_ratio_above_200_raises():
    with pytest.raises(AspectRatioError, match="above 200"):
        smart_resize(201, 1, 28, **HUB)
    with pytest.raises(ValueError):  # AspectRatioError stays a ValueError, as transformers raises
        smart_resize(1, 201, 28, **HUB)
    assert smart_resize(200, 1, 28, **HUB) == smart_resize(200, 1, 28, **HUB)  # exactly 200 is fine


def test_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10)


@pytest.fixture(scope="module")
def hf_smart_resize():
    mod = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    return mod.smart_resize


def _compare(hf, pairs, band):
    for h, w in pairs:
        h, w = int(h), int(w)
        try:
            expected = hf(h, w, 28, **band)
        except ValueError:
            with pytest.raises(AspectRatioError):
                smart_resize(h, w, 28, **band)
            continue
        assert smart_resize(h, w, 28, **band) == expected, (h, w, band)


def test_equal_to_transformers_on_every_small_height(hf_smart_resize):
    """All h in 1..400 against a spread of widths (tiny, ties at 14 mod 28, band edges, huge)."""
    widths = sorted({*range(1, 401), *range(14, 20000, 28 * 37), 70, 98, 126, 3136, 3584, 4004, 12000, 19999, 20000})
    pairs = [(h, w) for h in range(1, 401) for w in widths]
    _compare(hf_smart_resize, pairs, HUB)
    _compare(hf_smart_resize, pairs[::7], CLS)


def test_equal_to_transformers_on_random_pairs(hf_smart_resize):
    """200k random (h, w) in 1..20000, log-uniform so small sides and extreme ratios are common."""
    rng = np.random.default_rng(20250101)
    sides = np.exp(rng.uniform(0, np.log(20000), size=(200_000, 2))).astype(np.int64).clip(1, 20000)
    _compare(hf_smart_resize, sides[:150_000], HUB)
    _compare(hf_smart_resize, sides[150_000:], CLS)
