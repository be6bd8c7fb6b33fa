"""The runner: cells stored as they finish, reruns skip them, NaN fails one cell, run lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuprune.errors import UserError
from gpuprune.experiment import parse_config, run_experiment
from gpuprune.experiment.runner import run_lock


def _mtimes(run: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (run / "cells").glob("*.json")}


def test_run_stores_cells_and_reruns_only_what_changed(tiny_config, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = run_experiment(parse_config(tiny_config), run, progress=False)
    assert {(c["method"], c["status"]) for c in summary["cells"]} == {
        ("unstructured", "ok"), ("tile", "ok")}  # fmt: skip
    cell = json.loads((run / "cells" / "tile-0.5.json").read_text())
    assert cell["achieved_sparsity"] == pytest.approx(0.5, abs=0.1)
    assert cell["latency"]["reference"]["median_ms"] > 0
    assert cell["latency"]["reference"]["dense_ms"] > 0  # paired dense timing
    assert all(0 <= lay["skippable"]["reference"] <= 1 for lay in cell["layers"])
    assert (run / "cells" / "tile-0.5" / "model.safetensors").exists()
    assert not list(run.rglob("*.tmp")) and not list(run.rglob("checkpoint.pt"))

    before, dense_before = _mtimes(run), (run / "dense" / "model.safetensors").stat().st_mtime_ns
    tiny_config["targets"] = {"dense_accuracy": 0.5}  # read by the report only
    again = run_experiment(parse_config(tiny_config), run, progress=False)
    assert _mtimes(run) == before  # nothing re-run
    # a read-back keeps the time of the run that computed the results (not its own second)
    assert (again["seconds"], again["phases"]) == (summary["seconds"], summary["phases"])
    assert again["config"]["targets"]["dense_accuracy"] == 0.5

    tiny_config["finetune"]["lr"] = 0.02  # cells depend on it, the dense model does not
    summary = run_experiment(parse_config(tiny_config), run, progress=False)
    assert len(summary["cells"]) == 2
    assert all(_mtimes(run)[k] != v for k, v in before.items())
    assert (run / "dense" / "model.safetensors").stat().st_mtime_ns == dense_before


def test_nan_loss_fails_only_that_cell(tiny_config, tmp_path: Path) -> None:
    tiny_config["prune"].update(methods=["ssl", "unstructured"], ssl_strength=1e300,
                                ssl_fraction=0.0)  # fmt: skip
    with pytest.raises(UserError, match=r"1 of 2 cells failed \(ssl@0.5\).*loss became inf"):
        run_experiment(parse_config(tiny_config), tmp_path / "run", progress=False)
    cells = tmp_path / "run" / "cells"
    assert json.loads((cells / "unstructured-0.5.json").read_text())["status"] == "ok"
    failed = json.loads((cells / "ssl-0.5.json").read_text())
    assert failed["status"] == "failed" and "lower the learning rate" in failed["error"]


def test_run_folder_lock(tiny_config, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with run_lock(run), pytest.raises(UserError, match="in use by another gpuprune run"):
        run_experiment(parse_config(tiny_config), run, progress=False)


def test_unavailable_backend_is_refused_up_front(tiny_config, tmp_path: Path) -> None:
    tiny_config["latency"]["backends"] = ["no-such-backend"]
    with pytest.raises(UserError, match="no-such-backend"):
        run_experiment(parse_config(tiny_config), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "dense").exists()


@pytest.mark.slow
def test_cells_run_as_ray_tasks(tiny_config, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    tiny_config["equal_latency"] = {"reference": "tile@0.5", "methods": ["tile"],
                                    "backend": "analytical"}  # a matched cell travels too
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_experiment(parse_config(tiny_config), tmp_path / "run", ray_address="local",
                                 progress=False)  # fmt: skip
    finally:
        ray.shutdown()
    assert sorted(c["method"] for c in summary["cells"] if c["status"] == "ok") == [
        "tile", "tile", "unstructured"]  # fmt: skip
    assert [c["equal_latency"] for c in summary["cells"] if c["method"] == "tile"] == [False, True]


def test_sparsities_per_method_add_cells_without_rerunning(tiny_config, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_experiment(parse_config(tiny_config), run, progress=False)
    before = _mtimes(run)
    tiny_config["prune"]["sparsities_for"] = {"tile": [0.5, 0.75]}
    summary = run_experiment(parse_config(tiny_config), run, progress=False)
    cells = {(c["method"], c["sparsity"]) for c in summary["cells"]}
    assert cells == {("unstructured", 0.5), ("tile", 0.5), ("tile", 0.75)}
    after = _mtimes(run)
    assert {k for k in after if before.get(k) != after[k]} == {"tile-0.75.json"}


@pytest.mark.parametrize("override, needle", [
    ({"simd": [0.5]}, r"sparsities_for names \['simd'\], not in prune.methods"),
    ({"tile": []}, "sparsities_for: tile: must be a non-empty list"),
    ({"tile": [0.5, 0.5]}, "tile: must be a non-empty list without duplicates"),
    ({"tile": [1.5]}, r"prune.sparsities_for.tile.0: Input should be less than 1"),
])
def test_sparsities_per_method_refused(tiny_config, override, needle) -> None:
    tiny_config["prune"]["sparsities_for"] = override
    with pytest.raises(UserError, match=needle) as exc:
        parse_config(tiny_config)
    assert "\n" not in str(exc.value)


def test_study_and_reference_read_the_method_sparsities(tiny_config) -> None:
    tiny_config["prune"]["sparsities_for"] = {"tile": [0.75]}
    tiny_config["distill_study"] = {"methods": ["tile", "unstructured"], "sparsity": 0.75}
    with pytest.raises(UserError, match=r"not a grid sparsity of \['unstructured'\]"):
        parse_config(tiny_config)
    tiny_config["distill_study"] = {"methods": ["tile"], "sparsity": 0.75}
    assert parse_config(tiny_config).prune.grid() == [("unstructured", 0.5), ("tile", 0.75)]
    from gpuprune.experiment.equal_latency import check_equal_latency

    tiny_config["equal_latency"] = {"reference": "tile@0.5", "methods": ["tile"]}
    with pytest.raises(UserError, match="tile@0.5 is not a cell of this config"):
        check_equal_latency(parse_config(tiny_config))
