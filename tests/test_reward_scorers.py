"""The bundled scorers order constructed cases the way a data curator expects."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from filters.reward.batching import HostBatch
from filters.reward.pixel_scorer import PixelScorer
from filters.reward.text_scorer import TextScorer, conversation_turns, lexical_diversity, qa_pairs
from processors.presets import get_preset
from processors.tokenizer import get_tokenizer
from test_reward_fixtures import encode_frames, photo

CPU = torch.device("cpu")
PRESET = get_preset("qwen2.5-vl")

QA = [
    ("What animal is sleeping on the sofa?", "A grey cat is curled up asleep on the sofa cushion."),
    ("How many cars are parked in front of the building?", "Three cars are parked in front of the red brick building."),
    ("What is the weather like at the beach?", "It is sunny at the beach, with clear blue sky and calm waves."),
    ("What is the chef cooking in the pan?", "The chef is frying vegetables and noodles in a large wok."),
]


@pytest.fixture(scope="module")
def text_scorer():
    s = TextScorer()
    s.setup(CPU)
    return s


def _batch(encoded):
    return HostBatch([{"id": e.id, **e.arrays(), "meta": e.meta} for e in encoded], PRESET)


def test_turns_are_recovered_from_shard_token_ids():
    e = encode_frames("a", QA[0][0], QA[0][1], images=[photo(56, 84)])
    turns = conversation_turns(e.input_ids, get_tokenizer())
    assert turns == [("system", "You are a helpful assistant."), ("user", QA[0][0]), ("assistant", QA[0][1])]
    assert qa_pairs(turns) == [QA[0]]


def test_matching_answers_are_more_relevant_than_shuffled(text_scorer):
    matched = [encode_frames(f"m{i}", q, a) for i, (q, a) in enumerate(QA)]
    shuffled = [encode_frames(f"s{i}", q, QA[(i + 1) % len(QA)][1]) for i, (q, _) in enumerate(QA)]
    out = text_scorer.score(_batch(matched + shuffled))
    rel = out["text.qa_relevance"]
    good, bad = rel[: len(QA)], rel[len(QA):]
    assert np.all(good > bad), (good, bad)  # each question prefers its own answer
    assert good.mean() - bad.mean() > 0.25
    assert np.all((rel > -1) & (rel < 1))


def test_specific_answers_are_more_informative_than_generic_ones(text_scorer):
    out = text_scorer.score_pairs([[QA[0]], [(QA[0][0], "An image.")], [(QA[1][0], "I am not sure about that.")]])
    info = out["text.informativeness"]
    assert info[0] > info[1] + 0.3 and info[0] > info[2] + 0.3
    assert info[1] == pytest.approx(0.0, abs=1e-5)  # verbatim one of the generic replies


def test_lexical_diversity_flags_repetition(text_scorer):
    assert lexical_diversity("the the the the") == 0.25
    assert np.isnan(lexical_diversity("...!"))
    out = text_scorer.score_pairs([[QA[2]], [(QA[2][0], "sunny sunny sunny sunny sunny sunny")], []])
    div = out["text.lexical_diversity"]
    assert div[0] > 0.8 and div[1] == pytest.approx(1 / 6)
    assert np.isnan(out["text.qa_relevance"][2]) and np.isnan(div[2])


def _pixel_scores(*images):
    enc = [encode_frames(f"p{i}", "Describe the image.", "An image.", images=[im]) for i, im in enumerate(images)]
    s = PixelScorer()
    s.setup(CPU)
    return s.score(_batch(enc))


def test_blank_image_is_flagged_and_photo_is_not():
    blank = np.full((112, 140, 3), 128, np.uint8)
    out = _pixel_scores(photo(112, 140), blank)
    assert out["pixels.blank"][1] == 1.0 and out["pixels.blank"][0] < 0.1
    assert out["pixels.luma_std"][1] == 0.0 and out["pixels.luma_std"][0] > 0.05
    assert out["pixels.sharpness"][1] == 0.0 and out["pixels.sharpness"][0] > 50
    assert out["pixels.brightness"][1] == pytest.approx(128 * (0.299 + 0.587 + 0.114) / 255, abs=1e-4)


def test_blur_lowers_sharpness_and_values_match_a_direct_computation():
    from PIL import Image, ImageFilter

    sharp = photo(112, 168, seed=3)
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(2.5)))
    out = _pixel_scores(sharp, blurred)
    assert out["pixels.sharpness"][0] > 3 * out["pixels.sharpness"][1]
    # Direct reference on the image itself: luminance, 4-neighbour Laplacian inside every 14x14 tile.
    y = sharp.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    tiles = y.reshape(8, 14, 12, 14).transpose(0, 2, 1, 3).reshape(-1, 14, 14)
    lap = 4 * tiles[:, 1:-1, 1:-1] - tiles[:, :-2, 1:-1] - tiles[:, 2:, 1:-1] - tiles[:, 1:-1, :-2] - tiles[:, 1:-1, 2:]
    assert out["pixels.sharpness"][0] == pytest.approx(lap.var(), rel=1e-4)
    assert out["pixels.brightness"][0] == pytest.approx(y.mean() / 255, rel=1e-5)
    assert out["pixels.luma_std"][0] == pytest.approx(y.std() / 255, rel=1e-4)


def test_exposure_clipping_and_multi_item_aggregation():
    dark = np.zeros((56, 56, 3), np.uint8)
    dark[:28] = 200  # half black, half grey
    clip = _pixel_scores(dark)["pixels.clipped"][0]
    assert clip == pytest.approx(0.5)
    # one sample holding a photo and a blank image is as blank as its worst image
    e = encode_frames("two", "Compare.", "Different.", images=[photo(56, 56), np.full((56, 84, 3), 255, np.uint8)])
    s = PixelScorer()
    s.setup(CPU)
    text_only = encode_frames("t", "Hi?", "Hello.")
    out = s.score(_batch([e, text_only]))
    assert out["pixels.blank"][0] == 1.0 and out["pixels.clipped"][0] == pytest.approx(6 / 10, abs=0.02)
    assert all(np.isnan(out[c][1]) for c in out)  # no pixels: not applicable


def test_video_rows_are_scored_too():
    frames = np.stack([photo(56, 84, seed=k) for k in range(4)])
    e = encode_frames("v", "What happens?", "Shapes move.", videos=[frames], secs=[1.0])
    s = PixelScorer()
    s.setup(CPU)
    out = s.score(_batch([e]))
    assert out["pixels.blank"][0] < 0.1 and out["pixels.sharpness"][0] > 50
