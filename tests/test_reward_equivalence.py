"""Equivalence: the vlm scorer fed vlprep's encoded tensors (batched, shard positions, on-device
normalisation) gives the log-probabilities a tiny Qwen2-VL / Qwen2.5-VL gives when fed the
`transformers` processor's output for the same raw samples, one at a time.

The reference processor is built offline: `Qwen2VLImageProcessorPil` (the released band) and a
fast tokenizer wrapping the independent Hugging Face BPE that tests/test_tokenizer.py builds from
the Qwen ranks. For the video, `Qwen2VLVideoProcessor` is used when torchvision is installed (it
imports it); otherwise the reference video tensors are assembled from transformers pieces: each
frame normalised and patchified by the same PIL image processor, frames paired into temporal
patches (column = c*tp*p*p + t*p*p + y*p + x, spec §4/§7), pads expanded per spec §8 and
tokenized by the reference tokenizer; the model computes its own positions from
`second_per_grid_ts` either way. Frame sizes are multiples of 28 inside the video band, so neither side resizes video
frames (their bicubic kernels differ by design, DECISIONS.md), and the video's temporal extent stays
inside its spatial one, where transformers 5.x positions agree with 4.x (spec §11.4).
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from filters.reward.batching import HostBatch
from filters.reward.vlm_scorer import VLMScorer
from processors.encode import encode_sample
from processors.presets import get_preset
from processors.sample import ImagePart, MediaRef, Message, Sample, TextPart, VideoPart
from test_reward_fixtures import photo, tiny_qwen2_vl, tiny_qwen25_vl  # noqa: F401

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
Q_IMG, A_IMG = "What shapes are in the picture?", "There are several coloured circles on a striped background."
Q_VID, A_VID = "What happens in the clip?", "Coloured discs appear and move between frames."
FPS = 1.0  # sampled fps of the frame-list video -> second_per_grid_t = 2 / 1.0 = 2.0


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


IMAGE = photo(112, 140, seed=5)
FRAMES = [photo(308, 336, seed=k) for k in range(4)]


def _raw_samples(with_video: bool):
    img = Sample("img", [Message("user", [ImagePart(0), TextPart(Q_IMG)]), Message("assistant", [TextPart(A_IMG)])],
                 images=[MediaRef("image", data=_png(IMAGE))])
    out = [img]
    if with_video:
        out.append(Sample("vid", [Message("user", [VideoPart(0), TextPart(Q_VID)]),
                                  Message("assistant", [TextPart(A_VID)])],
                          videos=[MediaRef("video", frames=[_png(f) for f in FRAMES], options={"sample_fps": FPS})]))
    return out


def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


class Reference:
    """The transformers side: the real processor when it can be built (it needs torchvision in
    transformers 5.23 even for images: its class check imports the video-processor mapping), else
    its steps from transformers parts: Qwen2VLImageProcessorPil for pixels and grids, §8 pad
    expansion, the independent reference tokenizer, mm_token_type_ids 1/2 on image/video pads."""

    def __init__(self, family: str):
        from transformers import PreTrainedTokenizerFast
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from test_tokenizer import hf_reference

        self.family = family
        self.tok = PreTrainedTokenizerFast(tokenizer_object=hf_reference(), eos_token="<|im_end|>",
                                           pad_token="<|endoftext|>")
        self.ip = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)
        self.proc = None
        if _has_torchvision():
            from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
            from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

            cls = Qwen2VLProcessor if family == "qwen2-vl" else Qwen2_5_VLProcessor
            self.proc = cls(image_processor=self.ip, tokenizer=self.tok,
                            video_processor=Qwen2VLVideoProcessor(do_sample_frames=False))

    def _ids(self, text: str) -> dict:
        ids = self.tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        tt = torch.zeros_like(ids)
        tt[ids == self.tok.convert_tokens_to_ids("<|image_pad|>")] = 1
        tt[ids == self.tok.convert_tokens_to_ids("<|video_pad|>")] = 2
        return {"input_ids": ids, "mm_token_type_ids": tt}

    def image_inputs(self, text: str, image: np.ndarray) -> dict:
        if self.proc is not None:
            return dict(self.proc(text=[text], images=[Image.fromarray(image)], return_tensors="pt"))
        px = self.ip(images=[Image.fromarray(image)], return_tensors="pt")
        n_pad = int(px["image_grid_thw"][0].prod()) // 4
        return {**self._ids(text.replace("<|image_pad|>", "<|image_pad|>" * n_pad)),
                "pixel_values": px["pixel_values"], "image_grid_thw": px["image_grid_thw"]}

    def video_inputs(self, text: str, frames: list[np.ndarray], fps: float) -> dict:
        if self.proc is not None:
            from transformers.video_utils import VideoMetadata

            h, w = frames[0].shape[:2]
            meta = VideoMetadata(total_num_frames=len(frames), fps=fps, frames_indices=list(range(len(frames))),
                                 width=w, height=h)
            return dict(self.proc(text=[text], videos=[np.stack(frames)], video_metadata=[meta], return_tensors="pt"))
        per_frame = [self.ip(images=[Image.fromarray(f)], return_tensors="pt") for f in frames]
        gh, gw = (int(v) for v in per_frame[0]["image_grid_thw"][0, 1:])
        # a still image is patchified as 2 identical temporal slices; keep slice 0 of each frame and
        # pair consecutive frames into one temporal patch
        slices = [pf["pixel_values"].view(gh * gw, 3, 2, 14, 14)[:, :, 0] for pf in per_frame]
        groups = [torch.stack([slices[k], slices[k + 1]], dim=2).reshape(gh * gw, -1)
                  for k in range(0, len(frames), 2)]
        grid = torch.tensor([[len(groups), gh, gw]])
        n_pad = len(groups) * gh * gw // 4
        out = {**self._ids(text.replace("<|video_pad|>", "<|video_pad|>" * n_pad)),
               "pixel_values_videos": torch.cat(groups), "video_grid_thw": grid}
        if self.family == "qwen2.5-vl":
            out["second_per_grid_ts"] = torch.tensor([2 / fps])  # temporal_patch_size / sampled fps
        return out

    def mean_logprob(self, model, text: str, inputs: dict) -> float:
        ids = inputs["input_ids"]
        with torch.no_grad():
            logits = model(**inputs).logits[0].float()
        # supervised span (the Qwen finetune convention): the assistant's content, <|im_end|> and "\n"
        start = text.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
        n_sup = len(self.tok(text[start:], add_special_tokens=False)["input_ids"])
        lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[0, 1:, None])[:, 0]
        return float(lp[-n_sup:].mean())


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_vlprep_tensors_give_the_reference_logprobs(family, tiny_qwen2_vl, tiny_qwen25_vl):
    import transformers

    path = str(tiny_qwen2_vl if family == "qwen2-vl" else tiny_qwen25_vl)
    preset = get_preset(family)
    cls = (transformers.Qwen2VLForConditionalGeneration if family == "qwen2-vl"
           else transformers.Qwen2_5_VLForConditionalGeneration)
    model = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    ref = Reference(family)

    encoded = [encode_sample(s, preset) for s in _raw_samples(with_video=True)]
    img_text = (f"{SYSTEM}<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{Q_IMG}<|im_end|>\n"
                f"<|im_start|>assistant\n{A_IMG}<|im_end|>\n")
    vid_text = (f"{SYSTEM}<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>{Q_VID}<|im_end|>\n"
                f"<|im_start|>assistant\n{A_VID}<|im_end|>\n")
    in_img = ref.image_inputs(img_text, IMAGE)
    in_vid = ref.video_inputs(vid_text, FRAMES, FPS)
    ref_img, ref_vid = ref.mean_logprob(model, img_text, in_img), ref.mean_logprob(model, vid_text, in_vid)

    # the tensors themselves agree before any model runs
    e_img, e_vid = encoded
    assert e_img.input_ids.tolist() == in_img["input_ids"][0].tolist()
    assert e_vid.input_ids.tolist() == in_vid["input_ids"][0].tolist()
    np.testing.assert_array_equal(e_img.image_grid_thw, in_img["image_grid_thw"].numpy())
    np.testing.assert_array_equal(e_vid.video_grid_thw, in_vid["video_grid_thw"].numpy())
    if family == "qwen2.5-vl":
        assert e_vid.second_per_grid_ts.tolist() == [2.0]
        assert torch.as_tensor(in_vid["second_per_grid_ts"]).tolist() == [2.0]

    scorer = VLMScorer(path, pack="off")
    scorer.setup(torch.device("cpu"))
    batch = HostBatch([{"id": e.id, **e.arrays(), "meta": e.meta} for e in encoded], preset)
    img_pv, vid_pv = batch.normalized_patches()
    np.testing.assert_allclose(img_pv.numpy(), in_img["pixel_values"].numpy(), atol=1e-5)
    np.testing.assert_allclose(vid_pv.numpy(), in_vid["pixel_values_videos"].numpy(), atol=1e-5)

    got = scorer.score(batch)["vlm.mean_logprob"]
    np.testing.assert_allclose(got, [ref_img, ref_vid], rtol=0, atol=1e-4)
