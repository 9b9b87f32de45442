"""processors.image against transformers' Qwen2VLImageProcessorPil (the exactness bar in DECISIONS.md).

The oracle is fed what transformers' own `load_image` does before its plain convert("RGB"): the file
opened with Pillow and EXIF-transposed. The processor's convert_to_rgb then composites transparency
onto white, which is the 5.x behaviour vlprep reproduces. (`load_image` itself would drop alpha
first; for files without transparency both routes are the same, which a test below checks.)
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps, features

from media_factory import gradient_rgb, make_image
from processors.errors import AspectRatioError, ImageDecodeError, ImageTooLargeError
from processors.image import (
    ImageResult,
    image_size_from_header,
    load_image,
    open_image,
    process_image,
    resize_image,
)
from processors.patches import normalize_patches, unpatchify
from processors.presets import CLIP_MEAN, CLIP_STD, QWEN25_VL

HUB_MIN, HUB_MAX = 3136, 12_845_056


@pytest.fixture(scope="module")
def oracle():
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.Qwen2VLImageProcessorPil(min_pixels=HUB_MIN, max_pixels=HUB_MAX)


def oracle_input(path) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(path))


def run_oracle(oracle, image: Image.Image, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = oracle(images=image, return_tensors="np", **kwargs)
    return out["pixel_values"], tuple(int(v) for v in out["image_grid_thw"][0])


def assert_matches_oracle(oracle, path, **kwargs):
    ours = process_image(path, **kwargs)
    pv, grid = run_oracle(oracle, oracle_input(path), **kwargs)
    assert ours.grid_thw == grid
    assert ours.patches.dtype == np.uint8
    mine = normalize_patches(ours.patches, CLIP_MEAN, CLIP_STD)
    assert mine.shape == pv.shape
    assert np.abs(mine - pv).max() <= 1e-6
    return ours


# ------------------------------------------------------------------ generated media


def _with_transparent_corner(rgb: np.ndarray) -> Image.Image:
    """Palette image whose index 0 is transparent and fills the top-left quarter."""
    p = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    idx = np.asarray(p).copy()
    idx[: idx.shape[0] // 2, : idx.shape[1] // 2] = 0
    out = Image.fromarray(idx, mode="P")
    out.putpalette(p.getpalette())
    out.info["transparency"] = 0
    return out


def _exif_jpeg(path, orientation: int, width=90, height=60):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(gradient_rgb(width, height, seed=3)).save(path, "JPEG", exif=exif, quality=92)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    files = {}
    files["tiny_1x1"] = make_image(d / "tiny_1x1.png", 1, 1)
    files["tiny_10x10"] = make_image(d / "tiny_10x10.png", 10, 10)
    files["h27_w332"] = make_image(d / "h27_w332.png", 332, 27)
    files["h1_w200"] = make_image(d / "h1_w200.png", 200, 1)
    files["h2000_w10"] = make_image(d / "h2000_w10.png", 10, 2000)
    files["square_224"] = make_image(d / "square_224.png", 224, 224)  # already on the grid
    files["cmyk_jpeg"] = make_image(d / "cmyk.jpg", 120, 80, mode="CMYK", quality=90)
    pal = _with_transparent_corner(gradient_rgb(96, 64, seed=5))
    pal.save(d / "palette_trns.png", transparency=0)
    files["palette_trns_png"] = d / "palette_trns.png"
    la = Image.fromarray(np.stack([gradient_rgb(80, 60)[..., 0], np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (60, 1))], -1), "LA")
    la.save(d / "la.png")
    files["la_png"] = d / "la.png"
    rgba = np.concatenate([gradient_rgb(70, 50, seed=2), np.full((50, 70, 1), 255, np.uint8)], -1)
    rgba[:25, :35, 3] = 0
    rgba[25:, 35:, 3] = 128
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    files["rgba_png"] = d / "rgba.png"
    i16 = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 7 % 1200).astype(np.uint16)
    Image.fromarray(i16).save(d / "i16.png")
    files["i16_png"] = d / "i16.png"
    files["exif6_jpeg"] = _exif_jpeg(d / "exif6.jpg", 6)
    files["exif8_jpeg"] = _exif_jpeg(d / "exif8.jpg", 8)
    files["progressive_jpeg"] = make_image(d / "prog.jpg", 300, 200, progressive=True, quality=85)
    if features.check("webp"):
        files["webp"] = make_image(d / "img.webp", 150, 100, quality=80)
    files["gif"] = make_image(d / "img.gif", 100, 70, mode="P")
    files["bilevel_png"] = make_image(d / "bilevel.png", 90, 45, mode="1")
    files["grey_jpeg"] = make_image(d / "grey.jpg", 64, 100, mode="L")
    return files


EDGE_CASES = [
    "tiny_1x1", "tiny_10x10", "h27_w332", "h1_w200", "h2000_w10", "square_224", "cmyk_jpeg",
    "palette_trns_png", "la_png", "rgba_png", "i16_png", "exif6_jpeg", "exif8_jpeg",
    "progressive_jpeg", "webp", "gif", "bilevel_png", "grey_jpeg",
]


# ------------------------------------------------------------------ equality with the oracle


@pytest.mark.parametrize("name", ["1.jpg", "2.jpg", "3.jpg"])
def test_demo_images_match_oracle(oracle, shared_corpus, name):
    assert_matches_oracle(oracle, shared_corpus / "mllm_demo_data" / name)


@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_cases_match_oracle(oracle, media, case):
    if case not in media:
        pytest.skip(f"Pillow built without support for {case}")
    assert_matches_oracle(oracle, media[case])


def test_expected_grids_for_tiny_and_thin_images(media):
    # spec §3.3: T-I7 (10x10), T-I15 (27x332), T-I8 (1x200), T-I9 (2000x10, ratio exactly 200)
    assert process_image(media["tiny_10x10"]).grid_thw == (1, 4, 4)
    assert process_image(media["h27_w332"]).grid_thw == (1, 2, 24)
    assert process_image(media["h1_w200"]).grid_thw == (1, 2, 58)
    assert process_image(media["h2000_w10"]).grid_thw == (1, 58, 2)
    assert process_image(media["tiny_1x1"]).resized_size == (56, 56)


def test_ratio_above_200_is_an_aspect_ratio_error(tmp_path, oracle):
    path = make_image(tmp_path / "h201_w1.png", 1, 201)
    with pytest.raises(AspectRatioError, match="h201_w1.png"):
        process_image(path)
    with pytest.raises(ValueError):  # the oracle refuses it too
        run_oracle(oracle, oracle_input(path))


def test_band_override_matches_oracle_with_same_band(oracle, tmp_path):
    path = make_image(tmp_path / "fullhd.jpg", 1920, 1080, quality=90)
    ours = assert_matches_oracle(oracle, path, min_pixels=3136, max_pixels=1280 * 28 * 28)
    assert ours.grid_thw == (1, 52, 94)  # T-I2
    assert ours.original_size == (1080, 1920) and ours.resized_size == (728, 1316)
    assert process_image(path).grid_thw == (1, 78, 138)  # T-I1 with the preset's Hub band


def test_result_shapes_and_token_count(shared_corpus):
    r = process_image(shared_corpus / "mllm_demo_data" / "1.jpg")
    assert isinstance(r, ImageResult)
    t, gh, gw = r.grid_thw
    assert r.patches.shape == (t * gh * gw, 1176)
    assert r.resized_size == (gh * 14, gw * 14)
    assert r.num_tokens == gh * gw // 4
    assert r.original_size == (168, 300)


# ------------------------------------------------------------------ loading


def test_loader_equals_transformers_load_image_without_transparency(media):
    from transformers.image_utils import load_image as hf_load_image

    for case in ["cmyk_jpeg", "i16_png", "exif6_jpeg", "exif8_jpeg", "progressive_jpeg", "bilevel_png", "grey_jpeg"]:
        ours = np.asarray(load_image(media[case]))
        theirs = np.asarray(hf_load_image(str(media[case])))
        assert ours.shape == theirs.shape, case
        assert np.array_equal(ours, theirs), case


def test_transparent_pixels_become_white(media):
    pal = np.asarray(load_image(media["palette_trns_png"]))
    assert pal.shape == (64, 96, 3)
    assert (pal[:32, :48] == 255).all()
    rgba_src = np.asarray(Image.open(media["rgba_png"]))
    rgba = np.asarray(load_image(media["rgba_png"])).astype(np.int32)
    assert (rgba[:25, :35] == 255).all()  # alpha 0
    assert np.array_equal(rgba[:25, 35:], rgba_src[:25, 35:, :3])  # alpha 255 untouched
    half = rgba_src[25:, 35:, :3].astype(np.int32)  # alpha 128: halfway to white
    assert np.abs(rgba[25:, 35:] - (half * 128 + 255 * 127) / 255).max() <= 1
    la = np.asarray(load_image(media["la_png"]))
    assert (la[:, 0] == 255).all()  # alpha 0 column
    assert np.array_equal(la[:, -1, 0], np.asarray(Image.open(media["la_png"]))[:, -1, 0])  # opaque column


def test_sixteen_bit_grey_is_clipped_like_pillow(media):
    raw = np.asarray(Image.open(media["i16_png"])).astype(np.int64)
    rgb = np.asarray(load_image(media["i16_png"]))
    assert rgb.dtype == np.uint8 and rgb.shape == raw.shape + (3,)
    assert np.array_equal(rgb[..., 0], np.minimum(raw, 255))
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


@pytest.mark.parametrize("orientation,rotate", [(6, -1), (8, 1)])
def test_exif_orientation_applied(media, orientation, rotate):
    path = media[f"exif{orientation}_jpeg"]
    raw = np.asarray(Image.open(path).convert("RGB"))
    assert image_size_from_header(path) == (90, 60)  # stored 90 wide x 60 high, rotated upright
    upright = np.asarray(load_image(path))
    assert np.array_equal(upright, np.rot90(raw, k=rotate))
    assert process_image(path).original_size == (90, 60)


def test_header_size_without_rotation(shared_corpus):
    assert image_size_from_header(shared_corpus / "mllm_demo_data" / "3.jpg") == (166, 300)


def test_inputs_as_bytes_and_pil_give_the_same_result(shared_corpus):
    path = shared_corpus / "mllm_demo_data" / "2.jpg"
    a = process_image(path)
    b = process_image(path.read_bytes())
    c = process_image(Image.open(path))
    assert np.array_equal(a.patches, b.patches) and np.array_equal(a.patches, c.patches)
    assert a.grid_thw == b.grid_thw == c.grid_thw


# ------------------------------------------------------------------ limits and broken files


def _forged_png(width: int, height: int) -> bytes:
    """A PNG header claiming width x height, followed by a few bytes of junk pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(_forged_png(12_000, 12_000))  # 144 MP claimed by a ~100-byte file
    # Pillow's own global limit switched off: the check must still be ours.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageTooLargeError) as err:
        process_image(path, max_image_pixels=100_000_000)
    msg = str(err.value)
    assert "bomb.png" in msg and "144,000,000" in msg and "100,000,000" in msg and "max_image_pixels" in msg
    # Had it decoded, the junk data would have raised ImageDecodeError instead.
    with pytest.raises(ImageTooLargeError):
        load_image(path, max_image_pixels=100_000_000)
    assert image_size_from_header(path) == (12_000, 12_000)


def test_pixel_limit_on_a_real_image_and_gigapixel_claims(tmp_path, shared_corpus):
    with pytest.raises(ImageTooLargeError, match="50,400 pixels"):
        process_image(shared_corpus / "mllm_demo_data" / "1.jpg", max_image_pixels=10_000)
    assert process_image(shared_corpus / "mllm_demo_data" / "1.jpg", max_image_pixels=50_400).grid_thw == (1, 12, 22)
    with pytest.raises(ImageTooLargeError, match="giga.png"):
        path = tmp_path / "giga.png"
        path.write_bytes(_forged_png(60_000, 60_000))
        process_image(path)  # default limit (and Pillow's) both refuse 3.6 GP


def test_corrupt_unknown_empty_and_missing_files(tmp_path, shared_corpus):
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        process_image(b"this is not an image at all")
    jpeg = (shared_corpus / "mllm_demo_data" / "2.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 3])
    with pytest.raises(ImageDecodeError, match="truncated.jpg: corrupt or truncated"):
        process_image(truncated)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        load_image(truncated)
    with pytest.raises(ImageDecodeError, match="empty"):
        process_image(b"")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.png: image file is empty"):
        process_image(empty)
    with pytest.raises(ImageDecodeError, match="not found"):
        process_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError):
        image_size_from_header(b"\x89PNG junk")


# ------------------------------------------------------------------ resize, qwen-vl, fast mode


def test_resize_image_is_pillow_bicubic_and_identity_at_same_size():
    img = Image.fromarray(gradient_rgb(200, 120, seed=9))
    out = resize_image(img, 84, 140)
    assert out.dtype == np.uint8 and out.shape == (84, 140, 3)
    assert np.array_equal(out, np.asarray(img.resize((140, 84), Image.Resampling.BICUBIC)))
    assert np.array_equal(resize_image(img, 120, 200), np.asarray(img))


def test_qwen_vl_preset_is_a_fixed_448_square(shared_corpus, tmp_path):
    path = shared_corpus / "mllm_demo_data" / "1.jpg"
    r = process_image(path, "qwen-vl")
    assert r.grid_thw == (1, 32, 32)
    assert r.patches.shape == (1, 448, 448, 3) and r.patches.dtype == np.uint8
    expected = np.asarray(load_image(path).resize((448, 448), Image.Resampling.BICUBIC))
    assert np.array_equal(r.patches[0], expected)
    assert r.original_size == (168, 300) and r.resized_size == (448, 448)
    square = make_image(tmp_path / "sq448.png", 448, 448)
    assert np.array_equal(process_image(square, "qwen-vl").patches[0], np.asarray(Image.open(square)))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour field plus fine noise: compresses like a photograph."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 100 + 2, width // 100 + 2, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return np.clip(base + rng.normal(0, 3, (height, width, 1)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("orientation", [1, 6])
def test_fast_mode_stays_close_to_exact(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"big{orientation}.jpg"
    Image.fromarray(_photo(2400, 1600)).save(path, quality=90, exif=exif)
    band = dict(max_pixels=400 * 28 * 28)  # a 4.6x downscale, so the JPEG is decoded at 1/2 or 1/4
    exact = process_image(path, **band)
    fast = process_image(path, fast=True, **band)
    assert fast.grid_thw == exact.grid_thw and fast.original_size == exact.original_size
    a = unpatchify(exact.patches, exact.grid_thw)[0]
    b = unpatchify(fast.patches, fast.grid_thw)[0]
    assert _psnr(a, b) >= 38.0
    assert not np.array_equal(a, b)  # the draft really was used


def test_fast_mode_is_exact_when_no_shortcut_applies(media):
    # PNG (no reduced decode), upscale: nothing to speed up, so fast must equal exact.
    a = process_image(media["la_png"], fast=True)
    b = process_image(media["la_png"])
    assert np.array_equal(a.patches, b.patches)
    assert QWEN25_VL.patch_dim == a.patches.shape[1]
