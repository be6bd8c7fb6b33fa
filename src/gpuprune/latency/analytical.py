"""Analytical latency: FLOPs and bytes of the kept blocks against a device's throughput.

Used where a layer cannot be measured (no device for the backend, a preset for a GPU that is not
here) and for the cross-target view. For the tiled skip-GEMM of a Target and a kept fraction
``f`` of the variant's blocks (``f_slab`` of the K slabs the work-groups stage; ``= f`` for tile
skipping, 1 unless known for SIMD skipping, whose work-groups stage the union of their
row-groups' slabs):

* FLOPs  = 2 * M_pad * K_pad * N * f
* bytes  = 4 * (M_pad * K_pad * f * n_tiles         weights, re-read by every N tile
              + K_pad * N_pad * m_tiles * f_slab     input slabs, staged per row tile
              + M * N)                               output
* time   = launch + max(FLOPs / (peak * efficiency * busy), bytes / bandwidth)

``busy = min(1, work-groups / compute units)``: a layer with fewer tiles than compute units
leaves some idle, which is what makes small tiles win on small layers. The numbers in
:data:`THROUGHPUT` are order-of-magnitude defaults per vendor (public fp32 peak per compute unit
and memory bandwidth of the device each preset is taken from); pass your own for a real device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpuprune.arch import Target
from gpuprune.errors import UserError
from gpuprune.kernels.format import block_for
from gpuprune.latency.geometry import LayerGeometry

FLOAT_BYTES = 4


@dataclass(frozen=True)
class Throughput:
    """What one device sustains, for the analytical model."""

    gflops_per_cu: float  # fp32 peak per compute unit (SM, CU, EU, core)
    gbytes_per_s: float  # memory bandwidth seen by the kernel
    launch_us: float  # fixed cost per kernel launch
    efficiency: float = 0.5  # fraction of peak a tiled OpenCL GEMM reaches


# Public fp32 peak / compute units and bandwidth of the device behind each vendor's presets.
THROUGHPUT: dict[str, Throughput] = {
    "nvidia": Throughput(434.0, 936.0, 5.0),  # RTX 3090: 35.6 TFLOP/s over 82 SMs, 936 GB/s
    "amd": Throughput(223.0, 1024.0, 5.0),  # MI50 / Radeon VII: 13.4 TFLOP/s over 60 CUs, 1 TB/s
    "intel": Throughput(23.0, 68.0, 10.0),  # Iris Xe: 2.2 TFLOP/s over 96 EUs, LPDDR4x
    "arm": Throughput(60.0, 30.0, 20.0),  # Mali-G77 MC16 class: ~1 TFLOP/s, LPDDR4x
    "qualcomm": Throughput(200.0, 44.0, 20.0),  # Adreno 650 class: ~1.2 TFLOP/s, LPDDR5
    # AVX2 core: 8 lanes x 2 FMA x 3 GHz, DDR4; PoCL runs our OpenCL kernel at a few percent of
    # peak (2-5 GFLOP/s measured on a 2-core EPYC), hence the low efficiency.
    "cpu": Throughput(96.0, 20.0, 20.0, 0.03),
}
DEFAULT_VENDOR = "cpu"


def throughput_for(target: Target) -> Throughput:
    """The default :class:`Throughput` of ``target``'s vendor (a CPU's for unknown vendors)."""
    return THROUGHPUT.get(target.vendor, THROUGHPUT[DEFAULT_VENDOR])


def analytical_ms(
    geom: LayerGeometry,
    target: Target,
    variant: str = "tile",
    kept: float = 1.0,
    kept_slabs: float | None = None,
    throughput: Throughput | None = None,
) -> float:
    """Modelled milliseconds of one layer with ``kept`` of the variant's blocks kept.

    Args:
        geom: the layer and batch.
        target: the GPU and its tiling (tile shape, work-group size, compute units, vendor).
        variant: "tile" or "simd" (decides the block whose kept fraction ``kept`` is); "dense"
            walks every block whatever ``kept`` says.
        kept: kept fraction of blocks in [0, 1] (1 = dense).
        kept_slabs: kept fraction of K slabs that work-groups stage; default ``kept`` for tile
            and dense, 1 for simd.
        throughput: device numbers; default :func:`throughput_for` the target.
    """
    if not 0.0 <= kept <= 1.0:
        raise UserError(f"kept fraction {kept} is outside [0, 1]", "pass a fraction of blocks")
    if variant == "dense":  # the dense kernel walks every block, pruned or not
        kept = kept_slabs = 1.0
    tp = throughput or throughput_for(target)
    bm, bk = block_for(target, variant)
    m_pad = math.ceil(geom.m / bm) * bm
    k_pad = math.ceil(geom.k / bk) * bk
    m_tiles, n_tiles = math.ceil(geom.m / target.mwg), math.ceil(geom.n / target.nwg)
    k_pad_slab = math.ceil(geom.k / target.kwg) * target.kwg
    if kept_slabs is None:
        kept_slabs = 1.0 if variant == "simd" else kept
    flops = 2.0 * m_pad * k_pad * geom.n * kept
    bytes_ = FLOAT_BYTES * (
        m_pad * k_pad * kept * n_tiles
        + k_pad_slab * n_tiles * target.nwg * m_tiles * kept_slabs
        + geom.m * geom.n
    )
    busy = min(1.0, m_tiles * n_tiles / max(target.compute_units, 1))
    gflops = tp.gflops_per_cu * target.compute_units * tp.efficiency * busy
    compute_s = flops / (gflops * 1e9)
    memory_s = bytes_ / (tp.gbytes_per_s * 1e9)
    return tp.launch_us * 1e-3 + max(compute_s, memory_s) * 1e3
