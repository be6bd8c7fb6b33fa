"""``gpuprune report RUN_DIR``: report.md, report.html and plots from a run folder."""

from __future__ import annotations

from pathlib import Path

import click

from gpuprune.cli.output import print_table


def write_and_show(run_dir: Path) -> None:
    """Write the report and print its path, the summary table and the target checks."""
    from gpuprune.report import write_report

    out = write_report(run_dir)
    cols, rows = out["table"]
    print_table(f"{run_dir}: accuracy and latency per method", cols, rows)
    for line in out["checks"]:
        click.echo(f"  {line}")
    click.echo(f"report: {out['markdown']}  (self-contained: {out['html']})")


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir: Path) -> None:
    """Write report.md, report.html and PNG plots for a run folder."""
    write_and_show(run_dir)
