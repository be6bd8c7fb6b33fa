"""Reports of an experiment run: tables, Markdown, self-contained HTML and PNG plots."""

from gpuprune.report.plots import pareto_front
from gpuprune.report.render import summary_table, target_checks, write_report
from gpuprune.report.results import Row, RunResults, load_results

__all__ = [
    "Row",
    "RunResults",
    "load_results",
    "pareto_front",
    "summary_table",
    "target_checks",
    "write_report",
]
