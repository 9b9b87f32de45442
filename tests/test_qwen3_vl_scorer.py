"""`vlprep score --scorers vlm` on a tiny Qwen3-VL checkpoint on disk (issue #13): the scorer loads
`Qwen3VLForConditionalGeneration` and, fed qwen3-vl samples with their shard position ids, gives the
answer log-probability transformers computes one sample at a time (positions from its own
get_rope_index)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from filters.reward.batching import HostBatch  # noqa: E402
from filters.reward.vlm_scorer import VLMScorer  # noqa: E402
from media_factory import gradient_rgb  # noqa: E402
from processors.encode import EncodeOptions, encode_sample  # noqa: E402
from processors.presets import get_preset  # noqa: E402
from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart, VideoPart  # noqa: E402
from reference_forward import reference_mean_logprob  # noqa: E402

CLIP = Path(__file__).parent / "golden" / "qwen3_vl_clip.mp4"


@pytest.fixture(scope="module")
def tiny_qwen3_vl(tmp_path_factory) -> Path:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen3VLConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, vocab_size=151680,
                         rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           num_position_embeddings=64, deepstack_visual_indexes=[1]),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
    folder = tmp_path_factory.mktemp("tiny_qwen3_vl")
    Qwen3VLForConditionalGeneration(cfg).eval().save_pretrained(folder)
    return folder


def _samples(tmp_path, preset):
    from PIL import Image

    p = tmp_path / "im.png"
    Image.fromarray(gradient_rgb(120, 90, seed=4)).save(p)
    img, vid = [MediaRef("image", str(p))], [MediaRef("video", str(CLIP))]
    U, A = "user", "assistant"
    raw = [
        Sample("img", [Message(U, [ImagePart(0), TextPart("What is it?")]), Message(A, [TextPart("A gradient.")])],
               images=img),
        Sample("vid", [Message(U, [VideoPart(0), TextPart("Describe.")]), Message(A, [TextPart("A bar moves.")])],
               videos=vid),
        Sample("txt", [Message(U, [TextPart("Hello")]), Message(A, [TextPart("Hi there.")])]),
        Sample("both", [Message(U, [TextPart("See "), ImagePart(0), VideoPart(0)]), Message(A, [TextPart("Both.")])],
               images=img, videos=vid),
    ]
    out = []
    for s in raw:
        enc = encode_sample(s, preset, options=EncodeOptions(fast_videos=True))
        d = dict(enc.arrays())
        d.update(id=enc.id, meta=enc.meta)
        out.append(d)
    return out


def _reference(model, s, preset):
    return reference_mean_logprob(model, s, preset)


@pytest.mark.parametrize("name", ["qwen3-vl", "qwen3-vl-tf5"])
def test_vlm_scorer_on_tiny_qwen3_vl(tiny_qwen3_vl, tmp_path, name):
    import transformers

    preset = get_preset(name)
    samples = _samples(tmp_path, preset)
    model = transformers.Qwen3VLForConditionalGeneration.from_pretrained(
        tiny_qwen3_vl, dtype=torch.float32, attn_implementation="sdpa").eval()
    ref = np.array([_reference(model, s, preset) for s in samples])

    scorer = VLMScorer(str(tiny_qwen3_vl), pack="off")
    scorer.setup(torch.device("cpu"))
    assert type(scorer.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert scorer.check_preset(name) is None and "qwen3-vl" in scorer.check_preset("qwen2.5-vl")
    out = scorer.score(HostBatch(samples, preset))
    np.testing.assert_allclose(out["vlm.mean_logprob"], ref, rtol=0, atol=2e-4)
    gain = out["vlm.visual_gain"]
    assert np.isnan(gain[2]) and np.all(np.abs(np.delete(gain, 2)) > 1e-6)
