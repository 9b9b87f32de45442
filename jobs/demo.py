"""`vlprep demo DIR`: write a small self-made demo corpus and a job config for it."""
from __future__ import annotations

from pathlib import Path

from jobs.cli import positive_int

HELP = "generate a small demo corpus (images, clips, four input formats, some bad records) and demo.yaml"
DESCRIPTION = """\
Write a demo corpus that needs nothing from the network or ../shared: drawn scenes with their
true object boxes (as Qwen2-VL grounding text), two short PyAV-encoded clips, conversations in the
LLaMA-Factory, LLaVA and OpenAI content-part formats, and deliberately bad records (broken JSON
line, missing file, path escape, truncated JPEG, non-video file, placeholder mismatch, a duplicate,
a degenerate repetitive answer). Then run:

  vlprep prepare DIR/demo.yaml --out prepared/
"""

DEMO_YAML = """\
# vlprep demo job: every source format the demo corpus carries, Qwen2.5-VL preset.
sources:
  - path: scenes_llamafactory.json
    format: llamafactory
    media_root: media
  - path: scenes_llava.jsonl
    format: llava
    media_root: media
  - path: media_openai.jsonl
    format: openai
    media_root: media
preset: qwen2.5-vl
grounding_format: qwen2-vl   # the demo answers carry Qwen2-VL 0-1000 boxes; re-rendered as absolute JSON
max_length: 8192
video:
  fps: 2.0
dedup:
  exact: true
  phash: true
unit_size: 8
"""


def add_arguments(p) -> None:
    p.add_argument("dir", type=Path, help="folder to write the corpus into (created)")
    p.add_argument("--scenes", type=positive_int, default=12,
                   help="number of drawn scenes (default 12, at least 5: the bad records reuse some)")


def run(args) -> int:
    from pipeline.demo_corpus import build_demo_corpus

    files = build_demo_corpus(args.dir, n_scenes=args.scenes)
    (args.dir / "demo.yaml").write_text(DEMO_YAML)
    for name, path in files.items():
        print(f"wrote {path}  ({name})")
    print(f"wrote {args.dir / 'demo.yaml'}\nnext: vlprep prepare {args.dir / 'demo.yaml'} --out prepared/")
    return 0
