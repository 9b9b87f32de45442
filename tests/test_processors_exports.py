"""Issue #13 scope 3: every public name of `processors` imports as itself, in one statement, and none
is shadowed by a submodule of the same name (importing `processors.x` binds `x` on the package)."""
from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import processors


def test_every_public_name_in_one_import_statement():
    # A fresh interpreter, so no earlier test has already resolved (or shadowed) a name.
    stmt = f"from processors import {', '.join(processors.__all__)}"
    code = (
        f"{stmt}\n"
        "import types, processors\n"
        "bad = [n for n in processors.__all__ if isinstance(getattr(processors, n), types.ModuleType)]\n"
        "assert not bad, bad\n"
        "from processors import process_image, smart_resize\n"
        "assert callable(smart_resize) and smart_resize(100, 100, 28, 56 * 56, 28 * 28 * 16384) == (112, 112)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_no_public_name_is_a_submodule_name():
    modules = {m.name for m in pkgutil.iter_modules(processors.__path__)}
    assert not modules & set(processors.__all__), sorted(modules & set(processors.__all__))


def test_names_resolve_after_their_module_was_imported():
    for mod in {processors._NAME_TO_MODULE[n] for n in processors.__all__}:
        importlib.import_module(f"processors.{mod}")
    for name in processors.__all__:
        value = getattr(processors, name)
        assert not (type(value).__name__ == "module"), name
