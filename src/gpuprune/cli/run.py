"""``gpuprune run CONFIG -o RUN_DIR``: the whole experiment; rerun to continue where it stopped."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("run")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("-o", "--out", "run_dir", type=click.Path(path_type=Path), required=True,
              help="Run folder (results are kept; rerunning skips finished cells).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run the cells as Ray tasks on this cluster ('local' starts one here).")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Fine-tune this many cells at once, each in its own process (default: the "
                   "config's workers); cells are then timed one at a time.")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write the report when the run finishes.")
def run(config: Path, run_dir: Path, ray_address: str | None, workers: int | None,
        report: bool) -> None:
    """Train the dense model, then prune, fine-tune, evaluate and time every cell.

    Under torchrun --nproc-per-node N, training and fine-tuning are data-parallel.
    """
    from gpuprune.experiment import load_config, run_experiment
    from gpuprune.experiment.runner import check_cells
    from gpuprune.train import distributed as ddp

    cfg = load_config(config)
    rank = ddp.setup()  # torchrun --nproc-per-node N: training is data-parallel, rank 0 writes
    try:
        summary = run_experiment(cfg, run_dir, ray_address=ray_address, raise_on_failure=False,
                                 workers=workers)
    finally:
        ddp.cleanup()
    if not rank.is_main:
        return
    if report:  # also when some cells failed: the report shows which and why
        from gpuprune.cli.report import write_and_show

        write_and_show(run_dir)
    check_cells(summary, run_dir)
