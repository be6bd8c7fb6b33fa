"""Cells fine-tuned in worker processes (config ``workers``), timed afterwards by the caller.

On a small CPU, one training process with every thread leaves cores idle inside each small
kernel: the demo's model trains about 1.6x faster on 2 cores as two 1-thread processes than as
one 2-thread process (measured, benchmarks/README.md). Timing is not done in the workers: a
latency measured while another process trains would be noise, so workers only prune, fine-tune,
evaluate and save (:func:`gpuprune.experiment.cell.train_cell`), and the caller times each
cell alone once all have trained. The one-shot study and the distillation study's cells (no
timing in them) are jobs too.

Workers are spawned (not forked: a forked OpenMP runtime can hang), each with
``threads // workers`` threads; each reads the data set once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from gpuprune.experiment.config import ExperimentConfig, parse_config


@dataclass(frozen=True)
class Job:
    """One unit of worker work: a grid or matched cell, the one-shot study, or a study cell."""

    kind: Literal["cell", "oneshot", "distill"]
    method: str = ""
    sparsity: float = 0.0
    matched: bool = False
    plan: dict[str, Any] | None = None  # a matched cell's plan, chosen before the workers

    @property
    def is_cell(self) -> bool:
        return self.kind == "cell"


ONESHOT = Job("oneshot")  # the one-shot study, as one job
_DATA: dict[str, Any] = {}  # per worker process: the data set, read once


def _init(threads: int) -> None:
    import warnings

    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")  # the main process reports; workers stay quiet


def _train_job(cfg_dict: dict[str, Any], run_dir: str, job: Job) -> dict[str, Any]:
    from gpuprune.experiment.cell import load_data, train_cell

    cfg = parse_config(cfg_dict)
    key = cfg.digest("data", "seed")
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_data(cfg)
    if job.kind == "oneshot":  # stores its own record; the caller reads it back
        from gpuprune.experiment.oneshot import run_oneshot

        return run_oneshot(cfg, Path(run_dir), _DATA[key], progress=False) or {}
    if job.kind == "distill":
        from gpuprune.experiment.distill_study import train_study_cell

        return train_study_cell(cfg, Path(run_dir), job.method, job.sparsity, _DATA[key],
                                progress=False)  # fmt: skip
    return train_cell(cfg, Path(run_dir), job.method, job.sparsity, _DATA[key], progress=False,
                      matched=job.matched, plan=job.plan)  # fmt: skip


def threads_per_worker(workers: int) -> int:
    return max(1, torch.get_num_threads() // workers)


def train_in_workers(cfg: ExperimentConfig, run_dir: Path, jobs: list[Job],
                     workers: int) -> Iterator[tuple[Job, dict[str, Any]]]:  # fmt: skip
    """Train ``jobs`` in ``workers`` processes; yields (job, trained record) as each finishes.

    A worker that dies (killed, out of memory) fails its cell with a message instead of the run.
    """
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(min(workers, len(jobs)) or 1, mp_context=ctx, initializer=_init,
                               initargs=(threads_per_worker(workers),))  # fmt: skip
    cfg_dict = cfg.model_dump()
    with contextlib.ExitStack() as stack:
        stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        futures: dict[Future, Job] = {
            pool.submit(_train_job, cfg_dict, str(run_dir.resolve()), job): job for job in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job = futures[fut]
                try:
                    rec = fut.result()
                except BrokenProcessPool as exc:
                    rec = _failed(cfg, job, f"its worker process died ({exc})")
                except Exception as exc:  # noqa: BLE001 - one cell fails, the run goes on
                    rec = _failed(cfg, job, f"internal error: {type(exc).__name__}: {exc}")
                yield job, rec


def _failed(cfg: ExperimentConfig, job: Job, error: str) -> dict[str, Any]:
    from gpuprune.experiment.cell import base_record

    if not job.is_cell:  # a study: the caller sees it failed and runs it again in-process
        return {"status": "failed", "error": error}
    return {**base_record(cfg, job.method, job.sparsity, job.matched), "status": "failed",
            "error": error}
