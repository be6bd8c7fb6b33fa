"""The latency model: per layer, backend and target, latency as a function of kept blocks.

``LatencyModel(backend="opencl", target="cpu-pocl").curve(geom)`` measures the layer at a few
kept fractions (:data:`PROBES`) through the backend, caches the points on disk, and returns a
piecewise-linear :class:`LatencyCurve`. ``backend="analytical"``, or a backend with no device
here (when ``fallback`` is on), gives the analytical model's curve at the same points instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from gpuprune.arch import Target, get_target
from gpuprune.errors import UserError
from gpuprune.kernels import Backend, get_backend
from gpuprune.latency.analytical import Throughput, analytical_ms
from gpuprune.latency.cache import LatencyCache, make_key
from gpuprune.latency.curve import LatencyCurve
from gpuprune.latency.geometry import LayerGeometry
from gpuprune.latency.measure import Timer, measure_layer

PROBES = (0.125, 0.25, 0.5, 1.0)  # kept fractions measured per layer
ANALYTICAL = "analytical"


def device_name(backend: Backend) -> str:
    """A stable name of the device a backend runs on (the CPU model for host backends)."""
    name = backend.device
    if name == "cpu":
        from gpuprune.bench.environment import cpu_name

        name = f"{cpu_name()} x{os.cpu_count()}"
    return name


class LatencyModel:
    """Per-layer latency curves for one backend, target and kernel variant.

    Args:
        backend: a kernel backend name ("opencl", "cpu", "triton", "reference") or "analytical".
        target: Target, preset name or file whose tiling the kernels use.
        variant: "tile", "simd" or "dense": which blocks the kept fraction counts.
        probes: kept fractions measured per layer.
        cache: a :class:`LatencyCache`, or None for the default folder; ``False`` disables it.
        timer: ``timer(fn) -> ms`` (default: minimum of a few runs after a warm-up).
        fallback: use the analytical model when the backend has no device here, instead of
            raising its UserError.
        throughput: device numbers for the analytical model (default: the vendor's).
        progress: ``progress(layer_name)`` called before each measured layer.
    """

    def __init__(
        self,
        backend: str = ANALYTICAL,
        target: Target | str = "cpu-pocl",
        variant: str = "tile",
        probes: tuple[float, ...] = PROBES,
        cache: LatencyCache | None | bool = None,
        timer: Timer | None = None,
        fallback: bool = True,
        throughput: Throughput | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.target = get_target(target)
        self.variant = variant
        self.probes = tuple(sorted(float(p) for p in probes))
        if not self.probes or not all(0 < p <= 1 for p in self.probes):
            raise UserError(f"probes {probes} must be kept fractions in (0, 1]", "use (0.25, 1.0)")
        self.timer = timer
        self.throughput = throughput
        self.progress = progress
        self.notes: list[str] = []
        self._curves: dict[str, LatencyCurve] = {}
        self.backend: Backend | None = None
        self.backend_name = backend
        if backend != ANALYTICAL:
            be = get_backend(backend)
            try:
                be.check_available()
                self.backend = be
            except UserError as err:
                if not fallback:
                    raise
                self.notes.append(f"backend {backend} unavailable ({err.problem}); analytical")
                self.backend_name = ANALYTICAL
        self.device = device_name(self.backend) if self.backend else f"model:{self.target.vendor}"
        self.cache = None if cache is False or self.backend is None else (cache or LatencyCache())

    @property
    def measured(self) -> bool:
        """True when curves come from timing a backend, False for the analytical model."""
        return self.backend is not None

    def curve(self, geom: LayerGeometry) -> LatencyCurve:
        """The layer's curve: from memory, the disk cache, a measurement, or the model."""
        shape = geom.key()
        if shape in self._curves:
            return self._curves[shape]
        if self.backend is None:
            points = {
                p: analytical_ms(geom, self.target, self.variant, p, throughput=self.throughput)
                for p in self.probes
            }
            curve = LatencyCurve.from_points(points, ANALYTICAL)
        else:
            key = make_key(
                self.device, self.backend.name, self.target, self.variant, shape, self.probes
            )
            curve = self.cache.get(key) if self.cache else None
            if curve is None:
                if self.progress:
                    self.progress(geom.name)
                points = {
                    p: measure_layer(self.backend, geom, self.target, self.variant, p, self.timer)
                    for p in self.probes
                }
                curve = LatencyCurve.from_points(points)
                if self.cache:
                    self.cache.put(key, curve)
        self._curves[shape] = curve
        return curve

    def latency(self, geom: LayerGeometry, kept: float) -> float:
        """Estimated milliseconds of the layer with ``kept`` of its blocks kept."""
        return self.curve(geom)(kept)
