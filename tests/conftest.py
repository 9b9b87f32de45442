import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED_CORPUS = Path(os.environ.get("VLPREP_SHARED_CORPUS", ROOT.parent / "shared" / "corpus" / "llamafactory_demo"))


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    """The real LLaMA-Factory demo corpus in ../shared (skips when a fresh clone has no ../shared)."""
    if not (SHARED_CORPUS / "mllm_demo.json").exists():
        pytest.skip(f"shared demo corpus not found at {SHARED_CORPUS}")
    return SHARED_CORPUS
