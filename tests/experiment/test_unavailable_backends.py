"""``unavailable_backends: skip``: a timing backend this machine cannot run is left out, named."""

from __future__ import annotations

import pytest

from gpuprune.errors import DeviceNotFoundError, UserError
from gpuprune.experiment.config import ExperimentConfig
from gpuprune.experiment.runner import drop_unavailable


def _cfg(policy: str, latency=("opencl", "cpu"), codesign="opencl") -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "unavailable_backends": policy, "latency": {"backends": list(latency)},
        "codesign": {"backend": codesign},
    })  # fmt: skip


@pytest.fixture
def no_opencl(monkeypatch):
    from gpuprune.kernels.opencl import backend

    def unusable():
        raise DeviceNotFoundError(
            "the OpenCL driver of X cannot build even a trivial kernel "
            "(error: unknown target CPU 'generic')", "use backend='cpu'",
        )  # fmt: skip

    monkeypatch.setattr(backend, "get_usable_device", unusable)


def test_skip_leaves_out_what_cannot_run_and_says_why(no_opencl):
    cfg, notes = drop_unavailable(_cfg("skip"))
    assert cfg.latency.backends == ["cpu"] and cfg.codesign.backend is None
    assert len(notes) == 2 and all("unknown target CPU" in n for n in notes)
    assert notes[0].startswith("latency on opencl") and notes[1].startswith("co-design on opencl")


def test_error_keeps_the_config(no_opencl):
    cfg = _cfg("error")
    assert drop_unavailable(cfg) == (cfg, [])


def test_unknown_names_and_nothing_left_are_refused(no_opencl):
    with pytest.raises(UserError, match="nvidia-cuda|unknown|not a"):
        drop_unavailable(_cfg("skip", latency=("nvidia-cuda", "cpu")))
    with pytest.raises(UserError, match="no backend in latency.backends can run"):
        drop_unavailable(_cfg("skip", latency=("opencl",), codesign=None))


def test_not_part_of_any_key():
    from gpuprune.experiment.cell import cell_key

    assert cell_key(_cfg("skip")) == cell_key(_cfg("error"))


def test_without_skip_the_run_stops_naming_the_key_and_the_option(no_opencl, tmp_path):
    from gpuprune.experiment.runner import run_experiment

    with pytest.raises(UserError) as info:
        run_experiment(_cfg("error"), tmp_path / "run", progress=False)
    assert info.value.problem.startswith("latency.backends: ")
    assert "unavailable_backends: skip" in info.value.fix
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
