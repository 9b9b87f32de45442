"""Issue #10: vlprep installs next to a training environment's own torch.

Two real pip runs into throw-away venvs (the registry and pip's cache are reachable):
- only the core (`pip install .`, no extras): `import processors`, `pipeline.loader` and
  `vlprep encode` of an image record work, and neither torch nor ray got installed;
- `pip install -e ".[all]"` without constraints, in a venv that already has another torch: pip's
  resolution (`--dry-run --report`) keeps that torch (it would list a torch to install if any
  requirement pinned or needed another version).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent



def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin"


def _pip_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_CONSTRAINT")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def test_pyproject_core_has_no_torch_ray_or_plots_and_torch_is_never_pinned():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(meta["dependencies"]).lower()
    for heavy in ("torch", "ray", "matplotlib", "decord", "sentence", "transformers"):
        assert heavy not in core, f"{heavy} is a core dependency"
    for extra, reqs in meta["optional-dependencies"].items():
        for r in reqs:
            if r.lower().startswith("torch"):
                assert "==" not in r and "<" not in r, f"extra {extra} pins torch: {r}"
    assert "torch==" in (ROOT / "constraints.txt").read_text()
    assert '-c constraints.txt -e ".[all,test]"' in (ROOT / "Makefile").read_text()


@pytest.mark.slow
def test_core_install_imports_processors_and_loader_and_encodes_without_torch(tmp_path):
    bin_ = _venv(tmp_path / "core")
    src = tmp_path / "src"   # a copy: a non-editable build leaves build/ in the tree it builds
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "processors", "filters", "pipeline", "jobs"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    subprocess.run([str(bin_ / "pip"), "install", "-q", str(src)], check=True, env=_pip_env(),
                   cwd=tmp_path, timeout=600)
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "r1", "images": ["red.png"], "messages": [
        {"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "Red."}]}) + "\n")
    script = """
import importlib.util, sys
assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("ray") is None, "heavy deps installed"
import processors, pipeline.loader
from pipeline.loader import ShardLoader, collate
from processors import encode_sample, get_preset, parse_record
import json
rec = json.loads(open("d.jsonl").read())
enc = encode_sample(parse_record(rec, source="d.jsonl", index=0), get_preset("qwen2.5-vl"), media_root=".")
print("grid", enc.image_grid_thw.tolist())
"""
    r = subprocess.run([str(bin_ / "python"), "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       env=_pip_env())
    assert r.returncode == 0, r.stderr
    assert "grid [[1, 4, 4]]" in r.stdout or "grid [[1, " in r.stdout, r.stdout
    r = subprocess.run([str(bin_ / "vlprep"), "encode", "d.jsonl"], cwd=tmp_path, capture_output=True,
                       text=True, env=_pip_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "r1" in r.stdout and "ok" in r.stdout


@pytest.mark.slow
def test_all_extras_without_constraints_keep_the_installed_torch(tmp_path):
    bin_ = _venv(tmp_path / "gpu")
    # the training environment's torch: another version than this repo's constraints.txt pin
    site = next((tmp_path / "gpu" / "lib").glob("python*/site-packages"))
    dist = site / "torch-2.6.0+cu124.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.6.0+cu124\n")
    (dist / "INSTALLER").write_text("pip\n")
    (dist / "RECORD").write_text("")
    report = tmp_path / "report.json"
    r = subprocess.run([str(bin_ / "pip"), "install", "-q", "--dry-run", "--report", str(report), "-e",
                        f"{ROOT}[all]"], env={**_pip_env(), "PIP_CONSTRAINT": ""}, cwd=tmp_path,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    install = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert "ray" in install and "matplotlib" in install and "transformers" in install   # the extras resolved
    assert "torch" not in install, f"pip would replace the installed torch 2.6.0+cu124 by {install.get('torch')}"


def test_processors_and_the_loader_import_with_torch_ray_and_plots_blocked():
    """The same as the core venv, in-process and fast: the heavy packages cannot be imported."""
    script = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "ray", "matplotlib", "decord", "sentence_transformers", "transformers",
                                  "tqdm", "webdataset"):
            raise ModuleNotFoundError("blocked " + name, name=name)  # as a package not installed
sys.meta_path.insert(0, Block())
import processors, pipeline.loader
from pipeline.loader import ShardLoader, collate
from processors import encode_sample, get_preset, get_tokenizer, parse_record
rec = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
enc = encode_sample(parse_record(rec, source="x", index=0), get_preset("qwen2.5-vl"), media_root=".")
print(len(enc.input_ids))
import numpy as np
from processors.video_resize import resize_frames
try:
    resize_frames(np.zeros((2, 56, 56, 3), np.uint8), 28, 28)
except ModuleNotFoundError as exc:
    print("VIDEO:", exc)
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert "VIDEO: resizing video frames needs torch" in r.stdout and "vlprep[torch]" in r.stdout, r.stdout


def test_the_licence_is_an_spdx_string_so_setuptools_does_not_warn():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    assert any(r.startswith("setuptools>=77") for r in meta["build-system"]["requires"])
