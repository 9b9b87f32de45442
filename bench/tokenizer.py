"""Text-side throughput: vlprep's ChatML build vs the transformers path, measured in the same run.

  python bench/tokenizer.py [--repeat 200] [--corpus ../shared/corpus/llamafactory_demo]

Rows:
* chatml, demo corpus — vlprep: parse_record + build_chatml (pads emitted as ids) vs transformers:
  apply_chat_template(tokenize=False) + the processor's pad expansion (spec §8) + tokenizer(text).
  Image token counts come from smart_resize on the real demo images (Hub band); videos use a fixed
  1440 pads (decode is not part of this benchmark). Both sides are checked to give identical ids.
* plain encode, multilingual text — QwenTokenizer.encode (tiktoken) vs the HF fast tokenizer.

The HF reference tokenizer is built from the same ranks as in tests/test_tokenizer.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from PIL import Image  # noqa: E402

from processors.chatml import build_chatml  # noqa: E402
from processors.formats import parse_record  # noqa: E402
from processors.sample import TextPart  # noqa: E402
from processors.sizing import smart_resize  # noqa: E402
from processors.tokenizer import get_tokenizer  # noqa: E402


def timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus" / "llamafactory_demo"))
    args = ap.parse_args()

    from test_chatml import expand_pads, hf_tokenizer  # the reference, as the tests build it

    corpus = Path(args.corpus)
    jobs = []
    for name in ("mllm_demo.json", "mllm_video_demo.json"):
        for k, rec in enumerate(json.loads((corpus / name).read_text())):
            img = []
            for p in rec.get("images", []):
                w, h = Image.open(corpus / p).size
                H, W = smart_resize(h, w)
                img.append(H * W // 784)
            vid = [1440] * len(rec.get("videos", []))
            jobs.append((name, k, rec, img, vid))

    tok = get_tokenizer()
    hf = hf_tokenizer()

    def hf_messages(s):
        return [{"role": m.role, "content": [
            {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": p.type} for p in m.parts
        ]} for m in s.messages]

    def vlprep_all():
        out = []
        for name, k, rec, img, vid in jobs:
            s = parse_record(rec, source=name, index=k)
            out.append(build_chatml(s, None, tok, image_tokens=img, video_tokens=vid).input_ids)
        return out

    def hf_all():
        out = []
        for name, k, rec, img, vid in jobs:
            s = parse_record(rec, source=name, index=k)
            text = hf.apply_chat_template(hf_messages(s), tokenize=False)
            out.append(hf(expand_pads(text, img, vid), add_special_tokens=False)["input_ids"])
        return out

    ours, ref = vlprep_all(), hf_all()
    assert [a.tolist() for a in ours] == ref, "vlprep and transformers ids differ"
    n_tok = sum(len(a) for a in ours)
    t_ours, t_hf = timeit(vlprep_all, args.repeat), timeit(hf_all, args.repeat)

    text = (
        "这是一只猫，坐在红色的沙发上。The quick brown fox jumps over 12 lazy dogs at (123,456). "
        "Кошка сидит на диване. القطة تجلس. 東京タワー 😀\n\n"
    ) * 200
    n_plain = len(tok.encode(text))
    assert tok.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
    reps = max(1, args.repeat // 10)
    t_enc = timeit(lambda: tok.encode(text), reps)
    t_hf_enc = timeit(lambda: hf(text, add_special_tokens=False)["input_ids"], reps)

    print(f"{'case':38} {'vlprep':>14} {'transformers':>14} {'speed-up':>9}")
    print(f"{f'chatml, demo corpus ({len(jobs)} conv, {n_tok} tok)':38} "
          f"{len(jobs) / t_ours:>10.0f} c/s {len(jobs) / t_hf:>10.0f} c/s {t_hf / t_ours:>8.1f}x")
    print(f"{'  per conversation':38} {t_ours / len(jobs) * 1e6:>11.0f} us {t_hf / len(jobs) * 1e6:>11.0f} us")
    print(f"{f'plain encode ({n_plain} tok)':38} {n_plain / t_enc / 1e6:>9.2f} Mt/s "
          f"{n_plain / t_hf_enc / 1e6:>9.2f} Mt/s {t_hf_enc / t_enc:>8.1f}x")


if __name__ == "__main__":
    main()
