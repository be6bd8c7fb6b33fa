"""Preset Targets, with tile values from CLBlast's SGEMM tuning database.

Tile tuples come from CLBlast ``src/database/kernels/xgemm/xgemm_32.hpp`` (kernel 0, the
local-memory tiled XGEMM); SIMD widths and local-memory sizes from the vendors' programming guides.
``source`` on each preset says which entry was used. Register your own with
``TARGETS.add("my-gpu", Target(...))`` or keep it in a TOML/YAML file (``Target.load``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpuprune.arch.target import Target
from gpuprune.errors import TargetError
from gpuprune.registry import Registry

TARGETS: Registry[Target] = Registry("target")

KIB = 1024


def _preset(**kw) -> Target:
    return TARGETS.add(kw["name"], Target(**kw))


_preset(
    name="nvidia",
    vendor="nvidia",
    simd_width=32,  # warp
    max_work_group_size=1024,
    local_mem_bytes=48 * KIB,  # shared memory per block without opt-in
    compute_units=82,
    mwg=64,
    nwg=64,
    kwg=32,
    mdimc=16,
    ndimc=8,
    vwm=4,
    vwn=4,
    source="CLBlast xgemm_32 NVIDIA GeForce RTX 3090 (SM8.6): 64x64x32, 16x8 WG, VWM/VWN 4/4",
)
# More NVIDIA generations, for detection by compute capability (arch.detect.NVIDIA_BY_CC).
_preset(
    name="nvidia-sm70",
    vendor="nvidia",
    simd_width=32,
    max_work_group_size=1024,
    local_mem_bytes=48 * KIB,
    compute_units=80,
    mwg=64,
    nwg=32,
    kwg=32,
    mdimc=16,
    ndimc=8,
    vwm=4,
    vwn=4,
    source="CLBlast xgemm_32 NVIDIA V100-PCIE-16GB (SM7.0): 64x32x32, 16x8 WG, VWM/VWN 4/4",
)
_preset(
    name="nvidia-sm80",
    vendor="nvidia",
    simd_width=32,
    max_work_group_size=1024,
    local_mem_bytes=48 * KIB,
    compute_units=108,
    mwg=32,
    nwg=64,
    kwg=32,
    mdimc=8,
    ndimc=16,
    vwm=4,
    vwn=4,
    source="CLBlast xgemm_32 NVIDIA A100-PCIE-40GB (SM8.0): 32x64x32, 8x16 WG, VWM/VWN 4/4",
)
_preset(
    name="nvidia-sm89",
    vendor="nvidia",
    simd_width=32,
    max_work_group_size=1024,
    local_mem_bytes=48 * KIB,
    compute_units=128,
    mwg=128,
    nwg=64,
    kwg=32,
    mdimc=32,
    ndimc=8,
    vwm=4,
    vwn=4,
    source="CLBlast xgemm_32 NVIDIA GeForce RTX 4090 (SM8.9): 128x64x32, 32x8 WG, VWM/VWN 4/4",
)
_preset(
    name="amd-gcn",
    vendor="amd",
    simd_width=64,  # wavefront on GCN/CDNA
    max_work_group_size=256,
    local_mem_bytes=64 * KIB,  # LDS per CU
    compute_units=60,
    mwg=64,
    nwg=64,
    kwg=32,
    mdimc=16,
    ndimc=8,
    vwm=4,
    vwn=4,
    source="CLBlast xgemm_32 AMD vendor default: 64x64x32, 16x8 WG, VWM/VWN 4/4",
)
_preset(
    name="amd-rdna",
    vendor="amd",
    simd_width=32,  # wave32 on RDNA
    max_work_group_size=1024,
    local_mem_bytes=64 * KIB,
    compute_units=96,
    mwg=64,
    nwg=32,
    kwg=32,
    mdimc=16,
    ndimc=8,
    vwm=4,
    vwn=4,
    source="CLBlast xgemm_32 AMD Radeon RX 7900 XTX (gfx1100): 64x32x32, 16x8 WG, VWM/VWN 4/4",
)
_preset(
    name="intel",
    vendor="intel",
    simd_width=16,  # sub-group 16 (Xe); see intel-simd8 for SIMD8 code
    max_work_group_size=512,
    local_mem_bytes=64 * KIB,  # SLM per sub-slice
    compute_units=96,
    mwg=64,
    nwg=64,
    kwg=32,
    mdimc=16,
    ndimc=8,
    vwm=4,
    vwn=2,
    source="CLBlast xgemm_32 Intel GPU vendor default: 64x64x32, 16x8 WG, VWM/VWN 4/2",
)
_preset(
    name="intel-simd8",
    vendor="intel",
    simd_width=8,  # sub-group 8, what CLBlast assumes for Intel
    max_work_group_size=512,
    local_mem_bytes=64 * KIB,
    compute_units=96,
    mwg=64,
    nwg=64,
    kwg=32,
    mdimc=16,
    ndimc=8,
    vwm=4,
    vwn=2,
    source="CLBlast xgemm_32 Intel GPU vendor default: 64x64x32, 16x8 WG, VWM/VWN 4/2",
)
_preset(
    name="mali",
    vendor="arm",
    simd_width=16,  # Valhall G57/G77 lock-step width (G52/G76: 8)
    max_work_group_size=384,
    local_mem_bytes=32 * KIB,
    compute_units=16,
    mwg=32,
    nwg=64,
    kwg=32,
    mdimc=8,
    ndimc=16,
    vwm=4,
    vwn=4,
    source="CLBlast xgemm_32 ARM Mali vendor default: 32x64x32, 8x16 WG, VWM/VWN 4/4",
)
_preset(
    name="adreno",
    vendor="qualcomm",
    simd_width=64,  # half wave (full wave 128)
    max_work_group_size=1024,
    local_mem_bytes=32 * KIB,
    compute_units=6,
    mwg=64,
    nwg=64,
    kwg=32,
    mdimc=16,
    ndimc=8,
    vwm=4,
    vwn=4,
    source="CLBlast xgemm_32 Qualcomm Adreno 640/650/660/750: 64x64x32, 16x8 WG, VWM/VWN 4/4",
)
_preset(
    name="cpu-pocl",
    vendor="cpu",
    simd_width=8,  # PoCL's preferred work-group multiple on AVX2 (8 fp32 lanes)
    max_work_group_size=4096,
    local_mem_bytes=1024 * KIB,  # PoCL pthread reports 1 MiB or more
    compute_units=2,
    mwg=32,
    nwg=32,
    kwg=32,
    mdimc=8,
    ndimc=8,
    vwm=4,
    vwn=4,
    source="CLBlast xgemm_32 global fallback: 32x32x32, 8x8 WG, VWM/VWN 4/4",
)
_preset(
    name="pocl-tuned",
    vendor="cpu",
    simd_width=8,
    max_work_group_size=4096,
    local_mem_bytes=1024 * KIB,
    compute_units=2,
    mwg=64,
    nwg=64,
    kwg=16,
    mdimc=8,
    ndimc=8,
    vwm=4,
    vwn=4,
    source="gpuprune codesign on PoCL 3.0 (AMD EPYC, 2 threads): the tiling chosen for most "
    "VGG16 layers, dense and pruned (benchmarks/results/codesign-amd-epyc-b8*.json): 64x64x16, "
    "8x8 WG; larger blocks than cpu-pocl (64x16 tiles, 8x1 SIMD vectors)",
)


def list_targets() -> list[str]:
    return TARGETS.names()


def get_target(
    spec: str | os.PathLike[str] | Target | Mapping[str, Any], *, origin: str = "target"
) -> Target:
    """A Target from a preset name, a TOML/YAML file path, a Target (returned as is), or the
    plain fields of one (``Target.to_dict()``, checked; ``origin`` names it in errors)."""
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, Mapping):  # the one place plain data becomes a Target
        return Target.from_dict(dict(spec), origin=origin)
    if not isinstance(spec, str | os.PathLike):
        raise TargetError(
            f"{origin} is a {type(spec).__name__}, not a preset name, file path or Target",
            f"pass a name such as {TARGETS.names()[0]!r} (see `gpuprune targets`)",
        )
    text = os.fspath(spec)
    preset = TARGETS.find(text)  # names are case-insensitive: 'CPU-POCL' is 'cpu-pocl'
    if preset is not None:
        return preset
    if Path(text).suffix.lower() in (".toml", ".yaml", ".yml"):
        return Target.load(text)
    raise TargetError(
        f"unknown target {text!r}",
        f"choose one of: {', '.join(TARGETS.names())}, or give a .toml/.yaml target file",
    )
