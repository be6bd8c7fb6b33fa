"""The pruning API: :class:`Pruner` (for training loops), :func:`prune` (one shot) and a report."""

from __future__ import annotations

import inspect
import io
import itertools
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from gpuprune.arch import Target, get_target
from gpuprune.errors import UserError
from gpuprune.gemm import BareWeight, TransposedConv, block_grid, block_reduce, gemm_view
from gpuprune.geometry import ConvGeometry
from gpuprune.plan import LayerPlan, PrunePlan, SkippedLayer
from gpuprune.progress import progress_bar
from gpuprune.prune.allocation import allocate, check_sparsity, get_allocation
from gpuprune.prune.importance import IMPORTANCES, Batch, LossFn, mean_gradients
from gpuprune.prune.layers import (
    LayerSpec,
    excluded_reasons,
    gemm_layers,
    layer_specs,
    select_layers,
    unprunable_layers,
)
from gpuprune.prune.masks import get_mask, mask_buffer, masked_weight, set_mask, stored_layout
from gpuprune.prune.methods import PruneMethod, get_method
from gpuprune.prune.permute import PermuteResult, reorder
from gpuprune.prune.result import LayerResult, PruneResult

log = logging.getLogger(__name__)


def check_model(model: Any, what: str = "model") -> nn.Module:
    """``model`` if it is an ``nn.Module``, else a one-line UserError naming the slip."""
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, PruneResult):
        raise UserError(f"{what} is a PruneResult, not the model",
                        "pass the model; the result is what prune returned")  # fmt: skip
    raise UserError(f"{what} is a {type(model).__name__}, not a torch.nn.Module",
                    "pass the model itself (an nn.Module)")  # fmt: skip


def sparsity_arg(sparsity: float | None, amount: float | None, default: float | None = None
                 ) -> float:  # fmt: skip
    """The sparsity given as ``sparsity=`` or torch's name ``amount=`` (one of them)."""
    if sparsity is not None and amount is not None:
        raise UserError("both sparsity= and amount= given (amount is torch's name for it)",
                        "pass one of them")  # fmt: skip
    value = sparsity if sparsity is not None else amount
    if value is None:
        if default is None:
            raise UserError("no sparsity given", "pass sparsity=0.75 (or amount=0.75)")
        value = default
    return check_sparsity(value)


class Pruner:
    """Masks a model's Conv2d/Linear weights with one method; call :meth:`apply` as often as needed.

    Args:
        model: the model (pruned in place through weight parametrizations).
        method: a name from ``METHODS`` or a :class:`PruneMethod` instance.
        target: a Target, preset name or target file; needed by ``tile``/``simd``/``simd-balanced``.
        importance: a name from ``IMPORTANCES`` (``magnitude``, ``l2``, ``taylor``, ``random``).
        allocation: ``uniform``, ``global``, ``sensitivity`` or a ``{layer: sparsity}`` mapping.
        exclude: layer names or glob patterns left dense.
        exclude_first_last: leave the first and last GEMM layers dense (the usual practice: they
            are small and sensitive).
        skip_small: leave layers smaller than one block dense (listed in ``result.skipped`` and
            logged); False raises on them instead.
        input_size: one sample's shape for the dummy pass that measures FLOPs; default
            (C_in, 32, 32) for CNNs. ``example_inputs`` is better.
        example_inputs: a real input (a tensor, or a tuple of the model's positional arguments,
            as for ``torch.export``); the pass that measures each layer's FLOPs runs on it, so
            FLOPs are right at any resolution and for any input kind.
        method_options: constructor options of the method, e.g. ``{"n": 2, "m": 4}`` for ``nm``.
        progress: show a progress bar during sensitivity analysis.
        reconstruct: after choosing the masks, re-fit each layer's kept weights to its dense
            outputs on the calibration ``data`` (least squares, layer by layer; implied by
            ``importance="obs"``, which also chooses the blocks by output error).
    """

    def __init__(
        self,
        model: nn.Module,
        method: str | PruneMethod = "tile",
        target: str | Target | None = None,
        importance: str = "magnitude",
        allocation: str | Mapping[str, float] = "uniform",
        exclude: Iterable[str] = (),
        exclude_first_last: bool = True,
        skip_small: bool = True,
        input_size: tuple[int, ...] | None = None,
        method_options: Mapping[str, Any] | None = None,
        progress: bool = False,
        allocation_options: Mapping[str, Any] | None = None,
        reconstruct: bool = False,
        example_inputs: Any = None,
    ) -> None:
        self.model = check_model(model)
        self.reconstruct = reconstruct
        if not isinstance(method, str | PruneMethod):
            raise UserError(f"method is a {type(method).__name__}, not a name",
                            "pass a method name such as 'tile' (see gpuprune.METHODS)")  # fmt: skip
        self.allocation_options = dict(allocation_options or {})  # e.g. latency_budget=0.4
        self.method = get_method(method, **dict(method_options or {}))
        self.target = get_target(target) if target is not None else None
        self.importance_name = importance
        self.importance = IMPORTANCES.get(importance)
        if isinstance(allocation, str):
            get_allocation(allocation)  # fail early on a typo
        self.allocation = allocation
        self.progress = progress
        if self.method.needs_target and self.target is None:
            raise UserError(
                f"method {self.method.name!r} derives its blocks from a GPU target; none given",
                "pass target='nvidia' (or --target; see `gpuprune targets`)",
            )
        if isinstance(exclude, str):
            exclude = [exclude]
        layers = select_layers(model, exclude, exclude_first_last)
        self.specs: dict[str, LayerSpec] = {}
        # every weight layer left dense, with its reason (nothing silent), in module order
        why = unprunable_layers(model) | excluded_reasons(model, layers, exclude_first_last)
        specs = layer_specs(model, layers, self.target, input_size, example_inputs)
        for name, spec in specs.items():
            try:
                self.method.check(spec.group_spec())  # a grouped conv is masked per group
            except UserError as err:
                if not skip_small:
                    raise
                why[name] = _too_small(spec, err)
                continue
            self.specs[name] = spec
        self.skipped: list[SkippedLayer] = [
            SkippedLayer(n, why[n]) for n in _module_order(model, why)
        ]
        if self.skipped:  # a library call never prints; the CLI prints result.skipped
            log.info("left dense: %s", "; ".join(f"{s.name} ({s.reason})" for s in self.skipped))
        if not self.specs:
            raise UserError(
                "no layer is large enough for one block of this method and target",
                "choose a target with smaller blocks or a wider model",
            )
        self._requested = 0.0
        self._alloc: dict[str, float] = dict.fromkeys(self.specs, 0.0)
        self.permutation: PermuteResult | None = None  # what permute() did, if it ran

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Current boolean keep-masks, weight-shaped, by layer name (only layers masked so far)."""
        out = {}
        for name, spec in self.specs.items():
            mask = get_mask(spec.module)
            if mask is not None:
                out[name] = mask
        return out

    def apply(
        self,
        sparsity: float | None = None,
        data: Iterable[Batch] | None = None,
        loss_fn: LossFn | None = None,
        max_batches: int = 16,
        *,
        amount: float | None = None,
    ) -> PruneResult:
        """Recompute every mask for this overall sparsity and apply it.

        Args:
            sparsity: fraction of the pruned layers' weights to zero, in [0, 1) (``amount``,
                torch's name for it, is accepted too).
            data: ``(x, y)`` batches; read only by ``taylor`` importance (gradients),
                ``sensitivity`` allocation (held-out loss) and ``obs`` importance or
                ``reconstruct`` (calibration inputs; labels unused), at most ``max_batches``.
            loss_fn: ``loss_fn(output, y)``; cross-entropy by default.
            max_batches: cap on batches taken from ``data`` (a whole loader is fine).
        """
        s = sparsity_arg(sparsity, amount)
        obs = self.importance.reconstructs or self.reconstruct
        wants_data = self.importance.needs_grad or self.allocation == "sensitivity" or obs
        batches = (
            list(itertools.islice(data, max_batches)) if wants_data and data is not None else []
        )
        loss_fn = loss_fn or F.cross_entropy
        for spec in self.specs.values():
            if get_mask(spec.module) is None:
                set_mask(spec.module, torch.ones_like(spec.module.weight, dtype=torch.bool))
        imps = self.importances(batches, loss_fn)
        alloc = allocate(
            self.allocation,
            s,
            self.specs,
            importances=imps,
            method=self.method,
            model=self.model,
            evaluate=self._evaluator(batches, loss_fn) if batches else None,
            progress=self._progress_callback() if self.progress else None,
            **self.allocation_options,
        )
        if obs:
            self._reconstruct(alloc, batches, imps)
        else:
            for name, spec in self.specs.items():
                set_mask(spec.module, self._mask(imps[name], alloc[name], spec))
        self._requested, self._alloc = s, alloc
        result = self.result()
        # The plan travels with the model: compile(model) reads each layer's kernel from it.
        self.model.gpuprune_plan = result.plan
        return result

    def permute(
        self,
        sparsity: float | None = None,
        data: Iterable[Batch] | None = None,
        loss_fn: LossFn | None = None,
        max_batches: int = 16,
        *,
        passes: int = 6,
        seed: int = 0,
    ) -> PermuteResult:
        """Reorder channels so this method's blocks keep more importance at ``sparsity``.

        Call it once before the first :meth:`apply`, with the final sparsity. Each output
        channel that feeds only the next layer moves together with that layer's input channel
        and its batch norm, so the model computes the same function (to float rounding); only
        which weights share a block changes (:mod:`gpuprune.prune.permute`). The result names
        each link reordered, the fraction of importance kept before and after, and every layer
        whose channels stayed with the reason (``result.fixed``). ``data`` is read only by
        gradient importances (``taylor``).
        """
        s = sparsity_arg(sparsity, None)
        batches = (list(itertools.islice(data, max_batches))
                   if self.importance.needs_grad and data is not None else [])  # fmt: skip
        imps = self.importances(batches, loss_fn)
        self.permutation = reorder(self.model, self.specs, self.method, imps, s, self._mask,
                                   passes=passes, seed=seed)  # fmt: skip
        return self.permutation

    def _mask(self, importance: torch.Tensor, sparsity: float, spec: LayerSpec) -> torch.Tensor:
        """The method's [M, K] keep-mask; a grouped conv's groups are masked one by one."""
        if spec.groups == 1:
            return self.method.mask(importance, sparsity, spec)
        one = spec.group_spec()
        rows = one.shape[0]
        return torch.cat([
            self.method.mask(importance[g * rows:(g + 1) * rows], sparsity, one)
            for g in range(spec.groups)
        ])  # fmt: skip

    def importances(
        self, batches: list[Batch] | None = None, loss_fn: LossFn | None = None
    ) -> dict[str, torch.Tensor]:
        """Per layer, the importance of every weight in its [M, K] GEMM view (float, on CPU).

        ``batches`` are needed only by gradient-based importances (``taylor``).
        """
        modules = {n: spec.module for n, spec in self.specs.items()}
        grads = (
            mean_gradients(self.model, modules, list(batches or []), loss_fn or F.cross_entropy)
            if self.importance.needs_grad
            else {}
        )
        imps = {}
        for name, mod in modules.items():
            w = gemm_view(masked_weight(mod)).detach()
            imps[name] = self.importance.score(w, grads.get(name)).detach().float().cpu()
            if not _all_finite(imps[name]):  # NaN ranks anywhere: a wrong mask
                raise UserError(
                    f"layer {name} has NaN or infinite weights (or gradients)",
                    "prune a model whose training did not diverge (lower the learning rate)",
                )
        return imps

    def result(self) -> PruneResult:
        """Per-layer sparsity, block counts and FLOPs of the current masks, and the plan."""
        layers, plans = [], []
        for name, spec in self.specs.items():
            mask = get_mask(spec.module)
            mask = (
                torch.ones(spec.shape, dtype=torch.bool) if mask is None else gemm_view(mask).cpu()
            )
            block = tuple(self.method.unit(spec.group_spec()))
            kept = int(torch.count_nonzero(mask))
            groups = mask.reshape(spec.groups, *spec.group_shape)  # blocks never span groups
            layers.append(
                LayerResult(
                    name=name,
                    shape=spec.shape,
                    block=tuple(block),
                    requested=float(self._alloc.get(name, 0.0)),
                    sparsity=1.0 - kept / spec.numel,
                    blocks_total=spec.groups * math.prod(block_grid(spec.group_shape, block)),
                    blocks_kept=kept
                    if block == (1, 1)
                    else sum(
                        int(torch.count_nonzero(block_reduce(g, block, "any"))) for g in groups
                    ),
                    flops_dense=spec.dense_flops,
                    flops_kept=2 * kept * spec.out_positions,
                )
            )
            plans.append(self._layer_plan(spec, layers[-1]))
        alloc = self.allocation if isinstance(self.allocation, str) else "explicit"
        plan = PrunePlan(self.method.name, self.target, tuple(plans), self._requested,
                         tuple(self.skipped))  # fmt: skip
        return PruneResult(
            method=self.method.name,
            target=self.target,
            importance=self.importance_name,
            allocation=alloc,
            requested=self._requested,
            layers=tuple(layers),
            skipped=tuple(self.skipped),
            plan=plan,
            permutation=self.permutation.summary() if self.permutation else None,
        )

    def _layer_plan(self, spec: LayerSpec, res: LayerResult) -> LayerPlan:
        module = spec.module
        conv = isinstance(module, nn.Conv1d | nn.Conv2d | TransposedConv)
        # a transposed conv has no plan geometry: compile derives its Conv2d from the layer
        geometry = ConvGeometry.of(module) if isinstance(module, nn.Conv1d | nn.Conv2d) else None
        tiling = spec.target if spec.target is not None and spec.target != self.target else None
        return LayerPlan(
            name=spec.name, kind="conv" if conv else "linear",
            gemm=spec.shape, method=self.method.name, block=res.block,
            kernel=self.method.kernel, requested=res.requested, sparsity=res.sparsity,
            tiling=tiling, geometry=geometry,
        )  # fmt: skip

    def _reconstruct(self, alloc: Mapping[str, float], batches: list[Batch],
                     imps: Mapping[str, torch.Tensor]) -> None:  # fmt: skip
        from gpuprune.prune.obs import calibration_inputs, reconstruct

        device = next(self.model.parameters()).device
        masks = None
        if not self.importance.reconstructs:  # the importance picks the blocks; refit only
            masks = {n: self._mask(imps[n], alloc[n], s) for n, s in self.specs.items()}
        reconstruct(self.model, self.specs, self.method, alloc,
                    calibration_inputs(batches, device), masks=masks)  # fmt: skip

    # ---- sensitivity helpers -----------------------------------------------------------------
    def _evaluator(self, batches: list[Batch], loss_fn: LossFn):
        device = next(self.model.parameters()).device

        def evaluate(name: str | None, mask: torch.Tensor | None) -> float:
            buf = saved = None
            if name is not None:
                layer = self.specs[name].module
                buf = mask_buffer(layer)
                saved = buf.clone()
                trial = stored_layout(layer, mask)
                buf &= trial.reshape(buf.shape).to(buf.device)  # on top of the current mask
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    total = sum(
                        float(loss_fn(self.model(x.to(device)), y.to(device))) for x, y in batches
                    )
            finally:
                self.model.train(was_training)
                if buf is not None:
                    buf.copy_(saved)
            return total / len(batches)

        return evaluate

    def _progress_callback(self):
        bar = progress_bar("sensitivity {task.description}", transient=True)
        task = bar.add_task("", total=None)

        def tick(done: int, total: int, layer: str) -> None:
            if done == 1:
                bar.start()
            bar.update(task, completed=done, total=total, description=layer)
            if done >= total:
                bar.stop()

        return tick


def _all_finite(x: torch.Tensor) -> bool:
    """No NaN or inf in ``x``; a finite sum proves it in one pass without a bool copy (an
    inf or NaN anywhere makes the sum inf or NaN), else (overflow, or a real inf) look closer."""
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def _module_order(model: nn.Module, names: Iterable[str]) -> list[str]:
    """``names`` in module order ("<module>.<param>" placed at its module)."""
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(names, key=lambda n: order.get(n, order.get(n.rpartition(".")[0], 0)))


def _too_small(spec: LayerSpec, err: UserError) -> str:
    """Why a layer the method cannot block stays dense (a depthwise conv said as such)."""
    m, k = spec.group_shape
    if spec.groups > 1 and spec.groups == getattr(spec.module, "in_channels", 0):
        return f"depthwise conv: each of its {spec.groups} group GEMMs is {m}x{k}, no block to skip"
    what = f"each of its {spec.groups} group GEMMs" if spec.groups > 1 else "its GEMM"
    return f"{what} ({m}x{k}) is smaller than one block: {err.problem}"


def prune(
    model: nn.Module,
    method: str | PruneMethod = "tile",
    sparsity: float | None = None,
    target: str | Target | None = None,
    importance: str = "magnitude",
    allocation: str | Mapping[str, float] = "uniform",
    exclude: Iterable[str] = (),
    exclude_first_last: bool = True,
    data: Iterable[Batch] | None = None,
    loss_fn: LossFn | None = None,
    *,
    amount: float | None = None,
    permute: bool = False,
    **options: Any,
) -> PruneResult:
    """Prune ``model`` in place once; ``options`` go to :class:`Pruner` (``skip_small``,
    ``example_inputs``...). ``sparsity`` defaults to 0.5; ``amount`` is torch's name for it.
    ``permute=True`` reorders channels first (:meth:`Pruner.permute`; ``result.permutation``).

    Example:
        >>> result = prune(model, method="tile", sparsity=0.75, target="nvidia")  # doctest: +SKIP
        >>> print(result.sparsity, result.flops_kept)  # doctest: +SKIP
    """
    s = sparsity_arg(sparsity, amount, default=0.5)
    known = set(inspect.signature(Pruner).parameters)
    unknown = sorted(set(options) - known)
    if unknown:  # a misspelt option: named in one line, not a TypeError
        raise UserError(f"prune() got an unknown argument {unknown[0]!r}",
                        "see help(gpuprune.prune) and help(gpuprune.Pruner)")  # fmt: skip
    pruner = Pruner(
        model, method, target, importance, allocation, exclude, exclude_first_last, **options
    )
    if permute:
        pruner.permute(s, data=data, loss_fn=loss_fn)
    return pruner.apply(s, data=data, loss_fn=loss_fn)


def sparsity_report(model: nn.Module) -> str:
    """A text table of every weight layer: shape, non-zeros, sparsity, masked or not, and why not.

    Layers gpuprune does not prune (Conv3d, Bilinear...) are listed too, so the total is the
    model's total; MultiheadAttention's input projection is a row of its own.
    """
    table = Table(title="sparsity by layer")
    cols = ("layer", "type", "GEMM MxK", "non-zero", "sparsity", "masked", "left dense because")
    for col in cols:
        table.add_column(col)
    plan = getattr(model, "gpuprune_plan", None)
    why = {s.name: s.reason for s in plan.skipped} if isinstance(plan, PrunePlan) else {}
    why = unprunable_layers(model) | why
    layers = gemm_layers(model)
    weights = {n: gemm_view(m.weight) for n, m in layers.items()}
    modules = dict(model.named_modules())
    for name in why.keys() - weights.keys():
        owner, _, pname = name.rpartition(".")
        w = getattr(modules[name], "weight", None) if name in modules else getattr(
            modules.get(owner), pname, None)  # fmt: skip
        if isinstance(w, torch.Tensor):
            weights[name] = w.detach().reshape(w.shape[0], -1)
    total = nonzero = 0
    for name in _module_order(model, weights):
        w = weights[name]
        nz = int(torch.count_nonzero(w))
        total, nonzero = total + w.numel(), nonzero + nz
        mod = layers.get(name, modules.get(name))
        masked = "yes" if mod is not None and get_mask(mod) is not None else "no"
        kind = name.rpartition(".")[2] if mod is None or isinstance(mod, BareWeight) else type(
            getattr(mod, "module", mod)).__name__  # fmt: skip
        table.add_row(
            name,
            kind,
            f"{w.shape[0]}x{w.shape[1]}",
            f"{nz}/{w.numel()}",
            f"{1 - nz / w.numel():.3f}",
            masked,
            why.get(name, ""),
        )
    table.add_row(
        "total", "", "", f"{nonzero}/{total}", f"{1 - nonzero / max(total, 1):.3f}", "", ""
    )
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None).print(table)
    return buf.getvalue()
