"""Save and load a pruned model: safetensors for the tensors, a JSON header for the rest.

File layout: one ``.safetensors`` file whose tensors are the model's state dict, except that each
masked layer's weight is stored packed: only its kept blocks (or, for masks that are not whole
blocks, a bitmap and the kept values), as ``packed:<layer>:<part>`` tensors
(:mod:`gpuprune.prune.packing`). Its metadata entry ``gpuprune`` is JSON::

    {"format": "gpuprune-pruned/4",
     "model": {"name", "num_classes", "in_channels", "width", "kwargs"} or null,
     "plan": PrunePlan.to_dict() or null,       # per layer: pattern, kernel, tiling, geometry
     "extra": {...},                            # free JSON facts (accuracy...)
     "sha256": ..., "header_sha256": ...}

``sha256`` covers the tensors (sorted names, dtypes, shapes and bytes), ``header_sha256`` the
rest of the header; both are required and verified. Loading also refuses NaN or infinite
weights, masks that are not bool tensors of their weight's shape, and a plan that does not fit
the model. The model name is resolved through the model registry only (a file never names code
to import; ``timm:NAME`` and ``torchvision:NAME`` are looked up in those libraries' own model
registries); :func:`load` takes an explicit ``factory=`` or ``model=`` for other models.

Formats 2 (every weight dense plus a ``mask:<layer>`` bool tensor, no model ``kwargs``) and 3
(packed over ``weight.reshape(out, -1)``, the conv K order ``(c_in, kh, kw)``) are still read: their
masks load exactly, with a warning naming the spatial convs whose blocks were taken in that order
(the kernels skip only blocks whole in ``(kh, kw, c_in)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from gpuprune.arch import Target
from gpuprune.errors import UserError
from gpuprune.fileio import atomic_write_bytes
from gpuprune.gemm import BareWeight, find_layer, gemm_shape, is_gemm_layer
from gpuprune.models.factory import ModelSpec, create_model
from gpuprune.plan import PrunePlan
from gpuprune.prune.masks import get_mask, masked_layers, set_mask, weight_key
from gpuprune.prune.packing import PREFIX as PACKED_PREFIX
from gpuprune.prune.packing import pack_layer, packed_layers, unpack_layer
from gpuprune.prune.result import PruneResult

# /4: packed parts over the conv K order (kh, kw, c_in). /2 and /3 were written with the order
# (c_in, kh, kw): their packed parts unpack in it, and their block masks load as they are (their
# blocks are not this gpuprune's, which load_pruned says)
FORMAT = "gpuprune-pruned/4"
OLD_K_ORDER = ("gpuprune-pruned/2", "gpuprune-pruned/3")
FORMATS = (*OLD_K_ORDER, FORMAT)  # what read_pruned accepts
MASK_PREFIX = "mask:"
HEADER_KEYS = ("format", "model", "plan", "extra", "sha256", "header_sha256")
RESAVE = "prune the checkpoint again with this gpuprune (`gpuprune prune` or save_pruned())"


@dataclass(frozen=True)
class PrunedInfo:
    """What a pruned-model file says about itself (validated)."""

    model: ModelSpec | None
    plan: PrunePlan | None
    extra: dict[str, Any]

    @property
    def method(self) -> str | None:
        return self.plan.method if self.plan else None

    @property
    def target(self) -> Target | None:
        return self.plan.target if self.plan else None


class Loaded(NamedTuple):
    """What :func:`load` returns: the masked model (eval mode), its plan and the file's facts."""

    model: nn.Module
    plan: PrunePlan | None
    info: PrunedInfo


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with parametrized weights under their plain names, holding masked values."""
    out = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            prefix, rest = key.split(".parametrizations.", 1)
            if rest.endswith(".original"):
                pname = rest[: -len(".original")]
                out[f"{prefix}.{pname}"] = getattr(model.get_submodule(prefix), pname).detach()
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
    plan: PruneResult | PrunePlan | None = None,
    model_name: str | ModelSpec | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write the pruned model, its masks and its plan to ``path`` atomically.

    Args:
        plan: the :class:`PruneResult` or its :class:`~gpuprune.plan.PrunePlan`; default the
            plan the pruner left on the model (``model.gpuprune_plan``).
        model_name: a :class:`~gpuprune.models.ModelSpec` (name and constructor sizes, so
            :func:`load` can rebuild the model), or just a registered name (default sizes).
        extra: more JSON-ready facts to keep (accuracy...).
    """
    if isinstance(plan, PruneResult):
        plan = plan.plan
    if plan is None:
        plan = getattr(model, "gpuprune_plan", None)
    spec = ModelSpec(model_name) if isinstance(model_name, str) else model_name
    tensors = {k: v.detach().cpu().contiguous() for k, v in plain_state_dict(model).items()}
    # checked now: a file load_pruned would refuse must never be written
    check_weights(tensors, f"the model to save as {path}",
                  "fix the model first (e.g. lower the learning rate if training diverged)")
    blocks = {lay.name: lay.block for lay in plan} if plan else {}
    for name, module in masked_layers(model).items():
        weight = tensors.pop(weight_key(name, module))
        tensors.update(pack_layer(name, weight, get_mask(module), blocks.get(name),
                                  bare=isinstance(module, BareWeight)))  # fmt: skip
    try:
        extra_json = json.loads(json.dumps(dict(extra or {}), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise UserError(f"extra facts are not plain JSON ({err})",
                        "pass numbers, strings, lists and mappings") from None  # fmt: skip
    header = {
        "format": FORMAT,
        "model": spec.to_dict() if spec else None,
        "plan": plan.to_dict() if plan else None,
        "extra": extra_json,
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
    except (KeyError, ValueError, RecursionError):
        raise UserError(
            f"{p} has no gpuprune header",
            "pass a file written by `gpuprune prune` or save_pruned()",
        ) from None
    if not isinstance(header, dict):
        raise UserError(f"{p} has a gpuprune header that is not a mapping", RESAVE)
    if header.get("format") not in FORMATS:
        raise UserError(f"{p} has format {header.get('format')!r}, expected {FORMAT!r}", RESAVE)
    # Both checksums are required: a file without one is refused, not trusted.
    if not isinstance(header.get("header_sha256"), str):
        raise UserError(f"{p} has no header checksum (header_sha256)", RESAVE)
    if header_digest(header) != header["header_sha256"]:
        raise UserError(f"{p} is corrupt: the header checksum does not match", "save it again")
    if checksum(tensors) != header.get("sha256"):
        raise UserError(
            f"{p} is corrupt: the tensor checksum does not match", "save the model again"
        )
    unknown = sorted(set(header) - set(HEADER_KEYS))
    if unknown:
        raise UserError(f"{p} has an unknown header entry {unknown[0]!r}", RESAVE)
    check_weights(tensors, str(p))
    return header, tensors


def _warn_old_blocks(path: str | os.PathLike[str], plan: PrunePlan | None) -> None:
    """Name the spatial convs whose blocks a /2 or /3 file took in the K order (c_in, kh, kw)."""
    old = [lay.name for lay in plan or () if lay.block[1] > 1 and lay.geometry is not None
           and lay.geometry.kernel_size[0] * lay.geometry.kernel_size[1] > 1]  # fmt: skip
    if old:
        warnings.warn(f"{path} was written with the conv K order (c_in, kh, kw): the masks of "
                      f"{', '.join(old[:3])}{' ...' if len(old) > 3 else ''} load as they are, but "
                      "the kernels skip only blocks whole in (kh, kw, c_in); prune the dense "
                      "model again for their speed", UserWarning, stacklevel=3)  # fmt: skip


def unpack(tensors: Mapping[str, torch.Tensor], origin: str = "pruned file",
           old_order: bool = False) -> dict[str, torch.Tensor]:  # fmt: skip
    """The stored tensors of a pruned file as a plain state dict (masked weights under their
    names) plus each mask as ``mask:<layer>``; packed layers are unpacked exactly."""
    out = {k: v for k, v in tensors.items() if not k.startswith(PACKED_PREFIX)}
    for layer in packed_layers(tensors):
        weight, mask, bare = unpack_layer(layer, tensors, origin, old_order)
        key = layer if bare else f"{layer}.weight"
        if key in out or MASK_PREFIX + layer in out:
            raise UserError(f"{origin} stores layer {layer} both packed and dense", RESAVE)
        out[key], out[MASK_PREFIX + layer] = weight, mask
    stray = [k for k in tensors if k.startswith(PACKED_PREFIX)
             and k.rsplit(":", 1)[0][len(PACKED_PREFIX):] not in set(packed_layers(tensors))]
    if stray:  # fmt: skip
        raise UserError(f"{origin} has a packed tensor {stray[0]!r} without its layer's shape",
                        RESAVE)  # fmt: skip
    return out


def info_from_header(header: Mapping[str, Any], origin: str = "pruned file") -> PrunedInfo:
    """The validated model record, plan and extra facts of a header (one-line UserErrors)."""
    model = header.get("model")
    spec = None if model is None else ModelSpec.from_dict(model, f"{origin} model record")
    raw_plan = header.get("plan")
    plan = None if raw_plan is None else PrunePlan.from_dict(raw_plan, f"{origin} plan")
    extra = header.get("extra")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise UserError(f"{origin}: extra is a {type(extra).__name__}, not a mapping", RESAVE)
    return PrunedInfo(spec, plan, dict(extra))


def load_pruned(
    path: str | os.PathLike[str], model: nn.Module, model_name: str | None = None
) -> PrunedInfo:
    """Load a pruned-model file into ``model`` (weights and masks); the model is left masked and
    carries the file's plan as ``model.gpuprune_plan`` (what :func:`gpuprune.compile` reads).

    Raises:
        UserError: the file is unreadable or corrupt, its plan is malformed, or its layers/shapes
            (or ``model_name``, when given) do not match ``model``.
    """
    return _load_into(path, *read_pruned(path), model, model_name)


def _load_into(path: str | os.PathLike[str], header: dict[str, Any],
               tensors: dict[str, torch.Tensor], model: nn.Module, model_name: str | None = None
               ) -> PrunedInfo:  # fmt: skip
    info = info_from_header(header, str(path))
    old_order = header.get("format") in OLD_K_ORDER
    tensors = unpack(tensors, str(path), old_order)
    if old_order:
        _warn_old_blocks(path, info.plan)
    masks = {k[len(MASK_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MASK_PREFIX)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(MASK_PREFIX)}
    saved_name = info.model.name if info.model else None
    if model_name and saved_name and saved_name != model_name:
        raise UserError(
            f"{path} holds a pruned {saved_name}, not a {model_name}",
            f"load it into a {saved_name} model",
        )
    check_matches(weights, plain_state_dict(model), str(path))
    modules = dict(model.named_modules())
    layers = {name: find_layer(model, name, modules) for name in masks}
    for name, mask in masks.items():
        if layers[name] is None:
            raise UserError(
                f"{path} masks layer {name!r}, which the model lacks", "use the matching model"
            )
        weight = getattr(layers[name], "weight", None)
        if weight is None or mask.dtype != torch.bool or mask.shape != weight.shape:
            raise UserError(
                f"{path} has a bad mask for {name}: {mask.dtype} {tuple(mask.shape)}, expected "
                f"bool {tuple(weight.shape) if weight is not None else '(no weight)'}",
                "save the model again with save_pruned() or `gpuprune prune`",
            )
    if info.plan is not None:
        check_plan(info.plan, model, str(path))
    for name, mask in masks.items():
        set_mask(layers[name], mask)
    # plain names -> the model's own keys (weights of parametrized layers live in `.original`)
    own = {}
    for key in model.state_dict():
        if ".parametrizations." in key and key.endswith(".original"):
            prefix, rest = key.split(".parametrizations.", 1)
            own[f"{prefix}.{rest[: -len('.original')]}"] = key
    model.load_state_dict({own.get(k, k): v for k, v in weights.items()}, strict=False)
    model.gpuprune_plan = info.plan
    return info


def check_plan(plan: PrunePlan, model: nn.Module, origin: str) -> None:
    """Raise a one-line UserError unless every planned layer is a GEMM layer of ``model`` of the
    planned kind and shape (a plan that does not fit would build wrong kernels)."""
    from gpuprune.geometry import ConvGeometry

    modules = dict(model.named_modules())
    for lay in plan:
        module = find_layer(model, lay.name, modules)
        if module is None or not is_gemm_layer(module):
            raise UserError(f"{origin}: the plan names layer {lay.name!r}, which the model lacks "
                            "as a Conv2d/Linear", RESAVE)  # fmt: skip
        conv = isinstance(module, nn.Conv1d | nn.Conv2d | nn.ConvTranspose2d)
        kind = "conv" if conv else "linear"
        if kind != lay.kind or gemm_shape(module) != lay.gemm:
            raise UserError(
                f"{origin}: the plan says {lay.name} is a {lay.kind} {lay.gemm[0]}x{lay.gemm[1]}, "
                f"the model has a {kind} {gemm_shape(module)[0]}x{gemm_shape(module)[1]}", RESAVE,
            )  # fmt: skip
        if lay.geometry is not None and (isinstance(module, nn.ConvTranspose2d) or
                                         lay.geometry != ConvGeometry.of(module)):  # fmt: skip
            raise UserError(f"{origin}: the plan's conv geometry of {lay.name} is not the "
                            "model's", RESAVE)  # fmt: skip


def load(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    factory: str | None = None,
) -> Loaded:
    """Load a pruned-model file: the model (rebuilt from the file's model record), its plan.

    Args:
        model: load into this model instead of building one.
        factory: build the model with this ``package.module:factory`` (or registered name) and
            the file's sizes. Code is imported only when named here: a name in the file is
            looked up in the model registry, never imported.

    Returns:
        :class:`Loaded` ``(model, plan, info)``; the model is masked, in eval mode, and carries
        the plan as ``model.gpuprune_plan``, so ``gpuprune.compile(model)`` needs nothing else.

    Example:
        >>> model, plan, info = gpuprune.load("vgg16-simd.safetensors")  # doctest: +SKIP
        >>> fast = gpuprune.compile(model)  # each layer's kernel from the plan  # doctest: +SKIP
    """
    header, tensors = read_pruned(path)
    if model is None:
        spec = info_from_header(header, str(path)).model
        if spec is None and factory is None:
            raise UserError(f"{path} does not record its model",
                            "pass the model: gpuprune.load(path, model=...)")  # fmt: skip
        spec = spec or ModelSpec(factory or "")
        if factory is not None:
            model = create_model(factory, spec.num_classes, spec.in_channels, spec.width,
                                 kwargs=spec.kwargs)
        else:
            model = spec.build(allow_import=False)
    info = _load_into(path, header, tensors, model)
    model.eval()
    return Loaded(model, info.plan, info)


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
            with safe_open(str(p), framework="pt") as fh:
                pruned = "gpuprune" in (fh.metadata() or {})
            if pruned:
                header, tensors = read_pruned(p)
                data = unpack(tensors, str(p), header.get("format") in OLD_K_ORDER)
            else:
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
