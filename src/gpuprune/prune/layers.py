"""Which layers a pruner touches, and what it knows about each (GEMM shape, sizes, target)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from gpuprune.arch import Target
from gpuprune.errors import UserError
from gpuprune.gemm import (
    WEIGHT_LAYERS,
    BareWeight,
    TransposedConv,
    bare_weights,
    gemm_shape,
    groups_of,
    is_gemm_layer,
)


@dataclass(frozen=True)
class LayerSpec:
    """One prunable layer as the methods see it."""

    name: str  # qualified module name, as in model.named_modules(); "<module>.<param>" if bare
    shape: tuple[int, int]  # (M, K) of the GEMM view
    kernel_area: int = 1  # kh * kw: K columns per input channel (1 for Linear)
    target: Target | None = None  # the GPU whose blocks tile/simd methods use
    out_positions: int = 1  # N per sample: H_out * W_out for a conv, 1 for a Linear
    in_hw: tuple[int, int] | None = None  # input spatial size (conv only), for latency probes
    module: nn.Module | BareWeight | TransposedConv | None = field(default=None, compare=False,
                                                                  repr=False)  # fmt: skip
    groups: int = 1  # a grouped conv: `shape` stacks `groups` GEMMs of group_shape along M

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def group_shape(self) -> tuple[int, int]:
        """(M / groups, K): one group's GEMM, the matrix a method masks."""
        return (self.shape[0] // self.groups, self.shape[1])

    def group_spec(self) -> LayerSpec:
        """This layer as one of its groups (itself when groups == 1)."""
        return self if self.groups == 1 else replace(self, shape=self.group_shape, groups=1)

    @property
    def dense_flops(self) -> int:
        """Multiply-adds x 2 of the layer for one sample."""
        return 2 * self.numel * self.out_positions


def gemm_layers(model: nn.Module) -> dict[str, nn.Module | BareWeight | TransposedConv]:
    """Every Conv1d, Conv2d, ConvTranspose2d (as its :class:`TransposedConv` view) and Linear
    layer, and every bare weight (an nn.MultiheadAttention's input projection, named
    ``<attention>.in_proj_weight``), in module order."""
    out: dict[str, nn.Module | BareWeight | TransposedConv] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ConvTranspose2d):
            out[name] = TransposedConv(mod)
        elif is_gemm_layer(mod):
            out[name] = mod
        out.update(bare_weights(mod, name))
    return out


def unprunable_layers(model: nn.Module) -> dict[str, str]:
    """{name: reason} for every weight layer gpuprune cannot prune, in module order.

    ConvTranspose1d/3d, Conv3d and Bilinear stay dense; naming them keeps a report's total the
    model's total.
    """
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, WEIGHT_LAYERS) and not is_gemm_layer(mod) and not isinstance(
            mod, nn.MultiheadAttention
        ):
            out[name] = (
                f"{type(mod).__name__}: no GEMM view the skip kernels run "
                "(Conv1d, Conv2d and Linear are pruned); left dense"
            )
    return out


def excluded_reasons(model: nn.Module, kept: Iterable[str], exclude_first_last: bool
                     ) -> dict[str, str]:  # fmt: skip
    """{name: why} for the GEMM layers :func:`select_layers` left out of ``kept``."""
    names, kept = list(gemm_layers(model)), set(kept)
    ends = {names[0], names[-1]} if exclude_first_last and names else set()
    return {
        n: "first or last layer, left dense (exclude_first_last=True)" if n in ends
        else "excluded by the exclude= patterns"
        for n in names if n not in kept
    }  # fmt: skip


def select_layers(
    model: nn.Module, exclude: Iterable[str] = (), exclude_first_last: bool = True
) -> dict[str, nn.Module]:
    """The layers to prune: GEMM layers minus ``exclude`` (names or glob patterns).

    Raises:
        UserError: a pattern matches no layer, or nothing is left to prune.
    """
    layers = gemm_layers(model)
    names = list(layers)
    if not names:
        raise UserError("the model has no Conv2d or Linear layer to prune", "pass a CNN model")
    drop: set[str] = set()
    for pattern in exclude:
        hit = fnmatch.filter(names, pattern)
        if not hit:
            raise UserError(
                f"exclude pattern {pattern!r} matches no prunable layer",
                f"use a layer name such as {', '.join(names[:4])}",
            )
        drop.update(hit)
    if exclude_first_last:
        drop.update({names[0], names[-1]})
    kept = {n: m for n, m in layers.items() if n not in drop}
    if not kept:
        raise UserError("every prunable layer is excluded", "exclude fewer layers")
    return kept


def _infer_input(model: nn.Module) -> tuple[int, ...]:
    first = next(m for m in model.modules() if is_gemm_layer(m))
    if isinstance(first, nn.Conv2d | nn.ConvTranspose2d):
        return (first.in_channels, 32, 32)  # CIFAR-sized by default
    if isinstance(first, nn.Conv1d):
        return (first.in_channels, 32)
    return (first.in_features,)


def _input_hint(model: nn.Module) -> str:
    """How to describe the model's input, for the first GEMM layer's kind."""
    first = next((m for m in model.modules() if is_gemm_layer(m) or isinstance(m, nn.Conv1d)),
                 None)  # fmt: skip
    shape = {nn.Conv2d: "(C, H, W)", nn.Conv1d: "(C, L)"}.get(type(first), "one sample's shape")
    return f"pass example_inputs=(x,) with a real input batch, or input_size={shape}"


def example_args(example_inputs: Any) -> tuple[Any, ...]:
    """``example_inputs`` as the positional arguments of ``model(*args)`` (like torch.export)."""
    return tuple(example_inputs) if isinstance(example_inputs, tuple | list) else (example_inputs,)


def measure_positions(
    model: nn.Module, names: Iterable[str], input_size: tuple[int, ...] | None = None,
    example_inputs: Any = None,
) -> dict[str, tuple[int, tuple[int, int] | None]]:
    """Run one forward pass and record (N per sample, input H x W) for each named layer.

    The pass runs on ``example_inputs`` (a tensor or a tuple of ``model``'s positional
    arguments) when given, else on zeros of shape ``(1, *input_size)`` (default inferred).
    """
    wanted = set(names)
    size = None
    if example_inputs is None:
        size = tuple(input_size) if input_size else _infer_input(model)
    found: dict[str, tuple[int, tuple[int, int] | None]] = {}
    hooks = []
    for name, mod in model.named_modules():
        for bare in wanted & set(bare_weights(mod, name)):  # N per sample: the query's length

            def attention_hook(mod, args, kwargs, out, name=bare):
                query = args[0] if args else kwargs["query"]
                seq = 1 if query.dim() == 3 and mod.batch_first else 0  # [L, E] unbatched
                found[name] = (int(query.shape[seq]), None)

            hooks.append(mod.register_forward_hook(attention_hook, with_kwargs=True))
        if name in wanted:

            def hook(mod, inputs, out, name=name):
                x = inputs[0]
                if isinstance(mod, nn.Conv2d):
                    found[name] = (int(out.shape[-1] * out.shape[-2]), tuple(x.shape[-2:]))
                elif isinstance(mod, nn.ConvTranspose2d):  # its work: every input position
                    found[name] = (int(x.shape[-1] * x.shape[-2]), tuple(x.shape[-2:]))
                elif isinstance(mod, nn.Conv1d):  # a conv with H = 1
                    found[name] = (int(out.shape[-1]), (1, int(x.shape[-1])))
                else:
                    found[name] = (int(out[0].numel() // out.shape[-1]), None)

            hooks.append(mod.register_forward_hook(hook))
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if size is None:
                model(*example_args(example_inputs))
            else:
                model(torch.zeros((1, *size), device=param.device, dtype=param.dtype))
    except Exception as err:  # the model rejects our guess of its input
        what = f"input size {size}" if size is not None else "example_inputs"
        raise UserError(
            f"a forward pass with {what} failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:80] if str(err) else ''})",
            _input_hint(model),
        ) from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found


def layer_specs(
    model: nn.Module,
    layers: dict[str, nn.Module],
    target: Target | None,
    input_size: tuple[int, ...] | None = None,
    example_inputs: Any = None,
) -> dict[str, LayerSpec]:
    """Build a :class:`LayerSpec` for each layer (one forward pass measures N)."""
    sizes = measure_positions(model, layers, input_size, example_inputs)
    specs = {}
    for name, mod in layers.items():
        n, hw = sizes.get(name, (1, None))  # a layer the forward pass never reached: FLOPs per N
        conv = isinstance(mod, nn.Conv1d | nn.Conv2d | TransposedConv)
        area = int(mod.weight[0, 0].numel()) if conv else 1
        specs[name] = LayerSpec(name, gemm_shape(mod), area, target, n, hw, mod, groups_of(mod))
    return specs
