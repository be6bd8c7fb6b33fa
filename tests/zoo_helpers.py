"""Load torchvision and timm model zoos in tests (skipped when they are not installed).

The torchvision wheel these machines reach is a CUDA build whose compiled ops (``torchvision::nms``,
``roi_align``...) fail to register against the CPU torch, so ``import torchvision`` raises
"operator torchvision::nms does not exist" (and timm imports torchvision). The model zoo itself is
pure Python: defining the missing operator schemas with ``torch.library`` before the import lets it
load. The schemas are never called by the classification models tested here. This lives in test
code only: the library imports torchvision (for `torchvision:NAME` models) plainly and reports a
failed import as a one-line error, never applying this shim.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

import pytest
import torch

# the operators torchvision/_meta_registrations.py registers fake kernels for, unconditionally
# (the others only when the compiled ops loaded)
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # kept alive: the schemas live as long as the Library object


def _define_missing_ops() -> None:
    global _library
    if _library is not None:
        return
    _library = torch.library.Library("torchvision", "FRAGMENT")  # noqa: TOR901 - test-only shim
    for schema in _SCHEMAS:
        name = schema.split("(", 1)[0]
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        except RuntimeError:
            _library.define(schema)


def zoo(name: str) -> ModuleType:
    """``torchvision`` or ``timm``, importable on a CPU torch, or the test is skipped."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (pip install --no-deps {name})")
    if importlib.util.find_spec("torchvision") is not None:
        try:
            importlib.import_module("torchvision")
        except RuntimeError:  # the compiled ops of a wheel built for another torch
            for mod in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
                del sys.modules[mod]  # the half-imported package, imported again below
            _define_missing_ops()
    try:
        return importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any import failure means: no zoo here
        pytest.skip(f"{name} cannot be imported here: {type(err).__name__}: {err}"[:200])
