"""M-RoPE position ids: spec §11.3 vectors, §11.2 closed forms, and transformers 5.23 as an oracle.

transformers 5.x is used as the oracle only where it agrees with the 4.x reference vlprep
reproduces (DECISIONS.md): text, images, and videos whose last temporal id <= max(gh, gw) - 1.
"""
from __future__ import annotations

import numpy as np
import pytest

from processors.errors import PlaceholderMismatchError
from processors.presets import (
    IM_END_ID,
    IM_START_ID,
    IMAGE_PAD_ID,
    QWEN2_VL,
    QWEN25_VL,
    QWEN_VL,
    VIDEO_PAD_ID,
    VISION_END_ID,
    VISION_START_ID,
)
from processors.rope import get_rope_index, temporal_ids, temporal_patch_times, video_timestamps

# §9: "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
PREFIX15 = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652]
SUFFIX = [VISION_END_ID, 74785, 419, 2168, 13, IM_END_ID, 198, IM_START_ID, 77091, 198]


def vision_block(pad: int, n: int) -> list[int]:
    return [VISION_START_ID] + [pad] * n + [VISION_END_ID]


# ---------------------------------------------------------------- spec vectors


def test_t_r1_image_both_families():
    ids = [IM_START_ID, 872, 198, VISION_START_ID] + [IMAGE_PAD_ID] * 4 + [VISION_END_ID, 87, 88]
    for preset in (QWEN25_VL, QWEN2_VL):
        pos, delta = get_rope_index(ids, [[1, 4, 4]], preset=preset)
        assert pos.dtype == np.int32 and pos.shape == (3, 11)
        assert pos[0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 6, 7, 8]
        assert pos[1].tolist() == [0, 1, 2, 3, 4, 4, 5, 5, 6, 7, 8]
        assert pos[2].tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8]
        assert delta == -2


def _t_r2_ids():
    return [IM_START_ID, 872, 198, VISION_START_ID] + [VIDEO_PAD_ID] * 8 + [VISION_END_ID, 87]


def test_t_r2_video_qwen25_and_qwen2():
    ids = _t_r2_ids()
    pos, _ = get_rope_index(ids, video_grid_thw=[[2, 4, 4]], second_per_grid_ts=[1.0], preset=QWEN25_VL)
    assert pos[0, 4:12].tolist() == [4, 4, 4, 4, 6, 6, 6, 6]
    assert pos[1, 4:12].tolist() == [4, 4, 5, 5, 4, 4, 5, 5]
    assert pos[2, 4:12].tolist() == [4, 5, 4, 5, 4, 5, 4, 5]
    assert pos[:, 12].tolist() == [7, 7, 7]

    pos, _ = get_rope_index(ids, video_grid_thw=[[2, 4, 4]], preset=QWEN2_VL)
    assert pos[0, 4:12].tolist() == [4, 4, 4, 4, 5, 5, 5, 5]
    assert pos[:, 12].tolist() == [6, 6, 6]

    pos, _ = get_rope_index(ids, video_grid_thw=[[2, 4, 4]], second_per_grid_ts=[2.0], preset=QWEN25_VL)
    assert pos[0, 4:12].tolist() == [4] * 4 + [8] * 4
    assert pos[:, 12].tolist() == [9, 9, 9]


def test_t_r2_missing_seconds_defaults_to_one():
    a, da = get_rope_index(_t_r2_ids(), video_grid_thw=[[2, 4, 4]], second_per_grid_ts=None)
    b, db = get_rope_index(_t_r2_ids(), video_grid_thw=[[2, 4, 4]], second_per_grid_ts=[1.0])
    assert np.array_equal(a, b) and da == db


def test_t_r3_t_i1_image_in_chat_prompt():
    ids = np.array(PREFIX15 + [IMAGE_PAD_ID] * 2691 + SUFFIX)
    pos, delta = get_rope_index(ids, image_grid_thw=[[1, 78, 138]])
    assert pos[:, :15].tolist() == [list(range(15))] * 3
    vis = pos[:, 15:2706]
    assert (vis[0] == 15).all()
    assert np.array_equal(vis[1], 15 + np.repeat(np.arange(39), 69))
    assert np.array_equal(vis[2], 15 + np.tile(np.arange(69), 39))
    assert pos[:, 2706].tolist() == [84, 84, 84]
    later = np.arange(2706, len(ids))
    assert np.array_equal(pos[0, 2706:], later - 2622)
    assert (pos[0] == pos[1])[2706:].all() and (pos[0] == pos[2])[2706:].all()
    assert delta == -2622 == 69 - 2691


def test_t_r4_t_v1_video_both_families():
    ids = np.array(PREFIX15[:-1] + vision_block(VIDEO_PAD_ID, 7200) + SUFFIX[1:])
    pos, delta = get_rope_index(ids, video_grid_thw=[[10, 40, 72]], second_per_grid_ts=[1.0], preset=QWEN25_VL)
    vis = pos[:, 15:15 + 7200].reshape(3, 10, 20, 36)
    assert np.array_equal(vis[0, :, 0, 0], np.arange(15, 34, 2))
    assert (vis[0] == vis[0, :, :1, :1]).all()  # 720 equal temporal ids per patch
    assert np.array_equal(vis[1, 0, :, 0], np.arange(15, 35))
    assert np.array_equal(vis[2, 0, 0, :], np.arange(15, 51))
    assert pos[:, 7215].tolist() == [51, 51, 51]
    assert delta == -7164 == 36 - 7200

    pos2, delta2 = get_rope_index(ids, video_grid_thw=[[10, 40, 72]], preset=QWEN2_VL)
    vis2 = pos2[:, 15:15 + 7200].reshape(3, 10, 20, 36)
    assert np.array_equal(vis2[0, :, 0, 0], np.arange(15, 25))
    assert pos2[:, 7215].tolist() == [51, 51, 51] and delta2 == -7164


def test_t_r5_t_v10_long_video():
    grid = (384, 24, 46)
    n = 384 * 12 * 23
    assert n == 105_984
    ids = np.array(PREFIX15[:-1] + vision_block(VIDEO_PAD_ID, n) + SUFFIX[1:])
    s = 2 / (768 / 18000 * 29.97)  # temporal_patch_size / sample_fps, §6.8 T-V10
    assert round(s, 7) == 1.5640641
    pos, delta = get_rope_index(ids, video_grid_thw=[grid], second_per_grid_ts=np.float32([s]))
    t_off = pos[0, 15:15 + n].reshape(384, 12 * 23)[:, 0] - 15
    assert t_off[:12].tolist() == [0, 3, 6, 9, 12, 15, 18, 21, 25, 28, 31, 34]
    assert t_off[-1] == 1198
    # closed form §11.2: text after the video starts at start + max(T_last, gh - 1, gw - 1) + 1
    assert pos[:, 15 + n].tolist() == [15 + 1199] * 3
    assert delta == 1199 - n
    # the spec's rounded value gives the same ids (nothing near an integer boundary)
    pos_r, _ = get_rope_index(ids, video_grid_thw=[grid], second_per_grid_ts=[1.5640641])
    assert np.array_equal(pos_r, pos)

    pos2, delta2 = get_rope_index(ids, video_grid_thw=[grid], preset=QWEN2_VL)
    assert pos2[0, 15 + n - 1] == 15 + 383 and pos2[0, 15 + n] == 15 + 384
    assert delta2 == 384 - n


# ---------------------------------------------------------------- temporal ids (§6.8 column)


@pytest.mark.parametrize(
    "grid_t, s, expected",
    [
        (10, 1.0, list(range(0, 20, 2))),  # T-V1
        (5, 2.0, [0, 4, 8, 12, 16]),  # T-V2
        (20, 0.5, list(range(20))),  # T-V3: an int-cast of s would give all zeros
        (4, 2.5, [0, 5, 10, 15]),  # T-V4
        (2, 5.0, [0, 10]),  # T-V5
        (2, 0.1, [0, 0]),  # T-V7
    ],
)
def test_temporal_ids_qwen25(grid_t, s, expected):
    assert temporal_ids(grid_t, s, QWEN25_VL).tolist() == expected


def test_temporal_ids_t_v10_and_qwen2():
    ids = temporal_ids(384, 1.5640641, QWEN25_VL)
    assert ids[:12].tolist() == [0, 3, 6, 9, 12, 15, 18, 21, 25, 28, 31, 34] and ids[-1] == 1198
    assert temporal_ids(10, 1.0, QWEN2_VL).tolist() == list(range(10))
    assert temporal_ids(4, 5.0, QWEN2_VL).tolist() == [0, 1, 2, 3]  # Qwen2-VL ignores seconds
    with pytest.raises(ValueError, match="no M-RoPE"):
        temporal_ids(2, 1.0, QWEN_VL)
    with pytest.raises(ValueError, match="finite"):
        temporal_ids(2, -1.0, QWEN25_VL)


def test_timestamps():
    assert temporal_patch_times(4, 2.5) == [0.0, 2.5, 5.0, 7.5]
    assert video_timestamps([[4, 4, 4], [2, 8, 8]], [0.5, 1.5640641]) == [[0.0, 0.5, 1.0, 1.5], [0.0, 1.5640641]]
    with pytest.raises(ValueError, match="2 video grids but 1"):
        video_timestamps([[4, 4, 4], [2, 8, 8]], [0.5])


# ---------------------------------------------------------------- structure, errors


def test_qwen_vl_is_plain_1d():
    pos, delta = get_rope_index(np.arange(7) + 100, preset="qwen-vl")
    assert pos.dtype == np.int32 and pos.tolist() == [list(range(7))] and delta == 0


def test_text_only_and_empty():
    pos, delta = get_rope_index([1, 2, 3, 4])
    assert pos.tolist() == [[0, 1, 2, 3]] * 3 and delta == 0
    pos, delta = get_rope_index(np.zeros(0, dtype=np.int64))
    assert pos.shape == (3, 0) and delta == 0


def test_stray_pad_without_vision_start_is_text():
    ids = [5, IMAGE_PAD_ID, 6] + vision_block(IMAGE_PAD_ID, 4) + [7]
    pos, delta = get_rope_index(ids, [[1, 4, 4]])
    assert pos[0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 6, 7]
    assert pos[1, 4:8].tolist() == [4, 4, 5, 5] and delta == -2
    with pytest.raises(PlaceholderMismatchError, match="1 image and 0 video blocks"):
        get_rope_index(ids, [[1, 4, 4], [1, 4, 4]])


def test_pad_run_length_mismatch_is_an_error():
    with pytest.raises(PlaceholderMismatchError, match="has 3 pad tokens but its grid \\(1, 4, 4\\) needs 4"):
        get_rope_index([1] + vision_block(IMAGE_PAD_ID, 3) + [2], [[1, 4, 4]])
    with pytest.raises(PlaceholderMismatchError, match="has 5 pad tokens"):
        get_rope_index([1] + vision_block(IMAGE_PAD_ID, 5) + [2], [[1, 4, 4]])
    with pytest.raises(PlaceholderMismatchError, match="0 image and 1 video"):
        get_rope_index([1] + vision_block(VIDEO_PAD_ID, 4), [[1, 4, 4]])
    with pytest.raises(ValueError, match="shape \\[L\\]"):
        get_rope_index(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="1 video grids but 2"):
        get_rope_index([1] + vision_block(VIDEO_PAD_ID, 4), video_grid_thw=[[1, 4, 4]], second_per_grid_ts=[1, 2])


# ---------------------------------------------------------------- transformers 5.23 oracle

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _tiny_text():
    return dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=64, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
    )


@pytest.fixture(scope="module")
def hf_models():
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    c25 = Qwen2_5_VLConfig(
        text_config=_tiny_text(),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           tokens_per_second=2, fullatt_block_indexes=[0]),
    )
    c2 = Qwen2VLConfig(
        text_config=_tiny_text(),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=16, mlp_ratio=2, num_heads=2),
    )
    assert c25.vision_config.tokens_per_second == 2 and c25.vision_config.spatial_merge_size == 2
    return {"qwen2.5-vl": Qwen2_5_VLModel(c25).eval(), "qwen2-vl": Qwen2VLModel(c2).eval()}


def hf_rope(model, ids, images, videos, secs):
    """transformers 5.x needs mm_token_type_ids (text 0, image 1, video 2), as its processor builds them."""
    ids_t = torch.tensor(np.asarray(ids), dtype=torch.long)[None]
    types = torch.zeros_like(ids_t, dtype=torch.int32)
    types[ids_t == IMAGE_PAD_ID] = 1
    types[ids_t == VIDEO_PAD_ID] = 2
    kwargs = dict(
        image_grid_thw=torch.tensor(images, dtype=torch.long) if images else None,
        video_grid_thw=torch.tensor(videos, dtype=torch.long) if videos else None,
    )
    if secs is not None:
        # the processor hands second_per_grid_ts over as a float32 tensor
        kwargs["second_per_grid_ts"] = torch.tensor(secs, dtype=torch.float32)
    with torch.no_grad():
        pos, delta = model.get_rope_index(ids_t, types, **kwargs)
    return pos[:, 0].numpy(), int(delta.reshape(-1)[0])


def build_sequence(rng, items):
    """items: list of ("image"|"video", grid); random text runs around them."""
    ids = list(rng.integers(0, 1000, rng.integers(0, 6)))
    for kind, grid in items:
        n = grid[0] * grid[1] * grid[2] // 4
        ids += vision_block(IMAGE_PAD_ID if kind == "image" else VIDEO_PAD_ID, n)
        ids += list(rng.integers(0, 1000, rng.integers(0, 5)))
    return ids


def check_against_hf(hf_models, preset, ids, images, videos, secs):
    ours, delta = get_rope_index(ids, images or None, videos or None, secs, preset=preset)
    ref, ref_delta = hf_rope(hf_models[preset.name], ids, images, videos, secs if preset.tokens_per_second else None)
    assert ours.dtype == np.int32
    np.testing.assert_array_equal(ours, ref)
    assert delta == ref_delta


@pytest.mark.parametrize("preset", [QWEN25_VL, QWEN2_VL], ids=lambda p: p.name)
def test_hf_text_only(hf_models, preset):
    ids = list(range(100, 140))
    check_against_hf(hf_models, preset, ids, [], [], None)


@pytest.mark.parametrize("preset", [QWEN25_VL, QWEN2_VL], ids=lambda p: p.name)
@pytest.mark.parametrize("grid", [[1, 4, 4], [1, 2, 8], [1, 10, 4], [1, 78, 138]])
def test_hf_single_image(hf_models, preset, grid):
    ids = PREFIX15 + [IMAGE_PAD_ID] * (grid[1] * grid[2] // 4) + SUFFIX
    check_against_hf(hf_models, preset, ids, [grid], [], None)


@pytest.mark.parametrize("preset", [QWEN25_VL, QWEN2_VL], ids=lambda p: p.name)
def test_hf_images_interleaved_random(hf_models, preset):
    rng = np.random.default_rng(0)
    for _ in range(25):
        grids = [[1, 2 * int(rng.integers(1, 9)), 2 * int(rng.integers(1, 9))] for _ in range(rng.integers(1, 5))]
        ids = build_sequence(rng, [("image", g) for g in grids])
        check_against_hf(hf_models, preset, ids, grids, [], None)


def _agreeing_video(rng, preset, s):
    """A video grid whose last temporal id <= max(gh, gw) - 1, where 5.x and 4.x agree (§11.4 item 3)."""
    while True:
        g = [int(rng.integers(1, 7)), 2 * int(rng.integers(1, 12)), 2 * int(rng.integers(1, 12))]
        last = int(temporal_ids(g[0], s, preset)[-1])
        if last <= max(g[1], g[2]) // 2 - 1:
            return g


@pytest.mark.parametrize("preset", [QWEN25_VL, QWEN2_VL], ids=lambda p: p.name)
@pytest.mark.parametrize("s", [0.5, 1.0, 1.5640641, 0.1, 2.5])
def test_hf_videos_and_images_mixed(hf_models, preset, s):
    rng = np.random.default_rng(int(s * 1000))
    for _ in range(15):
        items, images, videos, secs = [], [], [], []
        for _ in range(rng.integers(1, 4)):
            if rng.random() < 0.5:
                g = [1, 2 * int(rng.integers(1, 8)), 2 * int(rng.integers(1, 8))]
                items.append(("image", g))
                images.append(g)
            else:
                g = _agreeing_video(rng, preset, s)
                items.append(("video", g))
                videos.append(g)
                secs.append(s)
        ids = build_sequence(rng, items)
        check_against_hf(hf_models, preset, ids, images, videos, secs or None)


def test_hf_fractional_seconds_nontrivial_ids(hf_models):
    """s = 1.5640641 on 4 temporal patches: ids 0, 3, 6, 9 inside a 20-wide grid (agreeing case)."""
    grid = [4, 4, 40]
    ids = PREFIX15 + [VIDEO_PAD_ID] * (4 * 2 * 20) + SUFFIX
    check_against_hf(hf_models, QWEN25_VL, ids, [], [grid], [1.5640641])
    pos, _ = get_rope_index(ids, video_grid_thw=[grid], second_per_grid_ts=[1.5640641])
    assert pos[0, 15:15 + 160:40].tolist() == [15, 18, 21, 24]


@pytest.mark.parametrize(
    "preset, grid, s",
    [(QWEN25_VL, [2, 4, 4], 1.0), (QWEN2_VL, [3, 4, 4], None), (QWEN25_VL, [384, 24, 46], 1.5640641)],
    ids=["T-R2", "qwen2-long", "T-R5"],
)
def test_hf_5x_diverges_after_long_videos(hf_models, preset, grid, s):
    """Why these videos are not compared with 5.x: 5.x advances the cursor by max(gh, gw) after any
    vision block, ignoring the temporal extent (§11.4 item 3), while 4.x / rope2d.py — the reference
    vlprep follows — continues at (max id so far) + 1. The vision block itself still agrees; the text
    after it is shifted by exactly T_last - (max(gh, gw) - 1), the closed form of §11.2."""
    n = grid[0] * grid[1] * grid[2] // 4
    ids = PREFIX15 + [VIDEO_PAD_ID] * n + SUFFIX
    secs = [s] if s is not None else None
    ours, delta = get_rope_index(ids, video_grid_thw=[grid], second_per_grid_ts=secs, preset=preset)
    ref, _ = hf_rope(hf_models[preset.name], ids, [], [grid], secs)
    np.testing.assert_array_equal(ours[:, : 15 + n], ref[:, : 15 + n])
    t_last = int(temporal_ids(grid[0], s, preset)[-1])
    shift = t_last - (max(grid[1], grid[2]) // 2 - 1)
    assert shift > 0
    np.testing.assert_array_equal(ours[:, 15 + n:], ref[:, 15 + n:] + shift)
    assert ours[0, 15 + n] == 15 + t_last + 1
