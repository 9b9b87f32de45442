import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The real LLaMA-Factory demo data lives beside the project (../shared); a checkout elsewhere (a CI
# clone) finds it at the workplace's fixed location, or wherever VLPREP_SHARED_CORPUS points.
_CANDIDATES = [ROOT.parent / "shared" / "corpus" / "llamafactory_demo", Path("/work/shared/corpus/llamafactory_demo")]
SHARED_CORPUS = Path(os.environ["VLPREP_SHARED_CORPUS"]) if os.environ.get("VLPREP_SHARED_CORPUS") else next(
    (c for c in _CANDIDATES if (c / "mllm_demo.json").exists()), _CANDIDATES[0])


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    """The real LLaMA-Factory demo corpus in ../shared (skips when a fresh clone has no ../shared)."""
    if not (SHARED_CORPUS / "mllm_demo.json").exists():
        pytest.skip(f"shared demo corpus not found at {SHARED_CORPUS}")
    return SHARED_CORPUS
from tiny_models import tiny_qwen3_vl, tiny_qwen35, tiny_qwen35_varied  # noqa: E402,F401  (session fixtures for every module)
