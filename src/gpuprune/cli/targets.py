"""``gpuprune targets``: list, show and detect GPU targets and the block shapes they imply."""

from __future__ import annotations

import click

from gpuprune.arch import Target, get_target, list_targets
from gpuprune.cli.output import console, print_json, print_table
from gpuprune.errors import UserError

COLUMNS = [
    "name",
    "vendor",
    "SIMD",
    "WG tile MxNxK",
    "WG threads",
    "local mem",
    "tile block",
    "SIMD block",
]


def summary(t: Target) -> dict:
    """Target fields plus the derived quantities a user wants to see."""
    return {
        **t.to_dict(),
        "mwi": t.mwi,
        "nwi": t.nwi,
        "work_group_size": t.work_group_size,
        "local_mem_needed": t.local_mem_needed,
        "simd_rows": t.simd_rows,
        "tile_block": list(t.tile_block()),
        "simd_block": list(t.simd_block()),
    }


def _row(t: Target) -> list:
    return [
        t.name,
        t.vendor,
        t.simd_width,
        f"{t.mwg}x{t.nwg}x{t.kwg}",
        f"{t.mdimc}x{t.ndimc}",
        f"{t.local_mem_needed // 1024}/{t.local_mem_bytes // 1024} KiB",
        "x".join(map(str, t.tile_block())),
        "x".join(map(str, t.simd_block())),
    ]


@click.group(invoke_without_command=True)
@click.option("--detect", is_flag=True, help="Detect this machine's GPU or OpenCL device.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "opencl", "cuda"]),
    default="auto",
    show_default=True,
    help="Where --detect looks.",
)
@click.option(
    "--save", type=click.Path(dir_okay=False), help="With --detect: write it to .toml/.yaml."
)
@click.option("--json", "json_out", is_flag=True, help="Machine-readable output.")
@click.pass_context
def targets(
    ctx: click.Context, detect: bool, backend: str, save: str | None, json_out: bool
) -> None:
    """Print the preset targets with their pruning block shapes (or --detect this machine's)."""
    if ctx.invoked_subcommand is not None:
        return
    if not detect:  # options that only --detect reads are refused, not ignored
        for flag, param in (("--save", "save"), ("--backend", "backend")):
            if ctx.get_parameter_source(param) not in (None, click.core.ParameterSource.DEFAULT):
                raise UserError(f"{flag} only applies with --detect",
                                f"add --detect or drop {flag}")  # fmt: skip
    if save:
        from gpuprune.fileio import check_output

        check_output(save, flag="--save")
    if detect:
        t = Target.detect(backend)
        if save:
            t.save(save)
        if json_out:
            print_json(summary(t))
            return
        print_table("Detected target", COLUMNS, [_row(t)])
        console.print(t.source)
        if save:
            console.print(f"saved to {save}")
        return
    found = [get_target(n) for n in list_targets()]
    if json_out:
        print_json([summary(t) for t in found])
    else:
        title = "gpuprune targets (blocks are rows x k of the [M, K] weight)"
        print_table(title, COLUMNS, [_row(t) for t in found])
        console.print("Tile values: CLBlast's SGEMM tuning database, pocl-tuned from gpuprune "
                      "codesign; 'gpuprune targets show NAME' gives each one's source.")


@targets.command()
@click.argument("name")
@click.option("--json", "json_out", is_flag=True, help="Machine-readable output.")
def show(name: str, json_out: bool) -> None:
    """Show every field of target NAME (a preset or a .toml/.yaml file) and its block shapes."""
    t = get_target(name)
    data = summary(t)
    if json_out:
        print_json(data)
    else:
        print_table(f"target {t.name}", ["field", "value"], list(data.items()))
