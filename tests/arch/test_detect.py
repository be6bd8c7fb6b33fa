"""Detection from OpenCL (PoCL here) and from torch.cuda properties (simulated)."""

from __future__ import annotations

import types

import pytest

from gpuprune.arch import Target
from gpuprune.arch import detect as det
from gpuprune.errors import DeviceNotFoundError, TargetError


@pytest.mark.opencl
def test_detect_opencl_reads_the_device():
    import pyopencl as cl

    device = [d for p in cl.get_platforms() for d in p.get_devices()][0]
    t = det.detect_opencl()
    assert isinstance(t, Target)
    assert t.local_mem_bytes == device.local_mem_size
    assert t.max_work_group_size == device.max_work_group_size
    assert t.compute_units == device.max_compute_units
    assert t.work_group_size <= device.max_work_group_size
    assert "detected via OpenCL" in t.source


def test_no_opencl_platform_is_a_clear_error(monkeypatch):
    import pyopencl as cl

    def boom():
        raise cl.LogicError("clGetPlatformIDs failed: PLATFORM_NOT_FOUND_KHR")

    monkeypatch.setattr(cl, "get_platforms", boom)
    with pytest.raises(DeviceNotFoundError, match="no OpenCL platform") as info:
        det.detect_opencl()
    assert "pocl" in str(info.value).lower() and "\n" not in str(info.value)
    monkeypatch.setattr(det, "detect_cuda", lambda: (_ for _ in ()).throw(DeviceNotFoundError("x")))
    with pytest.raises(DeviceNotFoundError):
        det.detect_target("auto")


def test_cuda_detection_from_device_properties(monkeypatch):
    import torch

    props = types.SimpleNamespace(
        name="NVIDIA H100 80GB HBM3",
        warp_size=32,
        max_threads_per_block=1024,
        shared_memory_per_block=48 * 1024,
        multi_processor_count=132,
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    t = det.detect_target("auto")
    assert (t.vendor, t.simd_width, t.compute_units) == ("nvidia", 32, 132)
    assert t.name == "nvidia-h100-80gb-hbm3"
    assert t.tile_block() == (64, 32) and t.simd_block() == (16, 1)


def test_fit_falls_back_to_a_smaller_tiling_when_the_preset_does_not_fit():
    t = det.fit_target(
        name="small",
        vendor="nvidia",
        simd_width=32,
        max_work_group_size=64,
        local_mem_bytes=8 * 1024,
        compute_units=1,
        source="test",
    )
    assert t.work_group_size <= 64 and t.local_mem_needed <= 8 * 1024


def test_fit_reports_when_nothing_fits():
    with pytest.raises(TargetError, match="no built-in tiling fits"):
        det.fit_target(
            name="tiny",
            vendor="x",
            simd_width=8,
            max_work_group_size=4,
            local_mem_bytes=64,
            compute_units=1,
            source="test",
        )


@pytest.mark.parametrize(
    "vendor, cpu, want",
    [
        ("NVIDIA Corporation", False, "nvidia"),
        ("Advanced Micro Devices, Inc.", False, "amd"),
        ("Intel(R) Corporation", False, "intel"),
        ("ARM", False, "arm"),
        ("QUALCOMM", False, "qualcomm"),
        ("AuthenticAMD", True, "cpu"),
    ],
)
def test_vendor_names(vendor, cpu, want):
    assert det.vendor_of(vendor, cpu) == want


@pytest.mark.parametrize(
    ("capability", "preset"),
    [((6, 1), "nvidia-sm70"), ((7, 0), "nvidia-sm70"), ((7, 5), "nvidia-sm70"),
     ((8, 0), "nvidia-sm80"), ((8, 6), "nvidia"), ((8, 7), "nvidia"), ((8, 9), "nvidia-sm89"),
     ((9, 0), "nvidia-sm89"), ((12, 0), "nvidia-sm89")],
)  # fmt: skip
def test_compute_capability_maps_to_the_nearest_older_preset(capability, preset):
    assert det.nvidia_preset_for(capability) == preset


def test_cuda_detection_says_which_preset_it_chose(monkeypatch):
    import torch

    props = types.SimpleNamespace(
        name="NVIDIA H200", warp_size=32, max_threads_per_block=1024,
        shared_memory_per_block=48 * 1024, multi_processor_count=132, major=9, minor=0,
    )  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    t = det.detect_cuda()
    assert "compute capability 9.0 -> preset nvidia-sm89" in t.source
    assert t.tile_block() == (128, 32) and t.compute_units == 132
