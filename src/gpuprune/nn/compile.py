"""compile(): swap a pruned model's Conv/Linear layers for layers that skip pruned blocks.

An ``nn.MultiheadAttention`` with a compiled input projection or out_proj is replaced by a
:class:`~gpuprune.nn.attention.SkipMultiheadAttention` running them.

Every weight layer left dense is named in the report with its reason (nothing silent).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from gpuprune.arch import Target, get_target
from gpuprune.errors import UnsupportedLayerError, UserError
from gpuprune.gemm import BareWeight, TransposedConv, gemm_view, groups_of
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels.backends import Backend, get_backend
from gpuprune.kernels.format import pack_for
from gpuprune.nn.attention import SkipMultiheadAttention, unsupported
from gpuprune.nn.chain import chain_convolutions
from gpuprune.nn.fold import Chain, find_chains, fold_bn
from gpuprune.nn.layers import SkipConv2d, SkipGroupedConv2d, SkipLinear
from gpuprune.nn.residual import fuse_residual_blocks
from gpuprune.plan import SKIP_KERNELS, PrunePlan, SkippedLayer
from gpuprune.prune.api import check_model
from gpuprune.prune.layers import gemm_layers, unprunable_layers
from gpuprune.prune.methods import kernel_of

log = logging.getLogger(__name__)


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
    pool_fused: bool = False  # a 2x2 stride-2 MaxPool2d after it, pooled in the kernel's store


@dataclass(frozen=True)
class CompileReport:
    """What compile() did; also attached to the model as ``model.gpuprune_compile``."""

    backend: str
    device: str
    target: str
    layers: tuple[CompiledLayer, ...]
    dense: tuple[SkippedLayer, ...] = field(default=())  # weight layers left dense, and why
    notes: tuple[str, ...] = field(default=())  # the auto choice; layers left dense, and why

    def table(self) -> tuple[list[str], list[list[str]]]:
        """(columns, rows) for printing."""
        cols = ["layer", "GEMM MxK", "variant", "block", "skippable", "fused"]
        rows = []
        for lay in self.layers:
            fused = "+".join(x for x, on in (("bn", lay.bn_folded), ("relu", lay.relu_fused),
                                             ("maxpool", lay.pool_fused)) if on)  # fmt: skip
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
                + (", 2x2 max pool fused" if lay.pool_fused else "")
            )
        for skip in self.dense:
            lines.append(f"  left dense: {skip.name}: {skip.reason}")
        return "\n".join(lines)


# backend="auto": the fastest kernels for the device, each with the condition it needs. PoCL's
# OpenCL on a CPU is far slower than the cpu backend, so OpenCL is chosen only on a GPU device.
AUTO_CHOICES = (
    ("triton", "a CUDA/ROCm GPU"),
    ("opencl", "an OpenCL GPU device"),
    ("cpu", "the CPU (compiled C kernel)"),
    ("reference", "plain PyTorch (no skip kernel could be set up)"),
)


def _auto_fits(name: str, backend: Backend) -> str | None:
    """Why ``backend`` is not the fast path on this machine, or None when it is."""
    if name == "triton" and not torch.cuda.is_available():
        return "no CUDA/ROCm GPU"
    if name == "opencl":
        from gpuprune.kernels.opencl.context import device_is_gpu

        if not device_is_gpu():
            return f"the OpenCL device {backend.device} is not a GPU (ask for opencl to use it)"
    return None


def _swap_max_pools(model: nn.Module, runner: Backend) -> list[str]:
    """Replace the nn.MaxPool2d layers no kernel fused with the backend's own, where it has one
    (Backend.max_pool); returns their names."""
    swapped = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.MaxPool2d and (new := runner.max_pool(module)) is not None:
            _replace(model, name, new)
            swapped.append(name)
    return swapped


def resolve_backend(name: str) -> tuple[Backend, tuple[str, ...]]:
    """The backend instance for ``name`` and, for "auto", one note stating what it chose and why.

    "auto" takes triton on a CUDA/ROCm GPU, else OpenCL on a GPU OpenCL device, else the cpu
    backend, else the reference; an OpenCL CPU device (PoCL) only when asked for by name.
    """
    if name != "auto":
        backend = get_backend(name)
        backend.check_available()
        return backend, ()
    passed = []
    for candidate, why in AUTO_CHOICES:
        try:
            backend = get_backend(candidate)
            backend.check_available()
            reason = _auto_fits(candidate, backend)
        except UserError as err:
            reason = err.problem
        if reason is None:
            over = f"; passed over {'; '.join(passed)}" if passed else ""
            return backend, (f"backend auto: {candidate} for {why}{over}",)
        passed.append(f"{candidate} ({reason})")
    raise UserError("no backend is available", "install PoCL (make setup) or use 'reference'")


def _resolve_target(target: Target | str | None, backend: Backend, plan: PrunePlan | None
                    ) -> Target:  # fmt: skip
    if target is None and plan is not None and plan.target is not None:
        return plan.target  # the blocks were chosen for it
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


def _per_layer(model: nn.Module, value: str | Mapping[str, str], what: str) -> dict[str, str]:
    """``value`` (one for all GEMM layers, or per layer name) as {layer: value}, names checked."""
    gemm = set(gemm_layers(model))
    if isinstance(value, str):
        value = dict.fromkeys(sorted(gemm), value)
    unknown = sorted(set(value) - gemm)
    if unknown:
        raise UserError(
            f"{what} names layer {unknown[0]!r}, which is not a Conv2d/Linear of the model",
            f"use layer names from model.named_modules(), e.g. {sorted(gemm)[:3]}",
        )
    return dict(value)


def _explicit_kernels(
    model: nn.Module, methods: str | Mapping[str, str] | None,
    kernels: str | Mapping[str, str] | None,
) -> dict[str, str] | None:
    """{layer: kernel variant} the caller asked for, or None (then the plan decides)."""
    if methods is not None and kernels is not None:
        raise UserError("methods= and kernels= both given", "pass one of them")
    if methods is not None:
        return {n: kernel_of(m) for n, m in _per_layer(model, methods, "methods").items()}
    if kernels is None:
        return None
    chosen = _per_layer(model, kernels, "kernels")
    bad = sorted(set(chosen.values()) - set(SKIP_KERNELS))
    if bad:
        raise UserError(f"unknown kernel variant {bad[0]!r}",
                        f"choose one of: {', '.join(SKIP_KERNELS)}")  # fmt: skip
    return chosen


def _layer_targets(
    model: nn.Module, layer_targets: Mapping[str, Target | str | Mapping] | None
) -> dict[str, Target]:
    if not layer_targets:
        return {}
    gemm = set(gemm_layers(model))
    out = {}
    for name, spec in layer_targets.items():
        if name not in gemm:
            raise UserError(
                f"layer_targets names layer {name!r}, which is not a Conv2d/Linear of the model",
                f"use layer names from model.named_modules(), e.g. {sorted(gemm)[:3]}",
            )
        out[name] = get_target(spec, origin=f"target of layer {name}")
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
    return (isinstance(bn, nn.BatchNorm2d | nn.BatchNorm1d) and bn.track_running_stats
            and bn.running_var is not None)  # fmt: skip


def compile(  # noqa: A001 - the public name the project documents (gpuprune.compile)
    model: nn.Module,
    target: Target | str | None = None,
    backend: str = "auto",
    methods: str | Mapping[str, str] | None = None,
    *,
    inplace: bool = False,
    verbose: bool = False,
    layer_targets: Mapping[str, Target | str | Mapping] | None = None,
    plan: PrunePlan | None = None,
    kernels: str | Mapping[str, str] | None = None,
) -> nn.Module:
    """Compile a pruned model: pruned Conv2d/Linear layers become skip layers, the rest stay dense.

    Which layers are compiled, and with which kernel, comes from the pruning plan
    (``model.gpuprune_plan``, set by :func:`gpuprune.prune` and :func:`gpuprune.load`): each
    planned layer runs the kernel variant its pruning method declares, built for its tiling.
    BatchNorm2d after a conv (BatchNorm1d after a Linear) is folded into it, a ReLU right after
    is fused into the kernel,
    and on the cpu backend a 2x2 stride-2 MaxPool2d after those is pooled in the kernel's store
    (``CompiledLayer.pool_fused``; docs/design/cpu-backend.md).
    A planned layer whose zeros the kernel cannot skip (no all-zero block) stays dense; it, and
    a model with nothing to skip, are named in a warning and in the report's ``notes``.
    Without a plan, layers with at least one all-zero tile are compiled with the tile kernel.

    Args:
        model: a pruned model (masked parametrizations or zeros in the weights), float32; also
            float16 with backend="opencl" or "triton", bfloat16 with "triton" (whose layers
            also follow ``torch.autocast``). Other dtypes are refused (``Backend.dtypes``).
        target: Target, preset name or file; default the plan's target, else (or "detect")
            the detected OpenCL/CUDA device.
        backend: "opencl", "triton", "cpu", "reference", or "auto" (triton on a CUDA/ROCm GPU,
            OpenCL on a GPU OpenCL device, else cpu; the choice is stated in ``notes``).
        methods: an explicit override of the plan: a pruning method per layer name, or one
            for all; each named layer is compiled with that method's kernel variant.
        inplace: modify ``model`` instead of a deep copy.
        verbose: log the per-layer listing at INFO instead of DEBUG (compile never prints).
        layer_targets: a tiling per layer name, overriding the plan's and ``target``.
        plan: use this plan instead of ``model.gpuprune_plan``.
        kernels: like ``methods``, naming the kernel variant ("tile"/"simd") directly, e.g. to
            run a dense model through the kernels its pruned twins use.

    Returns:
        The compiled model in eval mode; ``model.gpuprune_compile`` is its :class:`CompileReport`.
        It is for inference: ``.train()`` raises (train the masked model, then compile again),
        ``torch.jit.script`` is refused with a one-line error.
    """
    check_model(model)  # e.g. compile(result): one line saying to pass the model
    for what, value in (("backend", backend), ("target", target)):
        if value is not None and not isinstance(value, str | Target | Mapping) and not (
            what == "target" and isinstance(value, os.PathLike)
        ):
            raise UserError(f"{what} is a {type(value).__name__}, not a name",
                            f"pass a {what} name, e.g. {what}='cpu'" if what == "backend"
                            else "pass a target name such as 'nvidia' or a Target")  # fmt: skip
    runner, auto_note = resolve_backend(backend)
    notes = list(auto_note)
    plan = plan if plan is not None else getattr(model, "gpuprune_plan", None)
    if plan is not None and not isinstance(plan, PrunePlan):
        raise UserError(f"plan is a {type(plan).__name__}, not a PrunePlan",
                        "pass the plan gpuprune.prune() or gpuprune.load() returned")  # fmt: skip
    tgt = _resolve_target(target, runner, plan)
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    _bake_masks(out)
    _check_dtypes(out, runner)
    chosen = _explicit_kernels(out, methods, kernels)
    explicit = chosen is not None
    if chosen is None and plan is not None:
        chosen = {lay.name: lay.kernel for lay in plan}
    kernels = chosen  # None: no plan, compile what has all-zero tiles
    per_layer = _layer_targets(out, layer_targets)
    if plan is not None and target is None and not explicit:
        # per-layer tilings of the plan (co-design) apply unless the user names a target
        per_layer = {lay.name: lay.tiling for lay in plan if lay.tiling} | per_layer
    chains = find_chains(out)
    modules = dict(out.named_modules())
    compiled = []
    dense: dict[str, str] = dict(unprunable_layers(out))  # {name: why}, listed in module order
    skipped = {sk.name: sk.reason for sk in plan.skipped} if plan is not None else {}
    quiet: set[int] = set()  # notes about layers the caller named explicitly
    projections: dict[str, list[SkipLinear]] = {}  # attention input projections, per q/k/v
    for name, module in gemm_layers(out).items():
        if kernels is not None and name not in kernels:
            dense[name] = skipped.get(name, "not pruned (not in the plan)")
            continue
        variant = kernels[name] if kernels is not None else "tile"
        layer_tgt = per_layer.get(name, tgt)
        reads = _weight_read_by_parent(modules, name, module)
        if reads is not None:
            if kernels is not None:  # pruned or asked for, yet dense: said aloud
                notes.append(f"layer {name} left dense: {reads}")
            dense[name] = reads
            continue
        geometry = ConvGeometry.of(module) if isinstance(module, nn.Conv1d | nn.Conv2d) else None
        if isinstance(module, TransposedConv):  # stride 1 (else left dense above): a Conv2d
            geometry = ConvGeometry.of_transposed(module.module)
        chain = chains.get(name, Chain(name))
        if chain.bn and not _foldable(modules.get(chain.bn)):
            chain = Chain(name)  # BN on batch statistics: neither it nor a ReLU after can fuse
        weight, bias = module.weight.detach(), _bias(module)
        if chain.bn:
            weight, bias = fold_bn(module, modules[chain.bn])
        groups = groups_of(module)
        # packed once, per group (a grouped conv is G GEMMs), for the kernel
        packs = [pack_for(m, layer_tgt, variant) for m in gemm_view(weight).chunk(groups)]
        bm, bk = packs[0].block
        gm_, gk_ = packs[0].shape
        if groups > 1 and (gm_ < bm or gk_ < bk):
            kind = "attention input projection" if isinstance(module, BareWeight) else (
                "depthwise conv" if groups == module.in_channels else "grouped conv")  # fmt: skip
            why = (f"{kind}: each of its {groups} group GEMMs is {gm_}x{gk_}, smaller than "
                   f"one {bm}x{bk} block of the {variant} kernel; run dense")  # fmt: skip
            if explicit or (kernels is not None and name not in skipped):
                notes.append(f"layer {name} left dense: {why}")
            dense[name] = why
            continue
        total = sum(p.grid[0] * p.grid[1] for p in packs)
        skippable = 1.0 - sum(p.nnzb for p in packs) / max(total, 1)
        if skippable == 0.0 and kernels is not None:
            how = plan[name].method if plan is not None and name in plan and not explicit else None
            what = f"pruned with {how}, " if how else ""
            if explicit:  # asked for by name: noted in the report, not warned about
                quiet.add(len(notes))
                notes.append(f"layer {name}: {what}no all-zero {bm}x{bk} block for the {variant} "
                             "kernel to skip; compiled as asked, it runs as dense")  # fmt: skip
            else:
                why = (f"{what}its zeros fill no whole {bm}x{bk} block of the {variant} kernel "
                       f"on {layer_tgt.name}")  # fmt: skip
                notes.append(f"layer {name} left dense: {why}")
                dense[name] = why
                continue
        elif skippable == 0.0:
            dense[name] = f"no all-zero {bm}x{bk} block to skip (and no plan)"
            continue
        relu = chain.relu is not None
        conv1d = isinstance(module, nn.Conv1d)
        # a pool (found after Conv2d only) fuses into one group, on a backend whose store pools
        pool = None
        if chain.pool is not None and runner.fuses_maxpool and groups == 1:
            pool = "ceil" if modules[chain.pool].ceil_mode else "floor"
        if isinstance(module, BareWeight):  # q, k, v: built into the attention below
            biases = bias.detach().chunk(groups) if bias is not None else [None] * groups
            projections[name] = [SkipLinear(p, b, runner, layer_tgt, variant=variant)
                                 for p, b in zip(packs, biases, strict=True)]  # fmt: skip
        elif geometry is None:
            new: nn.Module = SkipLinear(packs[0], bias, runner, layer_tgt, variant=variant,
                                        relu=relu, folded_bn=chain.bn)  # fmt: skip
        elif groups == 1:
            new = SkipConv2d(packs[0], bias, runner, layer_tgt, variant=variant,
                             geometry=geometry, relu=relu, conv1d=conv1d, pool=pool)  # fmt: skip
        else:  # one skip-kernel call per group, on that group's input channels
            biases = bias.detach().chunk(groups) if bias is not None else [None] * groups
            parts = [SkipConv2d(p, b, runner, layer_tgt, variant=variant,
                                geometry=geometry.kernel(), relu=relu)
                     for p, b in zip(packs, biases, strict=True)]  # fmt: skip
            new = SkipGroupedConv2d(parts, geometry, conv1d=conv1d)
        if not isinstance(module, BareWeight):
            _replace(out, name, new)
        for extra in (chain.bn, chain.relu, chain.pool if pool else None):
            if extra:
                _replace(out, extra, nn.Identity())
        compiled.append(CompiledLayer(
            name, "conv" if geometry is not None else "linear", (gm_ * groups, gk_), variant,
            packs[0].block, layer_tgt.name, skippable, chain.bn is not None, relu, bool(pool),
        ))  # fmt: skip
    _swap_attentions(out, modules, projections)
    pools = _swap_max_pools(out, runner)
    if pools:  # not a warning: the same result, faster
        quiet.add(len(notes))
        notes.append(f"max pool{'s' if len(pools) > 1 else ''} {', '.join(pools)}: the "
                     f"{runner.name} backend's pool kernel")  # fmt: skip
    blocks = fuse_residual_blocks(out, runner, lambda block, conv: _fuse_relu(
        out, block, conv, runner, compiled))
    if blocks:  # not a warning: the same result, fewer passes over each block's output
        quiet.add(len(notes))
        notes.append(f"residual block{'s' if len(blocks) > 1 else ''} {', '.join(blocks)}: the "
                     f"shortcut's add and the ReLU after it in the last conv's store")
    block_runs: list[str] = []
    chained = chain_convolutions(out, runner, block_runs)
    if chained:  # not a warning either: the same result, one call per run
        quiet.add(len(notes))
        notes.append(f"convolutions {', '.join(chained)}: one {runner.name} backend call per run")
    if block_runs:
        quiet.add(len(notes))
        notes.append(f"residual blocks {', '.join(block_runs)}: one {runner.name} backend call "
                     "per run")
    fast = sorted(lay.name for lay in compiled if _in_encoder_layer(modules, lay.name))
    if fast:
        notes.append(f"layers {', '.join(fast)} run the skip kernels off PyTorch's fused fast path "
                     "only: nn.TransformerEncoderLayer in eval without grad takes their dense "
                     ".weight (and self_attn.in_proj_weight) instead")  # fmt: skip
    if not compiled:
        notes.append("no layer compiled: no Conv/Linear layer the skip kernels run has a block "
                     "they can skip, so the model runs dense")  # fmt: skip
    for i, note in enumerate(notes):
        if i >= len(auto_note) and i not in quiet:
            warnings.warn(note, stacklevel=2)
    order = {n: i for i, n in enumerate(modules)}  # "<module>.<param>" sorts at its module
    listed = sorted(dense, key=lambda n: order.get(n, order.get(n.rpartition(".")[0], 0)))
    left = tuple(SkippedLayer(n, dense[n]) for n in listed)
    report = CompileReport(runner.name, runner.device, tgt.name, tuple(compiled), left,
                           tuple(notes))  # fmt: skip
    out.gpuprune_compile = report
    out.eval()
    log.log(logging.INFO if verbose else logging.DEBUG, "%s", report.summary())
    return out


def _fuse_relu(model: nn.Module, block: str, conv: str, runner: Backend,
               compiled: list[CompiledLayer]) -> None:  # fmt: skip
    """Rebuild ``block.conv`` with the ReLU that follows it in its kernel's store (a residual
    block's inner conv, whose ReLU module is shared) and say so in its ``compiled`` entry. The
    block's own forward applies that ReLU again, which changes nothing."""
    parent = model.get_submodule(block) if block else model
    old = getattr(parent, conv)
    new = SkipConv2d(old.packed, old.bias, runner, old.target,
                     variant=old.variant, geometry=old.geometry, relu=True, conv1d=old.conv1d,
                     pool=old.pool)  # fmt: skip
    setattr(parent, conv, new)
    name = f"{block}.{conv}" if block else conv
    for i, lay in enumerate(compiled):
        if lay.name == name:
            compiled[i] = dataclasses.replace(lay, relu_fused=True)


def _bias(module: nn.Module | BareWeight) -> torch.Tensor | None:
    """The layer's bias; a bare attention weight's slice of ``in_proj_bias``."""
    if isinstance(module, TransposedConv):
        return module.module.bias
    if not isinstance(module, BareWeight):
        return module.bias
    bias = module.owner.in_proj_bias
    if bias is None or module.pname == "in_proj_weight":
        return bias
    return bias.chunk(3)[("q_proj_weight", "k_proj_weight", "v_proj_weight").index(module.pname)]


def _weight_read_by_parent(modules: Mapping[str, nn.Module], name: str,
                           module: nn.Module | BareWeight) -> str | None:  # fmt: skip
    """Why layer ``name`` cannot become a skip layer (its parent reads its weight itself, or its
    class runs its own forward, e.g. timm's Conv2dSame or StdConv2d), or None."""
    parent, _, child = name.rpartition(".")
    attention = modules.get(parent)
    if isinstance(module, BareWeight) or (
        isinstance(attention, nn.MultiheadAttention) and child == "out_proj"
    ):
        why = unsupported(attention) if parent else (
            "the model is a bare nn.MultiheadAttention, which compile cannot replace")  # fmt: skip
        return None if why is None else f"{why}; left dense (its mask still applies)"
    if isinstance(module, TransposedConv):
        module = module.module
        try:
            ConvGeometry.of_transposed(module)
        except UnsupportedLayerError as err:
            return err.problem
    base = next(b for b in (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
                if isinstance(module, b))  # fmt: skip
    if type(module).forward is not base.forward:
        return (f"{type(module).__name__} has its own forward (its weight or input may be "
                "transformed there), which a skip kernel would not run; left dense")  # fmt: skip
    return None


def _dense_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A frozen nn.Linear holding ``weight`` and ``bias`` (an uncompiled attention projection)."""
    lin = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0],
                                   bias=bias is not None, device=weight.device,
                                   dtype=weight.dtype)  # fmt: skip
    lin.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return lin


def _swap_attentions(model: nn.Module, modules: Mapping[str, nn.Module],
                     projections: Mapping[str, list[SkipLinear]]) -> None:  # fmt: skip
    """Replace each nn.MultiheadAttention with a compiled input projection or out_proj by a
    SkipMultiheadAttention running them (dense linears for the parts left dense)."""
    for name, mha in modules.items():
        if not name or not isinstance(mha, nn.MultiheadAttention) or unsupported(mha) is not None:
            continue  # left dense by _weight_read_by_parent, with the reason
        own = {n.rpartition(".")[2]: parts for n, parts in projections.items()
               if n.rpartition(".")[0] == name}  # fmt: skip
        if not own and not isinstance(mha.out_proj, SkipLinear):
            continue  # nothing of it runs a skip kernel: the module stays as it is
        biases = [None] * 3 if mha.in_proj_bias is None else list(mha.in_proj_bias.chunk(3))
        if mha._qkv_same_embed_dim:
            parts = own.get("in_proj_weight") or [
                _dense_linear(w, b) for w, b in zip(mha.in_proj_weight.chunk(3), biases,
                                                    strict=True)]  # fmt: skip
        else:
            pnames = ("q_proj_weight", "k_proj_weight", "v_proj_weight")
            parts = [own[p][0] if p in own else _dense_linear(getattr(mha, p), b)
                     for p, b in zip(pnames, biases, strict=True)]  # fmt: skip
        _replace(model, name, SkipMultiheadAttention.from_module(mha, *parts, mha.out_proj))


def _in_encoder_layer(modules: Mapping[str, nn.Module], name: str) -> bool:
    """Whether layer ``name`` lies inside an nn.TransformerEncoderLayer (whose fused fast path
    reads the dense weights instead of running the layers)."""
    parts = name.split(".")
    return any(isinstance(modules.get(".".join(parts[:i])), nn.TransformerEncoderLayer)
               for i in range(1, len(parts)))  # fmt: skip


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
