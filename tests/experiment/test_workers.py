"""Cells fine-tuned in worker processes, then timed alone: the same results as one process."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpuprune.experiment import parse_config, run_experiment

VOLATILE = {"seconds", "train_seconds", "timing_seconds", "latency", "layers", "sha256",
            "cross_target", "finetune"}  # fmt: skip


def _cells(run: Path) -> dict[str, dict]:
    out = {}
    for path in sorted((run / "cells").glob("*.json")):
        rec = json.loads(path.read_text())
        out[path.name] = {k: v for k, v in rec.items() if k not in VOLATILE}
    return out


def test_workers_give_the_results_of_one_process(tiny_config, tmp_path: Path) -> None:
    tiny_config["oneshot"] = {"methods": ["tile"], "sparsities": [0.5],
                              "importances": ["magnitude", "obs"]}  # one more worker job
    tiny_config["prune"]["calibration"] = 32
    tiny_config["distill_study"] = {"methods": ["tile"], "sparsity": 0.5}  # and a study cell
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every process on one thread: the same floats, exactly
    try:
        one = run_experiment(parse_config(tiny_config), tmp_path / "one", progress=False)
        two = run_experiment(parse_config({**tiny_config, "workers": 2}), tmp_path / "two",
                             progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert [c["status"] for c in two["cells"]] == ["ok", "ok"]
    assert _cells(tmp_path / "two") == _cells(tmp_path / "one")  # accuracies, masks, sparsity
    cell = json.loads((tmp_path / "two" / "cells" / "tile-0.5.json").read_text())
    assert cell["latency"]["reference"]["median_ms"] > 0  # timed after training, in this process
    assert set(two["phases"]) >= {"cells: fine-tuning (parallel)", "cells: timing"}
    assert "cells: timing" not in one["phases"]
    rows = [{k: v for k, v in r.items() if k != "prune_seconds"} for r in two["oneshot"]["rows"]]
    assert rows == [{k: v for k, v in r.items() if k != "prune_seconds"}
                    for r in one["oneshot"]["rows"]] and len(rows) == 2  # fmt: skip
    studies = [[{k: v for k, v in r.items() if k != "seconds"} for r in s["distill_study"]["rows"]]
               for s in (one, two)]  # fmt: skip
    assert studies[0] == studies[1] and studies[1][0]["with"] is not None

    # killed while timing: the rerun finds the fine-tuned model and only times it
    model = tmp_path / "two" / "cells" / "tile-0.5" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    (tmp_path / "two" / "cells" / "tile-0.5.json").unlink()
    again = run_experiment(parse_config({**tiny_config, "workers": 2}), tmp_path / "two",
                           progress=False)  # fmt: skip
    assert [c["status"] for c in again["cells"]] == ["ok", "ok"]
    assert model.stat().st_mtime_ns == stamp  # not fine-tuned again
    assert again["phases"]["cells: fine-tuning (parallel)"] < 1.0  # no worker was started
