"""The experiment's co-design step (config section ``codesign``): a per-layer tiling search.

On the dense model's prunable layers, at ``codesign.batch_size`` (default: the latency batch),
the preset tiling of ``prune.target`` and ``codesign.candidates`` sampled tilings are timed with
:func:`gpuprune.latency.codesign` (each on a weight pruned with its own block), and every
layer's fastest is kept. The outcome is stored as ``codesign.json`` in the run folder and in the
summary; the report shows it as a table and checks ``targets.codesign_share``.

It only measures: the cells are still pruned and compiled with the preset's blocks, since a
per-layer tiling changes each layer's block shape, and so every cell's accuracy. The stored
``layer_targets`` can be passed to ``gpuprune prune --layer-targets`` to prune with them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from gpuprune.data import ImageData
from gpuprune.experiment.cell import build_model, input_shape, prunable_layers
from gpuprune.experiment.config import ExperimentConfig
from gpuprune.fileio import read_record, write_record
from gpuprune.latency.geometry import LayerGeometry

if TYPE_CHECKING:
    from gpuprune.latency.codesign import Measure

CODESIGN_FILE = "codesign.json"
console = Console(stderr=True)


def codesign_batch(cfg: ExperimentConfig) -> int:
    """Images per timed layer call: the section's own batch, else the latency batch."""
    return cfg.codesign.batch_size or cfg.latency.batch_size


def layer_geometries(cfg: ExperimentConfig, data: ImageData) -> dict[str, LayerGeometry]:
    """The geometry of every layer the methods prune, at :func:`codesign_batch`."""
    from gpuprune.latency.geometry import model_geometries

    model = build_model(cfg, data)
    layers = prunable_layers(cfg, model)
    return model_geometries(model, codesign_batch(cfg), input_shape(data), names=layers)


def codesign_key(cfg: ExperimentConfig, backend: str, geoms: dict[str, LayerGeometry]) -> str:
    """What the search depends on.

    The layers' geometries stand for the model, data shape and batch (the weights are synthetic,
    so training settings do not matter); the target's full definition, not its name, so an
    edited target file is searched again; and the backend actually used (``auto`` resolved).
    """
    from gpuprune.arch import get_target

    return cfg.digest("codesign", target=get_target(cfg.prune.target).to_dict(),
                      backend=backend, layers={n: g.key() for n, g in geoms.items()})  # fmt: skip


def _device_name(backend: Any) -> str | None:
    """The device the backend times on; a plain "cpu" is made specific with the CPU model."""
    try:
        name = backend.device
    except Exception:  # only a label for the report: never fail the run over it
        return None
    if name == "cpu":
        from gpuprune.bench.environment import cpu_name

        return f"cpu ({cpu_name()})"
    return name


def _search(cfg: ExperimentConfig, geoms: dict[str, LayerGeometry], backend: str,
            measure: Measure | None, progress: bool) -> dict[str, Any]:  # fmt: skip
    """Run the search with a progress bar; returns ``CodesignResult.to_dict()``."""
    # imported per call, so a test's replacement of backend_measure is the one used
    from gpuprune.latency.codesign import backend_measure, candidates, codesign
    from gpuprune.progress import progress_bar

    c = cfg.codesign
    measure = measure or backend_measure(backend)
    steps = len(geoms) * len(candidates(cfg.prune.target, c.candidates, c.seed))
    bar = progress_bar("codesign {task.description}", console=console, transient=True,
                       disable=not progress)  # fmt: skip
    with bar:
        task = bar.add_task("", total=steps)
        result = codesign(
            geoms, cfg.prune.target, backend, c.candidates, c.seed, c.variant, c.sparsity,
            measure=measure, progress=lambda what: bar.update(task, advance=1, description=what),
        )  # fmt: skip
    return {**result.to_dict(), "layer_targets": result.targets()}


def run_codesign(cfg: ExperimentConfig, run_dir: Path, data: ImageData,
                 progress: bool = True, *, measure: Measure | None = None
                 ) -> dict[str, Any] | None:  # fmt: skip
    """Search each prunable layer's fastest tiling and store ``run_dir/codesign.json``.

    Returns the stored record (reused when its key matches), or None when the section is off.
    ``measure`` replaces timing on the backend (tests); the backend is still resolved.

    Raises:
        UserError: the backend cannot run, or a layer's preset tiling cannot run on it.
    """
    c = cfg.codesign
    if c.backend is None:
        return None
    from gpuprune.nn import resolve_backend

    backend, _ = resolve_backend(c.backend)  # "auto" becomes the backend that will time
    geoms = layer_geometries(cfg, data)
    key = codesign_key(cfg, backend.name, geoms)
    path = Path(run_dir) / CODESIGN_FILE
    done = read_record(path)  # reused only when made with this key (damaged or stale: redone)
    if done.get("key") == key and isinstance(done.get("layers"), list):
        return done
    started = time.perf_counter()
    result = _search(cfg, geoms, backend.name, measure, progress)
    record = {
        "key": key,
        "backend": backend.name,
        "device": _device_name(backend),
        "model": cfg.model.name,
        "batch": codesign_batch(cfg),
        "candidates": c.candidates,
        "seed": c.seed,
        **result,
        "seconds": time.perf_counter() - started,
    }
    record = write_record(path, record)  # checksummed: a flipped digit is redone, not reused
    if progress:
        console.print(f"co-design on {backend.name}: {record['faster_10pct']} of "
                      f"{record['total_layers']} layers have a tiling >= 10% faster than the "
                      f"preset ({record['seconds']:.0f} s)")  # fmt: skip
    return record
