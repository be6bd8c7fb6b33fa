"""Finding a usable OpenCL device: a driver that cannot build kernels is named at once."""

from __future__ import annotations

import pytest

from gpuprune.errors import DeviceNotFoundError
from gpuprune.kernels.opencl import context


class _BuildFails(Exception):
    pass


class _FakeCl:
    Error = _BuildFails

    class Program:
        def __init__(self, ctx, src):
            pass

        def build(self):
            raise _BuildFails(
                "clBuildProgram failed: BUILD_PROGRAM_FAILURE - clBuildProgram failed\n\n"
                "Build on <pyopencl.Device 'pthread-AMD EPYC'>:\n\n"
                "error: unknown target CPU 'generic'\n"
                "Device pthread-AMD EPYC failed to build the program\n"
            )


class _Dev:
    context = None
    name = "pthread-AMD EPYC (Portable Computing Language)"


def test_build_error_names_the_log_line():
    log = "clBuildProgram failed: X\n\nBuild on dev:\n\nerror: unknown target CPU 'generic'\n"
    assert context.build_error(_BuildFails(log)) == "error: unknown target CPU 'generic'"
    assert context.build_error(_BuildFails("failed: X\n")) == "failed: X"


def test_driver_that_cannot_build_is_reported_as_unusable(monkeypatch):
    monkeypatch.setattr(context, "import_pyopencl", lambda: _FakeCl)
    with pytest.raises(DeviceNotFoundError) as info:
        context._check_builds.__wrapped__(_Dev())
    assert "unknown target CPU 'generic'" in info.value.problem
    assert "backend='cpu'" in info.value.fix
