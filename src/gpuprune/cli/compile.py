"""`gpuprune compile`: compile a pruned-model file, check it against the masked model, time it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import click
import torch
from torch import Tensor, nn

from gpuprune.cli.output import console, print_json, print_table
from gpuprune.errors import UserError
from gpuprune.kernels.format import pack_for
from gpuprune.nn import SkipConv2d, SkipLinear, compile, resolve_backend

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
    packed, target = pack_for(layer.packed.to_dense(), layer.target, "dense"), layer.target
    if isinstance(layer, SkipLinear):
        return backend.linear(packed, layer.bias, target, variant="dense", relu=layer.relu)
    return backend.conv2d(
        packed, layer.bias, target, variant="dense", in_channels=layer.in_channels,
        kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
        dilation=layer.dilation, relu=layer.relu,
    )


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
@click.option("--backend", default="opencl", show_default=True,
              help="opencl, triton, cpu, reference, or auto (falls back with a message).")
@click.option("--target", help="Target to compile for (preset or file); default: the file's.")
@click.option("--batch", type=click.IntRange(1, 4096), default=2, show_default=True,
              help="Random batch size.")
@click.option("--image-size", type=click.IntRange(1, 4096),
              help="Input side; default 28 for 1 channel, else 32.")  # fmt: skip
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed runs per layer.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_out", is_flag=True, help="Print the result as JSON.")
def compile_cmd(
    pruned_file: str, backend: str, target: str | None, batch: int, image_size: int | None,
    repeats: int, seed: int, json_out: bool,
) -> None:
    """Compile PRUNED_FILE for a backend, check it equals the masked model, time each layer."""
    from gpuprune.models import create_model
    from gpuprune.prune.files import load_pruned, read_pruned

    if batch < 1 or repeats < 1:
        raise UserError(f"--batch {batch} and --repeats {repeats} must be >= 1", "pass e.g. 2, 5")
    header, _ = read_pruned(pruned_file)
    extra = header.get("extra") or {}
    if not header.get("model"):
        raise UserError(f"{pruned_file} does not name its model", "save it with model_name=...")
    model = create_model(
        header["model"], num_classes=int(extra.get("num_classes", 10)),
        in_channels=int(extra.get("in_channels", 3)), width=float(extra.get("width", 1.0)),
    )
    info = load_pruned(pruned_file, model)
    model.eval()
    tgt = target or info.target
    if tgt is None:
        raise UserError(f"{pruned_file} records no target", "pass --target NAME")
    methods = dict.fromkeys(info.plan, info.method or "tile")
    # per-layer tilings chosen by `gpuprune codesign` apply unless the user names another target
    layer_targets = None if target else extra.get("layer_targets")
    compiled = compile(model, target=tgt, backend=backend, methods=methods, verbose=False,
                       layer_targets=layer_targets)
    report = compiled.gpuprune_compile

    in_ch = int(extra.get("in_channels", 3))
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
        layer = compiled.get_submodule(lay.name)
        xin = inputs[lay.name]
        skip_ms = _median_ms(lambda layer=layer, xin=xin: layer(xin), repeats)
        dense = _dense_twin(layer, runner)
        dense_ms = _median_ms(lambda dense=dense, xin=xin: dense(xin), repeats)
        rows.append({
            "layer": lay.name, "gemm": list(lay.gemm), "variant": lay.variant,
            "block": list(lay.block), "target": lay.target, "skippable": lay.skippable,
            "skip_ms": skip_ms, "dense_ms": dense_ms, "speedup": dense_ms / skip_ms,
        })
    result = {
        "file": pruned_file, "model": header["model"], "method": info.method,
        "backend": report.backend, "device": report.device, "target": report.target,
        "batch": batch, "image_size": size, "max_rel_error": err, "layers": rows,
        "left_dense": list(report.dense), "notes": list(report.notes),
    }
    if json_out:
        print_json(result)
        return
    for note in report.notes:
        console.print(note)
    console.print(
        f"{header['model']} ({info.method}) on backend {report.backend}, device {report.device}, "
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
        console.print(f"left dense: {', '.join(report.dense)}")


__all__ = ["compile_cmd"]
