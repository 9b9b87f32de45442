"""encode_sample glue: the pieces agree with each other and with the processors called directly."""
import json

import numpy as np
import pytest

from media_factory import make_image
from processors import EncodeOptions, encode_sample, get_tokenizer, parse_record, process_image
from processors.errors import MediaError, PathEscapeError, PlaceholderMismatchError
from processors.presets import IGNORE_INDEX, IMAGE_PAD_ID, QWEN2_VL, QWEN25_VL, QWEN_VL
from processors.rope import get_rope_index


def _record(images, answer="A gradient.", question="<image>What is this?"):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "images": images}


@pytest.fixture()
def media(tmp_path):
    make_image(tmp_path / "a.jpg", 640, 480, seed=1)
    make_image(tmp_path / "b.png", 300, 1000, seed=2)
    return tmp_path


def test_image_sample_matches_processors_called_directly(media):
    sample = parse_record(_record(["a.jpg", "b.png"], question="<image><image>Compare."), source="t", index=0)
    enc = encode_sample(sample, QWEN25_VL, media_root=media)
    a = process_image(media / "a.jpg", QWEN25_VL)
    b = process_image(media / "b.png", QWEN25_VL)
    assert enc.image_grid_thw.tolist() == [list(a.grid_thw), list(b.grid_thw)]
    np.testing.assert_array_equal(enc.pixel_values, np.concatenate([a.patches, b.patches]))
    n_tokens = sum(int(np.prod(g)) // 4 for g in enc.image_grid_thw)
    assert int((enc.input_ids == IMAGE_PAD_ID).sum()) == n_tokens == enc.meta["n_image_tokens"]
    pos, delta = get_rope_index(enc.input_ids, enc.image_grid_thw, None, None, QWEN25_VL)
    np.testing.assert_array_equal(enc.position_ids, pos)
    assert enc.rope_delta == delta
    assert enc.input_ids.dtype == np.int32 and enc.labels.dtype == np.int32 and enc.position_ids.dtype == np.int32
    assert enc.pixel_values.dtype == np.uint8 and enc.pixel_values.shape[1] == 1176
    supervised = get_tokenizer().decode(enc.input_ids[enc.labels != IGNORE_INDEX].tolist())
    assert supervised == "A gradient.<|im_end|>\n"
    assert enc.meta["images"][0]["original_size"] == [480, 640]
    assert enc.meta["images"][0]["resized_size"] == [476, 644]
    json.dumps(enc.meta)  # must be serialisable for meta.json


def test_per_item_pixel_band_overrides_job_band(media):
    rec = {"messages": [{"role": "user", "content": [{"type": "image", "image": "a.jpg", "max_pixels": 28 * 28 * 16},
                                                     {"type": "text", "text": "Hi"}]},
                        {"role": "assistant", "content": "Hello."}]}
    enc = encode_sample(parse_record(rec), QWEN25_VL, media_root=media, options=EncodeOptions(max_pixels=28 * 28 * 100))
    assert int(np.prod(enc.image_grid_thw[0])) // 4 <= 16


def test_grounding_is_rerendered_for_the_preset_with_report(media):
    answer = "<|object_ref_start|>the box<|object_ref_end|><|box_start|>(100,200),(500,900)<|box_end|>"
    sample = parse_record(_record(["a.jpg"], answer=answer))
    enc = encode_sample(sample, QWEN25_VL, media_root=media, options=EncodeOptions(grounding_format="qwen2-vl"))
    text = get_tokenizer().decode(enc.input_ids.tolist())
    # 640x480 -> 644x476: x = round(100/1000*640 * 644/640) ... computed through original pixels
    assert '{"bbox_2d": [' in text and "<|box_start|>" not in text
    assert enc.meta["n_boxes"] == 1 and enc.meta["box_problems"] == 0
    obj = enc.meta["boxes"][0]["objects"][0]
    assert obj["before"] == [100, 200, 500, 900]
    expected = [round(64 * 644 / 640), round(96 * 476 / 480), round(320 * 644 / 640), round(432 * 476 / 480)]
    assert obj["after"] == expected
    assert f'"bbox_2d": [{expected[0]}, {expected[1]}, {expected[2]}, {expected[3]}]' in text
    # the same text under Qwen2-VL stays in its own 0-1000 form
    enc2 = encode_sample(sample, QWEN2_VL, media_root=media, options=EncodeOptions(grounding_format="qwen2-vl"))
    assert "<|box_start|>(100,200),(500,900)<|box_end|>" in get_tokenizer().decode(enc2.input_ids.tolist())


def test_qwen_vl_v1_fixed_size_and_plain_positions(media):
    enc = encode_sample(parse_record(_record(["b.png"])), QWEN_VL, media_root=media)
    assert enc.pixel_values.shape == (1, 448, 448, 3)
    assert enc.position_ids.shape == (1, enc.input_ids.size)
    np.testing.assert_array_equal(enc.position_ids[0], np.arange(enc.input_ids.size))
    tok = get_tokenizer(preset=QWEN_VL)
    assert int((enc.input_ids == tok.token_to_id("<imgpad>")).sum()) == 256


def test_errors_name_the_media_and_never_guess(media):
    with pytest.raises(PathEscapeError, match="outside the media root"):
        encode_sample(parse_record(_record(["../x.jpg"])), QWEN25_VL, media_root=media)
    with pytest.raises(MediaError, match="missing.jpg"):
        encode_sample(parse_record(_record(["missing.jpg"])), QWEN25_VL, media_root=media)
    with pytest.raises(PlaceholderMismatchError):
        encode_sample(parse_record(_record(["a.jpg"], question="<image><image>x")), QWEN25_VL, media_root=media)


def test_unknown_encode_option_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown encode option"):
        EncodeOptions.from_dict({"max_pixel": 5})


def test_resized_height_width_set_the_size_and_override_the_items_band(media):
    # qwen-vl-utils: an explicit 280x420 (both multiples of 28, inside the default band) is the size;
    # the item's own max_pixels (16 tokens) does not apply to it.
    rec = {"messages": [{"role": "user", "content": [{"type": "image", "image": "a.jpg", "resized_height": 280,
                                                      "resized_width": 420, "max_pixels": 28 * 28 * 16},
                                                     {"type": "text", "text": "Hi"}]},
                        {"role": "assistant", "content": "Hello."}]}
    enc = encode_sample(parse_record(rec), QWEN25_VL, media_root=media)
    assert enc.image_grid_thw.tolist() == [[1, 20, 30]]
    assert enc.meta["images"][0]["resized_size"] == [280, 420] and enc.meta["images"][0]["original_size"] == [480, 640]
    assert int((enc.input_ids == IMAGE_PAD_ID).sum()) == 20 * 30 // 4 == enc.meta["n_image_tokens"]
    np.testing.assert_array_equal(enc.pixel_values, process_image(media / "a.jpg", resized_height=280,
                                                                  resized_width=420).patches)


def test_only_one_of_resized_height_width_is_a_format_error(media):
    from processors.errors import FormatError

    rec = {"messages": [{"role": "user", "content": [{"type": "image", "image": "a.jpg", "resized_height": 280},
                                                     {"type": "text", "text": "Hi"}]},
                        {"role": "assistant", "content": "Hello."}]}
    with pytest.raises(FormatError, match=r"image 0 \(a.jpg\): resized_height=280 is given without resized_width"):
        encode_sample(parse_record(rec), QWEN25_VL, media_root=media)


