"""``gpuprune codesign``: per layer, the fastest valid tiling of a Target, measured."""

from __future__ import annotations

import json

import click

from gpuprune.cli.output import console, print_json, print_table


@click.command("codesign")
@click.option("--model", "model_name", default="vgg16", show_default=True, help="Model name.")
@click.option("--width", type=click.FloatRange(0, 64, min_open=True), default=1.0,
              show_default=True, help="Channel width multiplier.")  # fmt: skip
@click.option("--in-channels", type=click.IntRange(1, 64), default=3, show_default=True,
              help="Input image channels.")  # fmt: skip
@click.option(
    "--target", default="cpu-pocl", show_default=True, help="Target whose space is searched."
)
@click.option(
    "--backend", default="opencl", show_default=True, help="Kernel backend that times layers."
)
@click.option(
    "--batch", default=1, show_default=True, type=click.IntRange(1, 4096), help="Batch size."
)
@click.option(
    "--candidates",
    "count",
    default=8,
    show_default=True,
    type=click.IntRange(0, 10_000),
    help="Tilings sampled besides the preset.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the tiling sample.")
@click.option(
    "--variant",
    default="tile",
    show_default=True,
    type=click.Choice(["tile", "simd", "dense"]),
    help="Block pattern pruned and skipped.",
)
@click.option(
    "--sparsity",
    default=0.75,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Fraction of each tiling's blocks pruned in the timed weights.",
)
@click.option(
    "--layers", default=None, help="Comma-separated layer names (default: every GEMM layer)."
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the result JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def codesign_cmd(
    model_name: str,
    width: float,
    in_channels: int,
    target: str,
    backend: str,
    batch: int,
    count: int,
    seed: int,
    variant: str,
    sparsity: float,
    layers: str | None,
    output: str | None,
    as_json: bool,
) -> None:
    """Time the preset tiling and sampled ones per layer; report each layer's best and speedup."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from gpuprune.bench.environment import environment
    from gpuprune.errors import UserError
    from gpuprune.fileio import atomic_write_text
    from gpuprune.latency.codesign import backend_measure, candidates, codesign
    from gpuprune.latency.geometry import model_geometries
    from gpuprune.models import create_model

    if output:
        from gpuprune.fileio import check_output

        check_output(output, flag="-o")
    model = create_model(model_name, in_channels=in_channels, width=width)
    names = [n.strip() for n in layers.split(",")] if layers else None
    geoms = model_geometries(model, batch, names=names)
    if names:
        missing = sorted(set(names) - set(geoms))
        if missing:
            raise UserError(
                f"layer {missing[0]!r} is not a GEMM layer of {model_name}",
                f"use names such as {', '.join(list(model_geometries(model, batch))[:4])}",
            )
    measure = backend_measure(backend)
    steps = len(geoms) * len(candidates(target, count, seed))
    bar = Progress(
        TextColumn("codesign {task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=True,
    )  # fmt: skip
    with bar:
        task = bar.add_task("", total=steps)
        result = codesign(
            geoms, target, backend, count, seed, variant, sparsity, measure=measure,
            progress=lambda what: bar.update(task, advance=1, description=what),
        )  # fmt: skip
    data = {
        "environment": environment(),
        "model": model_name,
        "width": width,
        "batch": batch,
        "backend": backend,
        "candidates": count,
        "seed": seed,
        **result.to_dict(),
        "layer_targets": result.targets(),  # for `gpuprune prune --layer-targets FILE`
    }
    if output:
        atomic_write_text(output, json.dumps(data, indent=1))
    if as_json:
        print_json(data)
        return
    rows = []
    for c in result.layers:
        best = "preset" if c.best is result.target else c.best.name.split("@")[-1]
        gemm = f"{c.geometry.m}x{c.geometry.k}x{c.geometry.n}"
        rows.append(
            [c.layer, gemm, f"{c.preset_ms:.3f}", best, f"{c.best_ms:.3f}", f"{c.speedup:.2f}"]
        )
    print_table(
        f"co-design on {backend} ({result.variant} at sparsity {sparsity:g}, batch {batch})",
        ["layer", "GEMM MxKxN", "preset ms", "best tiling", "best ms", "speedup"],
        rows,
    )
    console.print(
        f"best tiling >= 10% faster than the preset on {result.faster(1.10)} of "
        f"{len(result.layers)} layers"
    )
