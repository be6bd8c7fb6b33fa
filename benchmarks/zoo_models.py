"""Model-zoo constructors for the benchmarks (torchvision / timm, random weights, never downloaded).

Workaround for this project's benchmark machines, kept out of the library on purpose: the only
torchvision wheel reachable there is a CUDA build whose compiled ops (``torchvision::nms`` ...) do
not load against the CPU build of torch, so ``import torchvision`` (and ``import timm``, which
imports it) fails with ``operator torchvision::nms does not exist``. Classification models never
call those ops; declaring their schemas with ``torch.library`` before the import lets the
pure-Python model zoo load. On a machine with a matching torchvision the declarations are skipped.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

import torch
from torch import nn

# The detection ops torchvision registers fake/meta kernels for at import time.
_TORCHVISION_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
    "float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
    "float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, "
    "SymInt channels, SymInt height, SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
    "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, "
    "Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, "
    "SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)
_LIB: torch.library.Library | None = None  # kept alive: dropping it would undefine the ops


def _declare_torchvision_ops() -> None:
    global _LIB
    if _LIB is not None:
        return
    _LIB = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _TORCHVISION_OPS:
        if not _op_exists("torchvision::" + schema.split("(", 1)[0]):
            _LIB.define(schema)


def _op_exists(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(name, "")
    except RuntimeError:
        return False
    return True


def import_zoo(module: str):
    """Import ``torchvision`` or ``timm``, declaring torchvision's op schemas first if needed."""
    try:
        return importlib.import_module(module)
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    _declare_torchvision_ops()
    for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
        del sys.modules[name]  # drop the half-imported package before importing it again
    return importlib.import_module(module)


def zoo_missing() -> str | None:
    """None if torchvision and timm import (with the workaround), else what to install."""
    for module in ("torchvision", "timm"):
        try:
            import_zoo(module)
        except ImportError:
            return f"{module} is not installed (pip install torchvision timm)"
    return None


def _torchvision(name: str) -> Callable[[], nn.Module]:
    return lambda: getattr(import_zoo("torchvision").models, name)(weights=None)


def _timm(name: str) -> Callable[[], nn.Module]:
    return lambda: import_zoo("timm").create_model(name, pretrained=False)


# name -> constructor of a randomly initialised ImageNet model (1000 classes, 224x224 input)
ZOO: dict[str, Callable[[], nn.Module]] = {
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
    "mobilenet_v2": _torchvision("mobilenet_v2"),
    "efficientnet_b0": _torchvision("efficientnet_b0"),
    "convnext_tiny": _torchvision("convnext_tiny"),
    "vit_tiny": _timm("vit_tiny_patch16_224"),
    "vgg11_bn": _torchvision("vgg11_bn"),
}


def zoo_model(name: str) -> nn.Module:
    """A zoo model by name, in eval mode, random weights."""
    torch.manual_seed(0)
    return ZOO[name]().eval()
