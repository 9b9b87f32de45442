"""`vlprep score --scorers vlm` on a tiny Qwen3-VL checkpoint on disk (issue #13): the scorer loads
`Qwen3VLForConditionalGeneration` and, fed qwen3-vl samples with their shard position ids, gives the
answer log-probability transformers computes one sample at a time (positions from its own
get_rope_index). The checkpoint: the session fixture `tiny_qwen3_vl` (tests/tiny_models.py)."""
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
from tiny_models import load_model  # noqa: E402

CLIP = Path(__file__).parent / "golden" / "qwen3_vl_clip.mp4"


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


@pytest.mark.parametrize("name", ["qwen3-vl", "qwen3-vl-tf5"])
def test_vlm_scorer_on_tiny_qwen3_vl(tiny_qwen3_vl, tmp_path, name):
    preset = get_preset(name)
    samples = _samples(tmp_path, preset)
    model = load_model(tiny_qwen3_vl)
    ref = np.array([reference_mean_logprob(model, s, preset) for s in samples])

    scorer = VLMScorer(str(tiny_qwen3_vl), pack="off")
    scorer.setup(torch.device("cpu"))
    assert type(scorer.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert scorer.check_preset(name) is None and "qwen3-vl" in scorer.check_preset("qwen2.5-vl")
    out = scorer.score(HostBatch(samples, preset))
    np.testing.assert_allclose(out["vlm.mean_logprob"], ref, rtol=0, atol=2e-4)
    gain = out["vlm.visual_gain"]
    assert np.isnan(gain[2]) and np.all(np.abs(np.delete(gain, 2)) > 1e-6)
