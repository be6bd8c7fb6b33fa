"""Describe this machine's GPU (or OpenCL CPU device) as a Target.

Hardware limits (SIMD width, work-group limit, local memory, compute units) are read from the
device; the GEMM tiling starts from the vendor preset and shrinks until it fits those limits.

SIMD width, by what the device exposes (first that answers):
NVIDIA ``CL_DEVICE_WARP_SIZE_NV``; AMD ``CL_DEVICE_WAVEFRONT_WIDTH_AMD``; Intel
``CL_DEVICE_SUB_GROUP_SIZES_INTEL`` (16 when offered, else the largest); otherwise the preferred
work-group size multiple of a trivial kernel, which drivers set to the SIMD width.
"""

from __future__ import annotations

import re

from gpuprune.arch.presets import TARGETS
from gpuprune.arch.target import Target
from gpuprune.errors import DeviceNotFoundError, TargetError, UserError

NO_DEVICE_FIX = (
    "install a GPU driver with OpenCL, or PoCL for a CPU OpenCL device "
    "('make setup' or 'pip install pyopencl pocl-binary-distribution'); "
    "or pick a preset with --target (see 'gpuprune targets')"
)

# Fallback tilings tried in order when the vendor preset does not fit the device.
_FALLBACK_TILINGS = (
    {"mwg": 64, "nwg": 64, "kwg": 32, "mdimc": 16, "ndimc": 8, "vwm": 4, "vwn": 4},
    {"mwg": 32, "nwg": 32, "kwg": 32, "mdimc": 8, "ndimc": 8, "vwm": 4, "vwn": 4},
    {"mwg": 32, "nwg": 32, "kwg": 16, "mdimc": 8, "ndimc": 8, "vwm": 1, "vwn": 1},
    {"mwg": 16, "nwg": 16, "kwg": 16, "mdimc": 4, "ndimc": 4, "vwm": 1, "vwn": 1},
)
_TILING_FIELDS = ("mwg", "nwg", "kwg", "mdimc", "ndimc", "vwm", "vwn", "simd_k")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def vendor_of(vendor_string: str, is_cpu: bool = False) -> str:
    """Normalise an OpenCL/CUDA vendor string to a preset vendor name."""
    if is_cpu:
        return "cpu"
    v = vendor_string.lower()
    for key, name in (
        ("nvidia", "nvidia"),
        ("advanced micro", "amd"),
        ("amd", "amd"),
        ("intel", "intel"),
        ("arm", "arm"),
        ("qualcomm", "qualcomm"),
    ):
        if key in v:
            return name
    return v or "unknown"


def base_preset(vendor: str, simd_width: int) -> Target:
    """The preset whose tiling detection starts from, for a vendor and SIMD width."""
    name = {
        "nvidia": "nvidia",
        "amd": "amd-gcn" if simd_width >= 64 else "amd-rdna",
        "intel": "intel" if simd_width >= 16 else "intel-simd8",
        "arm": "mali",
        "qualcomm": "adreno",
    }.get(vendor, "cpu-pocl")
    return TARGETS.get(name)


# NVIDIA presets by the compute capability of the GPU their CLBlast tuning entry was measured on
NVIDIA_BY_CC = {
    (7, 0): "nvidia-sm70",
    (8, 0): "nvidia-sm80",
    (8, 6): "nvidia",
    (8, 9): "nvidia-sm89",
}


def nvidia_preset_for(capability: tuple[int, int]) -> str:
    """The NVIDIA preset nearest a compute capability: the newest one not newer than the device
    (a newer GPU has at least the older one's resources; an older GPU than every preset gets
    the oldest). E.g. (9, 0) H100/H200 -> "nvidia-sm89", (7, 5) Turing -> "nvidia-sm70"."""
    known = sorted(NVIDIA_BY_CC)
    fitting = [cc for cc in known if cc <= tuple(capability)]
    return NVIDIA_BY_CC[fitting[-1] if fitting else known[0]]


def fit_target(
    *,
    name: str,
    vendor: str,
    simd_width: int,
    max_work_group_size: int,
    local_mem_bytes: int,
    compute_units: int,
    source: str,
    base: Target | None = None,
) -> Target:
    """The first tiling (``base`` or the vendor preset, then smaller fallbacks) valid here."""
    base = base or base_preset(vendor, simd_width)
    tilings = [{f: getattr(base, f) for f in _TILING_FIELDS}, *_FALLBACK_TILINGS]
    hw = {
        "name": name,
        "vendor": vendor,
        "simd_width": simd_width,
        "max_work_group_size": max_work_group_size,
        "local_mem_bytes": local_mem_bytes,
        "compute_units": compute_units,
    }
    last: TargetError | None = None
    for tiling in tilings:
        try:
            return Target(**hw, **tiling, source=f"{source}; tiling from {base.name} preset")
        except TargetError as err:
            last = err
    raise TargetError(
        f"no built-in tiling fits the detected device {name!r} ({last})",
        "describe it in a .toml target file and pass --target FILE",
    )


# ---- OpenCL ----------------------------------------------------------------------------------
def _opencl_simd_width(cl, device) -> tuple[int, str]:
    exts = device.extensions.split()
    probes = (
        ("cl_nv_device_attribute_query", "warp_size_nv", "CL_DEVICE_WARP_SIZE_NV"),
        ("cl_amd_device_attribute_query", "wavefront_width_amd", "CL_DEVICE_WAVEFRONT_WIDTH_AMD"),
    )
    for ext, attr, label in probes:
        if ext in exts:
            try:
                return int(getattr(device, attr)), label
            except Exception:  # driver lists the extension but not the query
                pass
    if "cl_intel_required_subgroup_size" in exts:
        try:
            sizes = [int(s) for s in device.sub_group_sizes_intel]
            return (16 if 16 in sizes else max(sizes)), "CL_DEVICE_SUB_GROUP_SIZES_INTEL"
        except Exception:
            pass
    ctx = cl.Context([device])
    prg = cl.Program(ctx, "__kernel void probe(__global float *a) { a[get_global_id(0)] = 0.0f; }")
    kernel = prg.build().probe
    info = cl.kernel_work_group_info.PREFERRED_WORK_GROUP_SIZE_MULTIPLE
    return int(kernel.get_work_group_info(info, device)), "preferred work-group size multiple"


def detect_opencl() -> Target:
    """Target for the first OpenCL GPU (or, failing that, the first OpenCL device of any type)."""
    try:
        import pyopencl as cl
    except ImportError:
        raise DeviceNotFoundError("pyopencl is not installed", NO_DEVICE_FIX) from None
    try:
        devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    except Exception:  # no ICD loader / no platform: pyopencl raises LogicError
        devices = []
    if not devices:
        raise DeviceNotFoundError("no OpenCL platform or device found", NO_DEVICE_FIX)
    gpus = [d for d in devices if d.type & cl.device_type.GPU]
    device = (gpus or devices)[0]
    is_cpu = bool(device.type & cl.device_type.CPU)
    simd, how = _opencl_simd_width(cl, device)
    return fit_target(
        name=_slug(device.name),
        vendor=vendor_of(device.vendor, is_cpu),
        simd_width=simd,
        max_work_group_size=int(device.max_work_group_size),
        local_mem_bytes=int(device.local_mem_size),
        compute_units=int(device.max_compute_units),
        source=f"detected via OpenCL on {device.platform.name.strip()}: {device.name.strip()}, "
        f"SIMD width from {how}",
    )


# ---- CUDA / ROCm through torch -------------------------------------------------------------------
def detect_cuda() -> Target:
    """Target for torch's current CUDA (or ROCm) device, from its device properties."""
    import torch

    if not torch.cuda.is_available():
        raise DeviceNotFoundError("torch sees no CUDA/ROCm device", NO_DEVICE_FIX)
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    rocm = bool(getattr(torch.version, "hip", None))
    warp = int(getattr(props, "warp_size", 64 if rocm else 32))
    base, chose = None, ""
    if not rocm and hasattr(props, "major"):
        capability = (int(props.major), int(props.minor))
        base = TARGETS.get(nvidia_preset_for(capability))
        chose = f", compute capability {capability[0]}.{capability[1]} -> preset {base.name}"
    return fit_target(
        name=_slug(props.name),
        vendor="amd" if rocm else "nvidia",
        simd_width=warp,
        max_work_group_size=int(getattr(props, "max_threads_per_block", 1024)),
        local_mem_bytes=int(getattr(props, "shared_memory_per_block", 48 * 1024)),
        compute_units=int(props.multi_processor_count),
        source=f"detected via torch.cuda: {props.name}{chose}",
        base=base,
    )


def detect_target(backend: str = "auto") -> Target:
    """Detect with ``backend`` "cuda", "opencl", or "auto" (CUDA first, then OpenCL)."""
    if backend == "cuda":
        return detect_cuda()
    if backend == "opencl":
        return detect_opencl()
    if backend != "auto":
        raise UserError(f"unknown detection backend {backend!r}", "use auto, opencl or cuda")
    try:
        return detect_cuda()
    except DeviceNotFoundError:
        return detect_opencl()
