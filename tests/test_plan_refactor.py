"""The sample-plan refactor (issue #13) changed no byte for the three earlier presets: `encode_sample`
on tests/encode_cases.py (boxes in two formats, per-item bands, a resized_height/width request, a tiny
image, videos with fps / nframes / max_pixels, a frame list, text only) hashes to the digests that
tests/reference/once_encode_digests.py wrote with the code before the refactor (main @ 5bd7df6).
The same comparison on the whole demo corpus through `vlprep prepare` (shards, manifest, ledger byte
for byte; docs/qwen3_vl.md "The plan refactor") was made once; this is its small, repeatable form."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from encode_cases import PRESETS, RECORDS, digest, make_media

GOLDEN = json.loads((Path(__file__).parent / "golden" / "encode_digests.json").read_text())["digests"]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return make_media(tmp_path_factory.mktemp("cases"))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", sorted(RECORDS))
def test_encoded_bytes_unchanged(media, preset, name):
    assert digest(name, preset, media) == GOLDEN[preset][name]


def test_every_case_is_covered():
    assert {p: sorted(GOLDEN[p]) for p in PRESETS} == {p: sorted(RECORDS) for p in PRESETS}
    # the cases do reach the code paths they are for (not all refused)
    assert sum(not v.startswith("error:") for v in GOLDEN["qwen2.5-vl"].values()) == len(RECORDS)
