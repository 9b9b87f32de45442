"""Import the real torchvision into the reference venv (`make reference`), never into the test venv.

The registry's torchvision 0.28 wheel is built against CUDA torch: on the CPU torch 2.13 this project
pins, loading its C ops fails inside `torchvision._meta_registrations` (it registers meta kernels for
ops that the CPU build of `torchvision._C` does not have). Its Python transforms — `resize` in the v1
and v2 APIs, which only call `torch.nn.functional.interpolate` — do not need those ops. So an empty
module is put in that slot before `import torchvision`; everything the generators call is the
unmodified torchvision Python code on the unmodified torch kernels.

    from _torchvision import torchvision, F_v1, F_v2, BICUBIC, versions
"""
from __future__ import annotations

import sys
import types

_META = "torchvision._meta_registrations"
if "torchvision" not in sys.modules:
    sys.modules.setdefault(_META, types.ModuleType(_META))

try:
    import torchvision  # noqa: E402
    from torchvision.transforms import InterpolationMode  # noqa: E402
    from torchvision.transforms import functional as F_v1  # noqa: E402
    from torchvision.transforms.v2 import functional as F_v2  # noqa: E402
except ImportError as e:  # a one-line hint: these scripts only run in the reference venv
    raise SystemExit(f"torchvision is not importable ({e}); run the generators with `make reference`, "
                     f"which builds .venv-ref with torch + torchvision") from None

import torch  # noqa: E402

BICUBIC = InterpolationMode.BICUBIC


def versions() -> dict[str, str]:
    """What produced a golden file: stored inside it, checked by nothing, read by people."""
    import numpy

    out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": numpy.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        import av

        out["av"] = av.__version__
    except ImportError:
        pass
    return out
