"""The distillation study: a few grid cells fine-tuned again with the other distillation setting.

The report compares each cell's accuracy with and without distillation from the dense model,
under the same fine-tuning budget (Hinton et al. 2015; config ``distill_study``). When the run's
own fine-tuning does not distil, the study's cells do (with the study's ``alpha`` and
``temperature``); when it does, they do not. Study cells are trained like grid cells but not
timed: their masks follow the same method and sparsity, so the latency is the grid cell's.
Each is stored as ``distill/<method>-<sparsity>.json`` (checksummed), its model beside it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gpuprune.data import ImageData
from gpuprune.experiment.cell import cell_key, cell_name, cell_path, train_arm
from gpuprune.experiment.config import DistillSection, ExperimentConfig
from gpuprune.fileio import read_record, write_record
from gpuprune.train import distributed as ddp

STUDY_DIR = "distill"


def other_arm(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config the study's cells fine-tune with: distillation toggled, all else the same."""
    s = cfg.distill_study
    distill = (DistillSection(alpha=s.alpha, temperature=s.temperature)
               if cfg.finetune.distill is None else None)  # fmt: skip
    return cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={
        "distill": distill})})  # fmt: skip


def study_cells(cfg: ExperimentConfig) -> list[tuple[str, float]]:
    s = cfg.distill_study
    return [(m, s.sparsity) for m in s.methods]


def study_path(run_dir: Path, method: str, sparsity: float) -> Path:
    return run_dir / STUDY_DIR / f"{cell_name(method, sparsity)}.json"


def _trained_under(record: dict[str, Any], arm: ExperimentConfig) -> bool:
    return record.get("key") == cell_key(arm) and record.get("status") == "trained"


def study_done(cfg: ExperimentConfig, run_dir: Path, method: str, sparsity: float) -> bool:
    return _trained_under(read_record(study_path(run_dir, method, sparsity)), other_arm(cfg))


def pending_study(cfg: ExperimentConfig, run_dir: Path) -> list[tuple[str, float]]:
    return [c for c in study_cells(cfg) if not study_done(cfg, run_dir, *c)]


def train_study_cell(cfg: ExperimentConfig, run_dir: Path, method: str, sparsity: float,
                     data: ImageData | None = None, progress: bool = True
                     ) -> dict[str, Any]:  # fmt: skip
    """Fine-tune one study cell (or read it back); returns and stores its record."""
    path = study_path(run_dir, method, sparsity)
    arm = other_arm(cfg)
    if _trained_under(stored := read_record(path), arm):
        return stored
    started = time.perf_counter()
    work = path.with_suffix("")
    record = train_arm(arm, run_dir, method, sparsity, data, progress, work)
    distill = arm.finetune.distill
    record.update(distill=distill.model_dump() if distill is not None else None,
                  seconds=time.perf_counter() - started)  # fmt: skip
    return write_record(path, record) if ddp.info().is_main else record


def collect_study(cfg: ExperimentConfig, run_dir: Path) -> dict[str, Any] | None:
    """The study's rows for the summary: each cell with and without distillation (None: off)."""
    if not cfg.distill_study.methods:
        return None
    rows = []
    for method, sparsity in study_cells(cfg):
        grid = read_record(cell_path(run_dir, method, sparsity))
        study = read_record(study_path(run_dir, method, sparsity))
        accs = {"grid": grid.get("accuracy") if grid.get("status") == "ok" else None,
                "study": study.get("accuracy") if study.get("status") == "trained" else None}
        plain, distilled = ("grid", "study") if cfg.finetune.distill is None else ("study",
                                                                                   "grid")
        rows.append({"method": method, "sparsity": sparsity, "without": accs[plain],
                     "with": accs[distilled],
                     "error": study.get("error") if study.get("status") == "failed" else None,
                     "seconds": study.get("seconds")})  # fmt: skip
    used = cfg.finetune.distill or other_arm(cfg).finetune.distill  # the arm that distils
    return {"alpha": used.alpha, "temperature": used.temperature,
            "default": "with" if cfg.finetune.distill is not None else "without", "rows": rows}
