"""#15: the taxonomy file and the zero-shot `category` scorer on hand-written, clearly different samples."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from filters.reward.batching import HostBatch
from filters.reward.category_scorer import CategoryScorer, non_latin_share, sample_features
from filters.reward.taxonomy import DEFAULT_PATH, TaxonomyError, load_taxonomy, parse_taxonomy
from processors.presets import get_preset
from test_reward_fixtures import encode_frames, photo

CPU = torch.device("cpu")

# (question, answer, media, expected coarse, expected fine) -- media: "image" | "video" | "text"
CASES = [
    ("What is the total amount due on this receipt?", "The total is $23.45 including tax.", "image",
     "ocr_document", "receipt_form"),
    ("What is the invoice number printed at the top?", "INV-20931", "image", "ocr_document", "receipt_form"),
    ("What does the red sign above the shop entrance say?", "It says 'Open 24 hours'.", "image",
     "ocr_document", "scene_text"),
    ("Please transcribe all the handwritten text in this note.", "Buy milk, call mum, pay rent.", "image",
     "ocr_document", "transcription"),
    ("In the bar chart, which month has the highest sales?", "March has the highest sales, about 120 units.",
     "image", "chart_table", "chart_qa"),
    ("According to the table, what was the GDP of Japan in 2010?", "5.7 trillion US dollars.", "image",
     "chart_table", "table_qa"),
    ("Locate the woman in the yellow raincoat and output her bounding box in JSON.",
     '```json\n[{"bbox_2d": [120, 44, 310, 498], "label": "woman in yellow raincoat"}]\n```', "image",
     "grounding_counting", "referring_grounding"),
    ("How many sheep are there in the field?", "There are seven sheep.", "image", "grounding_counting", "counting"),
    ("Describe what happens in this video.", "A man walks his dog along the beach and throws a ball into the sea.",
     "video", "video", "video_description"),
    ("What does the woman do after she puts the kettle on?", "She takes two cups out of the cupboard.", "video",
     "video", "video_temporal"),
    ("Sarah buys 3 notebooks at $4 each and a pen for $2. How much does she spend in total?",
     "3 x 4 = 12, plus 2 is 14. She spends $14.", "text", "math_stem", "math_word_problem"),
    ("In triangle ABC shown in the figure, angle A is 50 degrees and angle B is 60 degrees. Find angle C.",
     "Angle C = 180 - 50 - 60 = 70 degrees.", "image", "math_stem", "geometry"),
    ("Write a short caption for this image.", "A red bicycle leaning against a brick wall.", "image",
     "captioning", "short_caption"),
    ("Describe this image in as much detail as possible.",
     "The image shows a busy market street at dusk. On the left, stalls sell fruit ...", "image",
     "captioning", "detailed_description"),
    ("What colour is the umbrella the girl is holding?", "It is blue.", "image", "general_vqa", "attribute"),
    ("Where is the search button on this web page screenshot? Give its coordinates.", "(845, 62)", "image",
     "gui_agent", "gui_grounding"),
    ("Write the HTML code that reproduces this web page layout.", "<html><body><div class='nav'>...", "image",
     "code", "image_to_code"),
    ("图片中的猫是什么颜色的？", "这只猫是橘色的。", "image", "multilingual", "non_english_qa"),
    ("Write a Python function that returns the n-th Fibonacci number.", "def fib(n):\n    a, b = 0, 1 ...",
     "text", "code", "code_qa"),
    ("Can you suggest a good recipe for a quick weeknight dinner?", "Try a vegetable stir-fry with rice.", "text",
     "text_dialogue", "chat"),
]


@pytest.fixture(scope="module")
def scorer():
    s = CategoryScorer()
    s.setup(CPU)
    return s


def _encoded(i, q, a, media):
    if media == "image":
        return encode_frames(f"c{i}", q, a, images=[photo(56, 84, i)])
    if media == "video":
        return encode_frames(f"c{i}", q, a, videos=[np.stack([photo(56, 56, k) for k in range(4)])], secs=[1.0])
    return encode_frames(f"c{i}", q, a)


def test_default_taxonomy_shape():
    tax = load_taxonomy()
    assert tax.source == str(DEFAULT_PATH)
    assert len(tax.coarse) == 11 and len(tax.fine) == 33
    names = [f.name for f in tax.fine] + tax.coarse_names
    assert len(names) == len(set(names))
    assert tax.parent("receipt_form") == "ocr_document"


def test_zero_shot_tagger_on_clearly_different_samples(scorer):
    batch = HostBatch([{"id": e.id, **e.arrays(), "meta": e.meta}
                       for e in (_encoded(i, *c[:3]) for i, c in enumerate(CASES))], get_preset("qwen2.5-vl"))
    out = scorer.score(batch)
    assert set(out) == set(scorer.columns())
    coarse_ok = out["category.coarse"] == np.array([c[3] for c in CASES], dtype=object)
    fine_ok = out["category.fine"] == np.array([c[4] for c in CASES], dtype=object)
    wrong = [(CASES[i][0][:40], out["category.coarse"][i], out["category.fine"][i])
             for i in np.flatnonzero(~fine_ok)]
    assert coarse_ok.mean() >= 0.9, wrong
    assert fine_ok.mean() >= 0.9, wrong
    conf, cconf = out["category.confidence"], out["category.coarse_confidence"]
    assert conf.dtype == np.float64 and np.all((conf > 0) & (conf <= cconf + 1e-12) & (cconf <= 1 + 1e-12))


def test_video_categories_need_a_video(scorer):
    q = "Describe what happens in this video."
    with_video = scorer.tag_texts([q], [sample_features(False, True, q)])
    without = scorer.tag_texts([q], [sample_features(True, False, q)])
    assert with_video["category.coarse"][0] == "video"
    assert without["category.coarse"][0] != "video"


def test_non_latin_share():
    assert non_latin_share("图片中的猫") == 1.0
    assert non_latin_share("What colour is it? 123") == 0.0
    assert non_latin_share("Café crème") == 0.0
    assert 0.4 < non_latin_share("abc где") < 0.6


def test_user_taxonomy_file(tmp_path, scorer):
    p = tmp_path / "tax.yaml"
    p.write_text("categories:\n"
                 "  - name: animals\n    description: Animals.\n    fine:\n"
                 "      - name: pets\n        description: Questions about cats and dogs kept at home.\n"
                 "  - name: vehicles\n    description: Vehicles.\n    fine:\n"
                 "      - name: cars\n        description: Questions about cars, trucks and traffic.\n")
    s = CategoryScorer(str(p))
    s.setup(CPU)
    out = s.tag_texts(["Is the dog asleep on the rug?", "How many trucks are stuck in traffic?"],
                      [{"image"}, {"image"}])
    assert out["category.coarse"].tolist() == ["animals", "vehicles"]
    assert out["category.fine"].tolist() == ["pets", "cars"]


@pytest.mark.parametrize("text, msg", [
    ("categories: []", "non-empty `categories:`"),
    ("categories:\n  - name: Bad Name\n    description: x\n    fine: [{name: a, description: b}]", "lower-case"),
    ("categories:\n  - name: a\n    description: x\n    fine: []", "non-empty `fine:`"),
    ("categories:\n  - name: a\n    description: x\n    fine: [{name: a, description: b, requires: [gpu]}]",
     "unknown requires"),
    ("categories:\n  - name: a\n    description: x\n    fine: [{name: b}]", "description"),
    ("categories:\n  - name: a\n    description: x\n    fine: [{name: b, description: y}]\n"
     "  - name: c\n    description: x\n    fine: [{name: b, description: y}]", "used twice"),
])
def test_bad_taxonomy_is_a_specific_error(tmp_path, text, msg):
    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(TaxonomyError, match=msg):
        load_taxonomy(p)


def test_missing_taxonomy_file_says_what_to_pass(tmp_path):
    with pytest.raises(TaxonomyError, match="--taxonomy PATH"):
        load_taxonomy(tmp_path / "nope.yaml")
    with pytest.raises(TaxonomyError, match="not valid YAML"):
        (tmp_path / "x.yaml").write_text("categories: [\n")
        load_taxonomy(tmp_path / "x.yaml")
    assert parse_taxonomy({"categories": [{"name": "a", "description": "d", "fine": [
        {"name": "b", "description": "e"}]}]}).fine[0].coarse == "a"
