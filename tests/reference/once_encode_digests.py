"""Digests of `encode_sample` on tests/encode_cases.py for the three pre-Qwen3 presets, written with the
code BEFORE the sample-plan refactor (issue #13), so tests/test_plan_refactor.py proves the refactor
changed no byte. Not a `make reference` generator (those are gen_*.py): it runs once, on old code:

    PYTHONPATH=<old checkout>:tests python tests/reference/once_encode_digests.py

(`processors` is imported from the old checkout; the cases and media come from this tests/ folder.)
Writes tests/golden/encode_digests.json.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parent))

from encode_cases import PRESETS, RECORDS, digest, make_media  # noqa: E402


def main() -> None:
    import processors

    code = Path(processors.__file__).resolve().parent.parent
    rev = subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as d:
        root = make_media(Path(d) / "media")
        out = {p: {name: digest(name, p, root) for name in RECORDS} for p in PRESETS}
    path = HERE.parent / "golden" / "encode_digests.json"
    path.write_text(json.dumps({"code": str(code), "commit": rev, "digests": out}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} from {code} @ {rev}")


if __name__ == "__main__":
    main()
