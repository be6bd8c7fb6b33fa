"""compile(): swap a pruned model's Conv2d/Linear layers for layers that skip pruned blocks."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn
from torch.nn.utils import parametrize

from gpuprune.arch import Target, get_target
from gpuprune.errors import UnsupportedLayerError, UserError
from gpuprune.gemm import gemm_view
from gpuprune.kernels.backends import Backend, get_backend
from gpuprune.kernels.format import block_for, pack, variant_for_method
from gpuprune.nn.fold import Chain, find_chains, fold_bn
from gpuprune.nn.layers import SkipConv2d, SkipLinear

AUTO_ORDER = ("opencl", "cpu", "reference")  # what backend="auto" tries, in order


@dataclass(frozen=True)
class CompiledLayer:
    """One layer replaced by compile()."""

    name: str
    kind: str  # "conv" or "linear"
    gemm: tuple[int, int]  # (M, K)
    variant: str  # "tile" or "simd"
    block: tuple[int, int]
    target: str  # the tiling this layer's kernel was built for
    skippable: float  # pruned blocks' share
    bn_folded: bool
    relu_fused: bool


@dataclass(frozen=True)
class CompileReport:
    """What compile() did; also attached to the model as ``model.gpuprune_compile``."""

    backend: str
    device: str
    target: str
    layers: tuple[CompiledLayer, ...]
    dense: tuple[str, ...] = field(default=())  # GEMM layers left as they were
    notes: tuple[str, ...] = field(default=())  # e.g. why "auto" fell back

    def table(self) -> tuple[list[str], list[list[str]]]:
        """(columns, rows) for printing."""
        cols = ["layer", "GEMM MxK", "variant", "block", "skippable", "fused"]
        rows = []
        for lay in self.layers:
            fused = "+".join(x for x, on in (("bn", lay.bn_folded), ("relu", lay.relu_fused)) if on)
            rows.append([
                lay.name, f"{lay.gemm[0]}x{lay.gemm[1]}", lay.variant,
                f"{lay.block[0]}x{lay.block[1]}", f"{lay.skippable:.3f}", fused or "-",
            ])
        return cols, rows

    def summary(self) -> str:
        """Multi-line text: backend, device, and one line per compiled layer."""
        lines = [*self.notes, f"backend {self.backend} on {self.device}, target {self.target}"]
        for lay in self.layers:
            lines.append(
                f"  {lay.name}: {lay.kind} {lay.gemm[0]}x{lay.gemm[1]} {lay.variant} "
                f"block {lay.block[0]}x{lay.block[1]}, skippable {lay.skippable:.3f}"
            )
        if self.dense:
            lines.append(f"  left dense: {', '.join(self.dense)}")
        return "\n".join(lines)


def resolve_backend(name: str) -> tuple[Backend, tuple[str, ...]]:
    """The backend instance for ``name``; "auto" tries opencl, cpu, reference in turn."""
    if name != "auto":
        backend = get_backend(name)
        backend.check_available()
        return backend, ()
    notes = []
    for candidate in AUTO_ORDER:
        try:
            backend = get_backend(candidate)
            backend.check_available()
        except UserError as err:
            notes.append(f"backend {candidate} unavailable ({err.problem}); trying the next")
            continue
        if notes:
            notes.append(f"backend auto: falling back to {candidate}")
        return backend, tuple(notes)
    raise UserError("no backend is available", "install PoCL (make setup) or use 'reference'")


def _resolve_target(target: Target | str | None, backend: Backend) -> Target:
    if target is None or target == "detect":
        from gpuprune.arch.detect import detect_target

        return detect_target("opencl" if backend.name == "opencl" else "auto")
    return get_target(target)


def _bake_masks(model: nn.Module) -> None:
    """Replace mask parametrizations by the masked values, in this (copied) model only.

    ``parametrize.remove_parametrizations`` would delete the property from the parametrized class,
    which a deep copy shares with the user's model; so the instance gets its base class back.
    """
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        values = {p: getattr(module, p).detach().clone() for p in module.parametrizations}
        del module._modules["parametrizations"]
        module.__class__ = type(module).__bases__[0]
        for pname, value in values.items():
            module.register_parameter(pname, nn.Parameter(value, requires_grad=False))


def _methods_for(
    model: nn.Module, methods: str | Mapping[str, str] | None
) -> dict[str, str] | None:
    if methods is None:
        return None
    gemm = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    if isinstance(methods, str):
        return dict.fromkeys(sorted(gemm), methods)
    unknown = sorted(set(methods) - gemm)
    if unknown:
        raise UserError(
            f"methods names layer {unknown[0]!r}, which is not a Conv2d/Linear of the model",
            f"use layer names from model.named_modules(), e.g. {sorted(gemm)[:3]}",
        )
    return dict(methods)


def _unsupported(module: nn.Module) -> str | None:
    """Why the skip kernels cannot run this Conv2d, or None."""
    if not isinstance(module, nn.Conv2d):
        return None
    if module.groups != 1:
        return f"a grouped Conv2d (groups={module.groups})"
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        return f"a Conv2d with padding={module.padding!r}, padding_mode={module.padding_mode!r}"
    return None


def _layer_targets(
    model: nn.Module, layer_targets: Mapping[str, Target | str | Mapping] | None
) -> dict[str, Target]:
    if not layer_targets:
        return {}
    gemm = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    out = {}
    for name, spec in layer_targets.items():
        if name not in gemm:
            raise UserError(
                f"layer_targets names layer {name!r}, which is not a Conv2d/Linear of the model",
                f"use layer names from model.named_modules(), e.g. {sorted(gemm)[:3]}",
            )
        out[name] = (
            Target.from_dict(dict(spec), origin=f"target of layer {name}")
            if isinstance(spec, Mapping)
            else get_target(spec)
        )
    return out


def _check_dtypes(model: nn.Module, runner: Backend) -> None:
    """Refuse parameters in a dtype the backend's kernels do not compute in (never cast quietly).

    The packed weights are kept in float32 whatever the model's dtype; a backend that takes
    float16/bfloat16 (opencl, triton) converts them once per compute dtype on the device.
    """
    for name, p in model.named_parameters():
        if p.dtype not in runner.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in runner.dtypes)
            fix = "call model.float() before compile()"
            if p.dtype.is_floating_point and runner.name != "triton":
                fix += ", or use backend='triton' on a CUDA/ROCm GPU for float16/bfloat16 models"
            raise UserError(
                f"parameter {name} is {p.dtype}; the {runner.name} backend's kernels run {names}",
                fix,
            )


def _foldable(bn: nn.Module | None) -> bool:
    return isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_var is not None


def compile(  # noqa: A001 - the public name the project documents (gpuprune.compile)
    model: nn.Module,
    target: Target | str | None = None,
    backend: str = "auto",
    methods: str | Mapping[str, str] | None = None,
    *,
    inplace: bool = False,
    verbose: bool = True,
    layer_targets: Mapping[str, Target | str | Mapping] | None = None,
) -> nn.Module:
    """Compile a pruned model: pruned Conv2d/Linear layers become skip layers, the rest stay dense.

    BatchNorm2d after a conv is folded into it, a ReLU right after is fused into the kernel.
    A layer is compiled when ``methods`` names it, or (``methods=None``) when its weight has at
    least one all-zero block of the variant's block shape on ``target``.

    Args:
        model: a pruned model (masked parametrizations or zeros in the weights), float32; also
            float16 with backend="opencl" or "triton", bfloat16 with "triton" (whose layers
            also follow ``torch.autocast``). Other dtypes are refused (``Backend.dtypes``).
        target: Target, preset name or file; ``None``/"detect" detects the OpenCL/CUDA device.
        backend: "opencl", "triton", "cpu", "reference", or "auto" (the first available of
            opencl, cpu, reference, saying so when it falls back).
        methods: pruning method per layer name (e.g. a pruned-model file's plan), or one method
            for all; "simd"/"simd-balanced" compile the SIMD-skip kernel, others the tile kernel.
        inplace: modify ``model`` instead of a deep copy.
        verbose: print the compiled layers and their skippable fractions.
        layer_targets: a tiling per layer name (e.g. chosen by ``gpuprune codesign`` and kept
            in a pruned-model file), overriding ``target`` for those layers.

    Returns:
        The compiled model in eval mode; ``model.gpuprune_compile`` is its :class:`CompileReport`.
    """
    runner, notes = resolve_backend(backend)
    tgt = _resolve_target(target, runner)
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    _bake_masks(out)
    _check_dtypes(out, runner)
    plan = _methods_for(out, methods)
    per_layer = _layer_targets(out, layer_targets)
    chains = find_chains(out)
    modules = dict(out.named_modules())
    compiled, dense = [], []
    for name, module in list(modules.items()):
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        chain = chains.get(name, Chain(name))
        if chain.bn and not _foldable(modules.get(chain.bn)):
            chain = Chain(name)  # BN on batch statistics: neither it nor a ReLU after can fuse
        if plan is not None and name not in plan:
            dense.append(name)
            continue
        variant = variant_for_method(plan[name] if plan else None)
        layer_tgt = per_layer.get(name, tgt)
        block = block_for(layer_tgt, variant)
        weight, bias = module.weight.detach(), module.bias
        if chain.bn:
            weight, bias = fold_bn(module, modules[chain.bn])
        problem = _unsupported(module)
        if problem:
            if plan is not None:
                raise UnsupportedLayerError(
                    f"layer {name} is {problem}",
                    "the skip kernels take groups=1 convolutions with integer zero padding; "
                    "leave it out of methods",
                )
            dense.append(name)
            continue
        skippable = pack(gemm_view(weight), block).skippable_fraction()
        if plan is None and skippable == 0.0:
            dense.append(name)
            continue
        relu = chain.relu is not None
        if isinstance(module, nn.Conv2d):
            new: nn.Module = SkipConv2d.from_conv(
                module, layer_tgt, runner, variant=variant, relu=relu, weight=weight, bias=bias
            )
        else:
            new = SkipLinear.from_linear(module, layer_tgt, runner, variant=variant, relu=relu)
        _replace(out, name, new)
        for extra in (chain.bn, chain.relu):
            if extra:
                _replace(out, extra, nn.Identity())
        compiled.append(CompiledLayer(
            name, "conv" if isinstance(module, nn.Conv2d) else "linear",
            tuple(gemm_view(weight).shape), variant, block, layer_tgt.name, skippable,
            chain.bn is not None, relu,
        ))
    report = CompileReport(runner.name, runner.device, tgt.name, tuple(compiled), tuple(dense),
                           notes)
    out.gpuprune_compile = report
    out.eval()
    if verbose:
        print(report.summary())
    return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
