"""The cross-target view: what one pruned model of the run would skip, and save, on every preset.

A model pruned for one GPU can be compiled for any other (a block is kept unless it is all zero),
so the report shows, for the tile and SIMD cells at the run's headline sparsity, the skippable
fraction and the analytically modelled speedup on each preset target.
"""

from __future__ import annotations

from pathlib import Path

from gpuprune.report.results import RunResults, Section

COLUMNS = ["model", "on target", "block", "skippable", "modelled speedup"]
NOTE = (
    "The run's tile and SIMD models compiled for every preset: a block is skipped only where it "
    "is all zero in that target's block shape; speedup from the analytical latency model."
)


def _cell_model(res: RunResults, method: str, sparsity: float):
    """The finished cell of ``method`` nearest ``sparsity``: (model, image shape, sparsity)."""
    from gpuprune import prune as gp
    from gpuprune.models import create_model

    done = [r.sparsity for r in res.rows if r.method == method and r.status == "ok"]
    if not done:
        return None
    sparsity = min(done, key=lambda s: abs(s - sparsity))
    path = Path(res.run_dir) / "cells" / f"{method}-{sparsity:g}" / "model.safetensors"
    if not path.exists():
        return None
    model_cfg = (res.summary.get("config") or {}).get("model") or {}
    image = (res.summary.get("data") or {}).get("image") or [3, 32, 32]
    info = gp.read_pruned(path)[0].get("extra", {})
    model = create_model(
        model_cfg.get("name", "vgg16"),
        num_classes=int(info.get("num_classes", 10)),
        in_channels=int(image[0]),
        width=float(model_cfg.get("width", 1.0)),
    )
    gp.load_pruned(path, model)
    return model.eval(), tuple(image), sparsity


def cross_target_rows(res: RunResults, batch: int = 8) -> list[list[str]]:
    """Rows of :data:`COLUMNS` for the run's tile and SIMD cells at its target sparsity."""
    from gpuprune.kernels import variant_for_method
    from gpuprune.latency import cross_target

    config = res.summary.get("config") or {}
    sparsity = float((config.get("targets") or {}).get("sparsity") or 0.75)
    rows = []
    for method in ("tile", "simd"):
        loaded = _cell_model(res, method, sparsity)
        if loaded is None:
            continue
        model, image, cell_sparsity = loaded
        variant = variant_for_method(method)
        for r in cross_target(model, batch=batch, input_size=image):
            if r["variant"] != variant:
                continue
            rows.append([
                f"{method} @ {cell_sparsity:g}", r["target"], r["block"],
                f"{r['skippable']:.3f}", f"{r['modelled_speedup']:.2f}x",
            ])  # fmt: skip
    return rows


def cross_target_section(res: RunResults) -> Section:
    return Section("Cross-target view", NOTE, COLUMNS, cross_target_rows(res))
