"""Save and load a pruned model: safetensors for the tensors, a JSON header for the rest.

File layout: one ``.safetensors`` file whose tensors are the model's state dict with effective
(masked) weights under their plain names (``features.0.weight``) plus each mask as
``mask:<layer>`` (bool, weight-shaped). Its metadata entry ``gpuprune`` is JSON with the format
version, model name, method, target (``Target.to_dict()``), per-layer plan, a sha256 of the
tensors (over sorted names, dtypes, shapes and bytes) and a sha256 of the header itself; loading
verifies both (files from before the header checksum carry only the first) and refuses NaN or
infinite weights and masks that are not bool tensors of their weight's shape.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from gpuprune.arch import Target
from gpuprune.errors import UserError
from gpuprune.fileio import atomic_write_bytes
from gpuprune.prune.masks import get_mask, masked_layers, set_mask
from gpuprune.prune.result import PruneResult

FORMAT = "gpuprune-pruned/1"
MASK_PREFIX = "mask:"


@dataclass(frozen=True)
class PrunedInfo:
    """What a pruned-model file says about itself."""

    model: str | None
    method: str | None
    target: Target | None
    plan: dict[str, dict[str, Any]]
    extra: dict[str, Any]


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with parametrized weights under their plain names, holding masked values."""
    out = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            prefix, rest = key.split(".parametrizations.", 1)
            if rest.endswith(".original"):
                module = model.get_submodule(prefix)
                out[f"{prefix}.{rest[: -len('.original')]}"] = module.weight.detach()
            continue  # mask buffers are stored separately
        out[key] = value
    return out


def checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over sorted names, dtypes, shapes and raw bytes of the tensors."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def header_digest(header: Mapping[str, Any]) -> str:
    """sha256 of the header's canonical JSON, without the ``header_sha256`` entry itself."""
    body = {k: v for k, v in header.items() if k != "header_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def check_finite(tensors: Mapping[str, torch.Tensor], origin: str) -> None:
    """Raise a one-line :class:`UserError` if a floating-point tensor holds NaN or Inf."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(
                f"{origin} has NaN or infinite values in {name}",
                "use a checkpoint saved before training diverged (lower the learning rate)",
            )


MAX_ABS_WEIGHT = 1e15  # far beyond any trained weight; past it a forward pass overflows float32


def check_weights(tensors: Mapping[str, torch.Tensor], origin: str,
                  fix: str | None = None) -> None:  # fmt: skip
    """Refuse weights no trained model has: NaN/Inf, complex values, magnitudes past
    :data:`MAX_ABS_WEIGHT`, or a negative BatchNorm ``running_var``. One line naming the tensor.
    """
    check_finite(tensors, origin)
    fix = fix or "use an intact checkpoint of a trained model"
    for name, t in tensors.items():
        if t.is_complex():
            raise UserError(f"{origin}: {name} holds complex numbers ({t.dtype})", fix)
        if not t.is_floating_point() or not t.numel():
            continue
        peak = float(t.detach().abs().max())
        if peak > MAX_ABS_WEIGHT:
            raise UserError(f"{origin}: {name} holds a value of magnitude {peak:.3g} "
                            f"(beyond {MAX_ABS_WEIGHT:g})", fix)  # fmt: skip
        if name.endswith("running_var") and float(t.min()) < 0:
            raise UserError(f"{origin}: {name} holds a negative variance {float(t.min()):.3g}",
                            fix)  # fmt: skip


def save_pruned(
    path: str | os.PathLike[str],
    model: nn.Module,
    result_or_plan: PruneResult | Mapping[str, Any],
    model_name: str | None = None,
    method: str | None = None,
    target: Target | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write the pruned model, its masks and its plan to ``path`` atomically.

    Args:
        result_or_plan: the :class:`PruneResult` (method and target come from it) or a plain
            per-layer plan mapping (then pass ``method``/``target`` yourself).
        model_name: e.g. ``"vgg16"``; recorded so a loader can check it.
        extra: more JSON-ready facts to keep (width, num_classes, accuracy...).
    """
    if isinstance(result_or_plan, PruneResult):
        plan, method, target = result_or_plan.plan(), result_or_plan.method, result_or_plan.target
        requested = result_or_plan.requested
    else:
        plan, requested = dict(result_or_plan), None
    tensors = {k: v.detach().cpu().contiguous() for k, v in plain_state_dict(model).items()}
    # checked now: a file load_pruned would refuse must never be written
    check_weights(tensors, f"the model to save as {path}",
                  "fix the model first (e.g. lower the learning rate if training diverged)")
    for name, module in masked_layers(model).items():
        tensors[MASK_PREFIX + name] = get_mask(module).detach().cpu().contiguous()
    header = {
        "format": FORMAT,
        "model": model_name,
        "method": method,
        "target": target.to_dict() if target else None,
        "requested": requested,
        "plan": plan,
        "extra": dict(extra or {}),
        "sha256": checksum(tensors),
    }
    header["header_sha256"] = header_digest(header)
    atomic_write_bytes(path, save(tensors, metadata={"gpuprune": json.dumps(header)}))


def read_pruned(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header, tensors) of a pruned-model file, checksum verified."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"pruned-model file {p} does not exist", "check the path")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(
            f"{p} is not a readable safetensors file ({str(err).splitlines()[0][:80]})",
            "pass a file written by `gpuprune prune` or save_pruned()",
        ) from None
    try:
        header = json.loads(meta["gpuprune"])
    except (KeyError, ValueError):
        raise UserError(
            f"{p} has no gpuprune header",
            "pass a file written by `gpuprune prune` or save_pruned()",
        ) from None
    if header.get("format") != FORMAT:
        raise UserError(
            f"{p} has format {header.get('format')!r}, expected {FORMAT!r}", "re-save it"
        )
    if checksum(tensors) != header.get("sha256"):
        raise UserError(
            f"{p} is corrupt: the tensor checksum does not match", "save the model again"
        )
    if "header_sha256" in header and header_digest(header) != header["header_sha256"]:
        raise UserError(f"{p} is corrupt: the header checksum does not match", "save it again")
    check_weights(tensors, str(p))
    return header, tensors


def info_from_header(header: Mapping[str, Any]) -> PrunedInfo:
    target = (
        Target.from_dict(header["target"], origin="file target") if header.get("target") else None
    )
    extra = dict(header.get("extra") or {})
    extra["requested"] = header.get("requested")
    return PrunedInfo(
        header.get("model"), header.get("method"), target, header.get("plan", {}), extra
    )


def load_pruned(
    path: str | os.PathLike[str], model: nn.Module, model_name: str | None = None
) -> PrunedInfo:
    """Load a pruned-model file into ``model`` (weights and masks); the model is left masked.

    Raises:
        UserError: the file is unreadable or corrupt, or its layers/shapes (or ``model_name``,
            when given) do not match ``model``.
    """
    header, tensors = read_pruned(path)
    masks = {k[len(MASK_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MASK_PREFIX)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(MASK_PREFIX)}
    if model_name and header.get("model") and header["model"] != model_name:
        raise UserError(
            f"{path} holds a pruned {header['model']}, not a {model_name}",
            f"load it into a {header['model']} model",
        )
    check_matches(weights, plain_state_dict(model), str(path))
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules:
            raise UserError(
                f"{path} masks layer {name!r}, which the model lacks", "use the matching model"
            )
        weight = getattr(modules[name], "weight", None)
        if weight is None or mask.dtype != torch.bool or mask.shape != weight.shape:
            raise UserError(
                f"{path} has a bad mask for {name}: {mask.dtype} {tuple(mask.shape)}, expected "
                f"bool {tuple(weight.shape) if weight is not None else '(no weight)'}",
                "save the model again with save_pruned() or `gpuprune prune`",
            )
    for name, mask in masks.items():
        set_mask(modules[name], mask)
    # plain names -> the model's own keys (weights of parametrized layers live in `.original`)
    own = {}
    for key in model.state_dict():
        if ".parametrizations." in key and key.endswith(".original"):
            prefix, rest = key.split(".parametrizations.", 1)
            own[f"{prefix}.{rest[: -len('.original')]}"] = key
    model.load_state_dict({own.get(k, k): v for k, v in weights.items()}, strict=False)
    return info_from_header(header)


def check_matches(
    found: Mapping[str, torch.Tensor], wanted: Mapping[str, torch.Tensor], origin: str
) -> None:
    """Raise a one-line :class:`UserError` unless names and shapes agree exactly."""
    missing = [k for k in wanted if k not in found]
    unexpected = [k for k in found if k not in wanted]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has an unknown tensor {unexpected[0]!r}"
        raise UserError(
            f"{origin} does not match the model: it {what} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)",
            "use the model (and --width/--num-classes) the checkpoint was made for",
        )
    for k, v in wanted.items():
        if tuple(found[k].shape) != tuple(v.shape):
            raise UserError(
                f"{origin} does not match the model: {k} has shape {tuple(found[k].shape)}, "
                f"the model expects {tuple(v.shape)}",
                "use the model (and --width/--num-classes) the checkpoint was made for",
            )
        if v.is_floating_point() and not found[k].is_floating_point():
            # loading would silently cast (complex drops its imaginary part, ints lose nothing
            # visible but are surely not trained weights)
            raise UserError(
                f"{origin}: {k} is {found[k].dtype}, the model expects {v.dtype}",
                "save the checkpoint with the model's floating-point weights",
            )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A model checkpoint as a state dict.

    Reads ``torch.save`` output (a state dict, or a dict holding one under ``state_dict`` or
    ``model``) with ``weights_only=True``, or a ``.safetensors`` file (pruned files included).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint {p} does not exist", "check the path")
    try:
        if p.suffix == ".safetensors":
            data = load_file(str(p))
            data = {k: v for k, v in data.items() if not k.startswith(MASK_PREFIX)}
        else:
            data = torch_load(p)
    except UserError:
        raise
    except Exception as err:  # any unpickling/format error means the file is not a checkpoint
        raise UserError(
            f"cannot read checkpoint {p} ({type(err).__name__})",
            "pass a torch.save(model.state_dict(), path) file or a .safetensors file",
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(
            f"checkpoint {p} holds no state dict of tensors",
            "save it with torch.save(model.state_dict(), path)",
        )
    check_weights(data, f"checkpoint {p}")
    return data


def torch_load(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load`` of an untrusted file: tensors and plain containers only, CRCs checked.

    ``weights_only=True`` never runs code from the file; torch does not check the zip CRCs, so a
    bit flip would load as silently different weights: they are checked here first.

    Raises:
        UserError: a corrupt zip member.
    """
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            bad = "(zip directory)"
        if bad is not None:
            raise UserError(
                f"checkpoint {path} is corrupt (checksum of {bad} does not match)",
                "use an intact copy of the file",
            )
    return torch.load(path, map_location=map_location, weights_only=True)
