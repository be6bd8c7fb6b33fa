"""Shared fixtures of the reliability suite: tiny models and files, the CLI runner, a case count.

Every test here is one bad input or fault with its expected outcome; the session summary says
how many were tried (parametrized cases count one each, fuzz tests count their examples too).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from reliability_helpers import COUNTS, TINY_ARGS, TINY_CONFIG, CliResult, tiny_model
from safetensors.torch import save_file

from gpuprune.cli.main import main

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny-cnn checkpoint (.pt and .safetensors) and its tile-pruned file."""
    root = tmp_path_factory.mktemp("files")
    model = tiny_model()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, root / "tiny.pt")
    save_file(state, str(root / "tiny.safetensors"))
    code = main(["prune", str(root / "tiny.pt"), *TINY_ARGS, "--method", "tile", "--sparsity",
                 "0.5", "--target", "cpu-pocl", "--include-first-last", "--skip-small", "-o",
                 str(root / "pruned.safetensors"), "--json"])  # fmt: skip
    assert code == 0
    return {"pt": root / "tiny.pt", "st": root / "tiny.safetensors",
            "pruned": root / "pruned.safetensors"}  # fmt: skip


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run (with its report), copied by the tests that damage it."""
    from gpuprune.experiment import parse_config, run_experiment
    from gpuprune.report import write_report

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("finished") / "run"
    run_experiment(parse_config(TINY_CONFIG), run, progress=False)
    write_report(run)
    return run


@pytest.fixture
def tiny_config() -> dict:
    """An experiment config that runs in a few seconds: synthetic data, the tiny CNN."""
    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture
def cli(capsys):
    """Run ``gpuprune ARGS`` in-process; returns the exit code and captured output."""

    def run(*args: object) -> CliResult:
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


def _ours(path: str) -> bool:
    return Path(path).resolve().is_relative_to(HERE.resolve())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and _ours(report.fspath):
        COUNTS["cases"] += 1
        COUNTS["passed" if report.passed else "failed"] += 1


def pytest_terminal_summary(terminalreporter) -> None:
    if COUNTS["cases"]:
        terminalreporter.write_line(
            f"reliability: {COUNTS['cases']} bad-input and fault cases tried "
            f"({COUNTS['passed']} passed, {COUNTS['failed']} failed), plus "
            f"{COUNTS['fuzzed']} fuzzed inputs"
        )
