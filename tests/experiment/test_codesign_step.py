"""The experiment's co-design step: off by default, stored with a key, reused, searched again."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from gpuprune.arch import get_target
from gpuprune.errors import UserError
from gpuprune.experiment import parse_config, run_experiment
from gpuprune.experiment.cell import load_data
from gpuprune.experiment.codesign_step import CODESIGN_FILE, run_codesign

PRESET = get_target("cpu-pocl").name


class FakeMeasure:
    """Deterministic layer times: the preset takes 2 ms, other tilings less; calls counted."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, float]] = []

    def __call__(self, geom: Any, tiling: Any, variant: str, kept: float) -> float:
        self.calls.append((geom.name, tiling.name, variant, kept))
        return 2.0 if tiling.name == PRESET else 1.0 + tiling.mwg / 1000


def _config(tiny: dict[str, Any], **codesign: Any) -> Any:
    return parse_config({**tiny, "codesign": {"backend": "reference", "candidates": 2,
                                              "sparsity": 0.5, **codesign}})  # fmt: skip


def never(*args: Any) -> float:
    raise AssertionError("the stored search should have been reused")


def test_off_by_default(tiny_config, tmp_path: Path) -> None:
    cfg = parse_config(tiny_config)
    assert run_codesign(cfg, tmp_path, load_data(cfg), progress=False, measure=never) is None
    assert not (tmp_path / CODESIGN_FILE).exists()


def test_stores_the_search_and_reuses_it(tiny_config, tmp_path: Path) -> None:
    cfg = _config(tiny_config)
    data = load_data(cfg)
    fake = FakeMeasure()
    rec = run_codesign(cfg, tmp_path, data, progress=False, measure=fake)
    stored = json.loads((tmp_path / CODESIGN_FILE).read_text())
    assert stored == rec
    assert rec["backend"] == "reference" and rec["device"].startswith("cpu")
    assert rec["batch"] == 2  # latency.batch_size when codesign.batch_size is not set
    assert rec["target"]["name"] == PRESET and rec["candidates"] == 2 and rec["seconds"] >= 0
    names = [row["layer"] for row in rec["layers"]]
    assert names and rec["total_layers"] == len(names) == rec["faster_10pct"]
    assert set(rec["layer_targets"]) == set(names)
    for row in rec["layers"]:
        assert row["preset_ms"] == 2.0 and row["best"] != PRESET
        assert row["speedup"] == pytest.approx(2.0 / row["best_ms"])
        assert row["gemm"][2] % 2 == 0  # N = batch x output positions, at batch 2
    assert {(v, k) for *_, v, k in fake.calls} == {("tile", 0.5)}

    again = run_codesign(cfg, tmp_path, data, progress=False, measure=never)
    assert again == rec


@pytest.mark.parametrize(
    "change",
    [{"candidates": 3}, {"batch_size": 3}, {"variant": "simd"}, "damaged", "target", "width",
     "latency batch"],
)  # fmt: skip
def test_other_settings_search_again(tiny_config, tmp_path: Path, change: Any) -> None:
    cfg = _config(tiny_config)
    data = load_data(cfg)
    first = run_codesign(cfg, tmp_path, data, progress=False, measure=FakeMeasure())
    if change == "damaged":
        (tmp_path / CODESIGN_FILE).write_text('{"key": "' + first["key"])  # truncated
    elif change in ("target", "width", "latency batch"):  # other layers or another preset
        section, key, value = {"target": ("prune", "target", "nvidia"),
                               "width": ("model", "width", 1.0),
                               "latency batch": ("latency", "batch_size", 4)}[change]  # fmt: skip
        tiny_config[section][key] = value
        cfg = _config(tiny_config)
    else:
        cfg = _config(tiny_config, **change)
    fake = FakeMeasure()
    rec = run_codesign(cfg, tmp_path, data, progress=False, measure=fake)
    assert fake.calls
    assert json.loads((tmp_path / CODESIGN_FILE).read_text()) == rec
    if change != "damaged":
        assert rec["key"] != first["key"]
    if change == {"batch_size": 3}:
        assert rec["batch"] == 3


def test_backend_measure_is_the_default(tiny_config, tmp_path: Path, monkeypatch) -> None:
    # the module by its name: gpuprune.latency.codesign is also the function's name there
    cd = sys.modules["gpuprune.latency.codesign"]
    asked: list[str] = []

    def fake_backend_measure(backend: str = "opencl", timer: Any = None) -> FakeMeasure:
        asked.append(backend)
        return FakeMeasure()

    monkeypatch.setattr(cd, "backend_measure", fake_backend_measure)
    cfg = _config(tiny_config)
    rec = run_codesign(cfg, tmp_path, load_data(cfg), progress=True)
    assert asked == ["reference"] and rec["faster_10pct"] == rec["total_layers"]


def test_setup_errors_propagate(tiny_config, tmp_path: Path) -> None:
    def no_device(*args: Any) -> float:
        raise UserError("the device has no local memory", "use another backend")

    cfg = _config(tiny_config)
    with pytest.raises(UserError, match="preset tiling"):
        run_codesign(cfg, tmp_path, load_data(cfg), progress=False, measure=no_device)
    bad = _config(tiny_config, backend="no-such-backend")
    with pytest.raises(UserError, match="no-such-backend"):
        run_codesign(bad, tmp_path, load_data(bad), progress=False, measure=FakeMeasure())
    assert not (tmp_path / CODESIGN_FILE).exists()


def test_real_timing_on_the_reference_backend(tiny_config, tmp_path: Path) -> None:
    cfg = _config(tiny_config, candidates=1, batch_size=1)
    rec = run_codesign(cfg, tmp_path, load_data(cfg), progress=False)
    for row in rec["layers"]:
        assert row["preset_ms"] > 0 and row["best_ms"] > 0 and row["speedup"] >= 1.0
        assert not row["failed"]


@pytest.mark.opencl
def test_real_timing_on_opencl(tiny_config, tmp_path: Path) -> None:
    pytest.importorskip("pyopencl")
    cfg = _config(tiny_config, backend="opencl", candidates=1, batch_size=1)
    rec = run_codesign(cfg, tmp_path, load_data(cfg), progress=False)
    assert rec["backend"] == "opencl" and rec["device"]
    assert all(row["preset_ms"] > 0 and row["speedup"] >= 1.0 for row in rec["layers"])


def test_the_run_summary_carries_it(tiny_config, tmp_path: Path) -> None:
    tiny_config["prune"]["methods"] = ["tile"]
    tiny_config["codesign"] = {"backend": "reference", "candidates": 1, "batch_size": 1}
    summary = run_experiment(parse_config(tiny_config), tmp_path / "run", progress=False)
    stored = json.loads((tmp_path / "run" / CODESIGN_FILE).read_text())
    assert summary["codesign"] == stored and stored["total_layers"] >= 1
