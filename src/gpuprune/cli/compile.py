"""`gpuprune compile`: compile a pruned-model file, check it against the masked model, time it."""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import click
import torch
from torch import Tensor, nn

from gpuprune.cli.output import console, print_json, print_table
from gpuprune.errors import UserError
from gpuprune.nn import SkipConv2d, SkipGroupedConv2d, SkipLinear, compile, resolve_backend

REL_TOL = 1e-4  # float32: the kernels accumulate in another order than PyTorch


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first call uploads the input shape's tables
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _dense_twin(layer: nn.Module, backend) -> Callable[[Tensor], Tensor]:
    """The same backend's dense-variant kernel for a compiled layer (every block walked)."""
    target, packed = layer.target, layer.packed  # the dense variant walks every block of it
    if isinstance(layer, SkipLinear):
        return backend.linear(packed, layer.bias, target, variant="dense", relu=layer.relu)
    return backend.conv2d(packed, layer.bias, target, variant="dense", geometry=layer.geometry,
                          relu=layer.relu)  # fmt: skip


def _first_channels(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    return first.in_channels if isinstance(first, nn.Conv2d) else first.in_features


# an attention's bare input-projection weight -> the compiled projection layers that run it
_PROJECTIONS = {"in_proj_weight": ("q_proj", "k_proj", "v_proj"), "q_proj_weight": ("q_proj",),
                "k_proj_weight": ("k_proj",), "v_proj_weight": ("v_proj",)}  # fmt: skip


def _kernel_layers(model: nn.Module, name: str) -> list[str]:
    """The skip layers that run compiled layer ``name``: itself, a grouped conv's per-group
    layers, or an attention's q/k/v projections."""
    owner, _, pname = name.rpartition(".")
    if pname in _PROJECTIONS:
        return [f"{owner}.{p}" for p in _PROJECTIONS[pname]]
    layer = model.get_submodule(name)
    if isinstance(layer, SkipGroupedConv2d):
        return [f"{name}.groups.{i}" for i in range(len(layer.groups))]
    return [name]


def _layer_inputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    inputs: dict[str, Tensor] = {}
    hooks = [
        module.register_forward_pre_hook(lambda _m, args, name=name: inputs.update({name: args[0]}))
        for name, module in model.named_modules()
        if isinstance(module, SkipConv2d | SkipLinear)
    ]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


@click.command("compile")
@click.argument("pruned_file", type=click.Path(dir_okay=False))
@click.option("--backend", default="auto", show_default=True,
              help="opencl, triton, cpu, reference, or auto (the fastest for this machine).")
@click.option("--target", help="Target to compile for (preset or file); default: the file's.")
@click.option("--model", "factory",
              help="Build the model with this package.module:factory (files never name code; "
              "their timm:/torchvision: names need no option).")
@click.option("--batch", type=click.IntRange(1, 4096), default=2, show_default=True,
              help="Random batch size.")
@click.option("--image-size", type=click.IntRange(1, 4096),
              help="Input side; default 28 for 1 channel, else 32.")  # fmt: skip
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed runs per layer.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_out", is_flag=True, help="Print the result as JSON.")
def compile_cmd(
    pruned_file: str, backend: str, target: str | None, factory: str | None, batch: int,
    image_size: int | None,
    repeats: int, seed: int, json_out: bool,
) -> None:
    """Compile PRUNED_FILE for a backend, check it equals the masked model, time each layer."""
    from gpuprune.prune.files import load

    if batch < 1 or repeats < 1:
        raise UserError(f"--batch {batch} and --repeats {repeats} must be >= 1", "pass e.g. 2, 5")
    model, plan, info = load(pruned_file, factory=factory)
    if plan is None:
        raise UserError(f"{pruned_file} holds no pruning plan", "prune it with `gpuprune prune`")
    if target is None and plan.target is None:
        raise UserError(f"{pruned_file} records no target", "pass --target NAME")
    # each layer's kernel and tiling come from the file's plan; --target repacks for another GPU
    with warnings.catch_warnings():  # the notes are printed below, once
        warnings.simplefilter("ignore")
        compiled = compile(model, target=target, backend=backend, plan=plan)
    report = compiled.gpuprune_compile

    in_ch = info.model.in_channels if info.model else _first_channels(model)
    size = image_size or (28 if in_ch == 1 else 32)
    x = torch.randn(batch, in_ch, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want, got = model(x), compiled(x)
    err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
    if not err <= REL_TOL:
        raise RuntimeError(f"compiled model differs from the masked model: rel. error {err:.2e}")

    runner, _ = resolve_backend(report.backend)
    inputs = _layer_inputs(compiled, x)
    rows = []
    for lay in report.layers:
        skip_ms = dense_ms = 0.0
        for part in _kernel_layers(compiled, lay.name):  # summed over the layer's kernel calls
            layer, xin = compiled.get_submodule(part), inputs[part]
            skip_ms += _median_ms(lambda layer=layer, xin=xin: layer(xin), repeats)
            dense = _dense_twin(layer, runner)
            xin = xin.reshape(-1, xin.shape[-1]) if isinstance(layer, SkipLinear) else xin
            dense_ms += _median_ms(lambda dense=dense, xin=xin: dense(xin), repeats)
        rows.append({
            "layer": lay.name, "gemm": list(lay.gemm), "variant": lay.variant,
            "block": list(lay.block), "target": lay.target, "skippable": lay.skippable,
            "skip_ms": skip_ms, "dense_ms": dense_ms, "speedup": dense_ms / skip_ms,
        })
    result = {
        "file": pruned_file, "model": info.model.name if info.model else None,
        "method": info.method,
        "backend": report.backend, "device": report.device, "target": report.target,
        "batch": batch, "image_size": size, "max_rel_error": err, "layers": rows,
        "left_dense": [skip.to_dict() for skip in report.dense], "notes": list(report.notes),
    }
    if json_out:
        print_json(result)
        return
    for note in report.notes:
        console.print(note)
    console.print(
        f"{result['model']} ({info.method}) on backend {report.backend}, device {report.device}, "
        f"target {report.target}: equals the masked model (max rel. error {err:.1e}, "
        f"batch {batch}x{in_ch}x{size}x{size})"
    )
    print_table(
        "per-layer latency, skip kernel vs the same backend's dense kernel",
        ["layer", "GEMM MxK", "variant", "block", "tiling", "skippable", "skip ms", "dense ms",
         "speedup"],
        [
            [
                r["layer"], "x".join(map(str, r["gemm"])), r["variant"],
                "x".join(map(str, r["block"])), r["target"], f"{r['skippable']:.3f}",
                f"{r['skip_ms']:.2f}",
                f"{r['dense_ms']:.2f}", f"{r['speedup']:.2f}x",
            ]
            for r in rows
        ],
    )
    if report.dense:
        console.print("left dense:")
        for skip in report.dense:
            console.print(f"  {skip.name}: {skip.reason}")


__all__ = ["compile_cmd"]
