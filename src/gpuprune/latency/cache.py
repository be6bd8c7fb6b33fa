"""On-disk cache of measured latency curves: one JSON file per (device, backend, target, shape).

The folder is ``~/.cache/gpuprune/latency/`` unless ``GPUPRUNE_LATENCY_CACHE`` names another.
A file is named by a hash of its key and also stores the key, so a changed device, backend,
kernel source, tiling, variant, layer shape, batch or probe set is a miss (the invalidation),
and a hash collision or a file from an older format is ignored rather than trusted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from gpuprune.arch import Target
from gpuprune.fileio import read_record, write_record
from gpuprune.latency.curve import LatencyCurve

ENV_CACHE = "GPUPRUNE_LATENCY_CACHE"
FORMAT = "gpuprune-latency/1"


def cache_dir() -> Path:
    """The cache folder (the env var wins over ``~/.cache/gpuprune/latency``)."""
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else Path.home() / ".cache" / "gpuprune" / "latency"


def target_key(target: Target) -> str:
    """A target's kernel-relevant fields (not its name or source) as a short hash."""
    fields = {k: v for k, v in target.to_dict().items() if k not in ("name", "source")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@functools.cache
def kernel_sources_digest() -> str:
    """A hash of the kernels' source files: a curve timed with other kernel code is a miss
    (a faster kernel must not be priced by the old one's curves)."""
    import gpuprune.kernels

    root = Path(gpuprune.kernels.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix in (".c", ".h", ".cl", ".py"):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def make_key(
    device: str, backend: str, target: Target, variant: str, shape: str, points: tuple[float, ...]
) -> dict[str, Any]:
    """The cache key of one curve, as a JSON-ready mapping."""
    return {
        "device": device,
        "backend": backend,
        "kernels": kernel_sources_digest(),
        "target": target_key(target),
        "variant": variant,
        "shape": shape,
        "points": [float(p) for p in points],
    }


class LatencyCache:
    """Read and write curves under ``root`` (default :func:`cache_dir`)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()

    def path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.root / f"{digest}.json"

    def get(self, key: dict[str, Any]) -> LatencyCurve | None:
        """The cached curve for ``key``, or None (missing, unreadable, edited, other key or
        format): a cached curve is reused only when its checksum matches."""
        try:
            data = read_record(self.path(key))
            if data.get("format") != FORMAT or data.get("key") != key:
                return None
            curve = LatencyCurve.from_dict(data["curve"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return LatencyCurve(curve.kept, curve.ms, "cached")

    def put(self, key: dict[str, Any], curve: LatencyCurve) -> None:
        """Store ``curve`` under ``key`` (atomically)."""
        data = {"format": FORMAT, "key": key, "curve": curve.to_dict()}
        write_record(self.path(key), data)
