"""What a result was measured on: device, versions, commit. Stored beside every result set."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import torch


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The SIMD level PyTorch's CPU kernels run at (e.g. AVX2, AVX512): float reductions, and so
    trained accuracies, differ between levels."""
    return torch.backends.cpu.get_cpu_capability()


def opencl_device_name() -> str | None:
    try:
        from gpuprune.kernels.opencl.context import get_device

        return get_device().name
    except Exception:  # no OpenCL here: recorded as absent
        return None


def openvino_default_precision() -> str | None:
    """The inference precision OpenVINO picks on this CPU when not told (bf16 where the CPU has
    native bf16): the benchmarks pin fp32, and record this so readers know what a default
    OpenVINO deployment would run."""
    try:
        import openvino as ov

        return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    except Exception:  # not installed, or no CPU plugin: recorded as absent
        return None


def commit() -> str | None:
    """The checkout's commit, with ``+changes`` when the package's own files differ from it (a
    result measured on uncommitted code says so)."""
    package = Path(__file__).resolve().parents[1]  # the checkout gpuprune runs from
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=package)  # fmt: skip
        sha = out.stdout.strip()
        if not sha:
            return None
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], capture_output=True,
                              timeout=5, cwd=package)  # fmt: skip
        return sha + "+changes" if diff.returncode == 1 else sha
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_name(),
        "cpu_isa": cpu_isa(),
        "cpu_threads": torch.get_num_threads(),
        "opencl_device": opencl_device_name(),
        "cuda_device": cuda,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyopencl": _version("pyopencl"),
        "pocl": _version("pocl-binary-distribution"),
        "pyclblast": _version("pyclblast"),
        "triton": _version("triton"),
        "openvino": _version("openvino"),
        "openvino_default_precision": openvino_default_precision(),
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "commit": commit(),
        # other work on the machine skews timings; recorded so readers can judge the noise
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        # libgomp's wait policy: PASSIVE keeps OpenMP pools (torch, the CPU kernel) from spinning
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def device_slug(env: dict) -> str:
    """File name for a result set: the GPU if there is one, else the CPU."""
    name = env.get("cuda_device") or env.get("cpu") or "device"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
