"""``gpuprune bench``: GEMM-level and end-to-end speed beside dense and sparse baselines."""

from __future__ import annotations

import os
from pathlib import Path

import click

from gpuprune.cli.output import console
from gpuprune.errors import UserError


def _floats(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None
    if any(not 0 <= v < 1 for v in vals):
        raise click.BadParameter("sparsities must be in [0, 1)")
    return vals


def _ints(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers") from None
    if any(not 1 <= v <= MAX_BATCH for v in vals):
        raise click.BadParameter(f"batch sizes must be in 1..{MAX_BATCH}")
    return vals


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(v.strip() for v in text.split(",") if v.strip())


MAX_BATCH = 4096  # a batch beyond this is a typo that would allocate gigabytes
README_SPARSITIES = (0.75, 0.9)  # the README shows these rows; the result folder keeps all


@click.command()
@click.option("--quick", is_flag=True, help="A small grid that finishes in minutes on 2 CPU cores.")
@click.option("-o", "--out", default="benchmarks/results", show_default=True, help="Result folder.")
@click.option("--batches", help="Comma-separated batch sizes, e.g. 1,16,64.")
@click.option("--sparsities", help="Comma-separated sparsities, e.g. 0.5,0.75,0.9.")
@click.option("--methods", help="Comma-separated pruning methods.")
@click.option("--layers", help="Comma-separated VGG16 layers (conv1..conv13).")
@click.option("--backends", help="Comma-separated GEMM runners (see --list).")
@click.option("--target", default=None, help="Target whose blocks are pruned and skipped.")
@click.option("--no-e2e", is_flag=True, help="Skip the end-to-end measurements.")
@click.option("--no-gemm", is_flag=True, help="Skip the per-layer GEMM measurements.")
@click.option("--e2e-width", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="VGG16 channel multiplier of the end-to-end runs.")  # fmt: skip
@click.option("--e2e-models", help="Comma-separated end-to-end models (vgg16, resnet50).")
@click.option("--e2e-methods", help="Comma-separated pruning methods run end to end.")
@click.option("--e2e-sparsities", help="Comma-separated sparsities run end to end.")
@click.option("--e2e-batches", help="Comma-separated end-to-end batch sizes, e.g. 1,16.")
@click.option("--e2e-backends",
              help="Comma-separated backends run end to end ('torch' = eager), e.g. torch,cpu.")
@click.option("--e2e-runtimes",
              help="Comma-separated dense runtimes (openvino, onnxruntime, torch-compile); "
              "'none' for none.")
@click.option("--repeats", type=click.IntRange(3, None), default=None,
              help="Timed repeats per measurement (medians are quoted).")
@click.option("--threads", type=click.IntRange(1, None), default=None,
              help="Threads for every path (torch, the CPU kernel, the runtimes); default torch's.")
@click.option("--readme", type=click.Path(dir_okay=False), help="Update this README's table.")
@click.option("--list", "list_runners", is_flag=True, help="List the GEMM runners and exit.")
@click.option("--zoo", is_flag=True,
              help="Model-zoo benchmark instead: torchvision/timm models end to end against "
                   "dense runtimes (needs torchvision and timm).")  # fmt: skip
@click.option("--zoo-models", help="Comma-separated zoo models (with --zoo).")
@click.option("--runtimes", help="Comma-separated dense runtimes to compare with (with --zoo).")
def bench(
    quick: bool,
    out: str,
    batches: str | None,
    sparsities: str | None,
    methods: str | None,
    layers: str | None,
    backends: str | None,
    target: str | None,
    no_e2e: bool,
    no_gemm: bool,
    e2e_width: float | None,
    e2e_models: str | None,
    e2e_methods: str | None,
    e2e_sparsities: str | None,
    e2e_batches: str | None,
    e2e_backends: str | None,
    e2e_runtimes: str | None,
    repeats: int | None,
    threads: int | None,
    readme: str | None,
    list_runners: bool,
    zoo: bool,
    zoo_models: str | None,
    runtimes: str | None,
) -> None:
    """Measure skip kernels against dense and sparse baselines; write JSON, a table and plots."""
    if zoo:
        _zoo(quick, out, _ints(batches), _names(methods), _names(zoo_models), _names(runtimes),
             _floats(sparsities), target)  # fmt: skip
        return
    from gpuprune.bench import results
    from gpuprune.bench.config import FULL, QUICK
    from gpuprune.bench.environment import device_slug, environment
    from gpuprune.bench.runners import RUNNERS

    if list_runners:
        for name in RUNNERS.names():
            r = RUNNERS.get(name)
            console.print(f"{name:14s} speedup vs {r.baseline}; methods: {r.methods or 'all'}")
        return
    cfg = QUICK if quick else FULL
    changes = {
        "batches": _ints(batches),
        "sparsities": _floats(sparsities),
        "methods": _names(methods),
        "layers": _names(layers),
        "runners": _names(backends),
        "target": target,
        "e2e_width": e2e_width,
        "e2e_models": _names(e2e_models),
        "e2e_methods": _names(e2e_methods),
        "e2e_sparsities": _floats(e2e_sparsities),
        "e2e_batches": _ints(e2e_batches),
        "e2e_backends": _names(e2e_backends),
        "e2e_runtimes": () if e2e_runtimes == "none" else _names(e2e_runtimes),
        "repeats": repeats,
        # asked-for repeats are all run: no time budget cutting them short at three
        "budget_s": 1e9 if repeats else None,
    }
    cfg = cfg.with_(**{k: v for k, v in changes.items() if v is not None})
    from gpuprune.bench.workloads import VGG16_CONVS
    from gpuprune.fileio import check_output

    check_output(out, flag="-o", folder=True)
    known = [f"conv{i + 1}" for i in range(len(VGG16_CONVS))]
    unknown = [name for name in cfg.layers or () if name not in known]
    if unknown:
        raise UserError(f"--layers: unknown layer {unknown[0]!r}",
                        f"choose from {known[0]}..{known[-1]}")  # fmt: skip
    if readme:
        _check_readme(readme)
    from gpuprune.arch import get_target
    from gpuprune.prune.methods import METHODS

    get_target(cfg.target)  # fail early on a bad target
    for m in (*cfg.methods, *cfg.e2e_methods):
        METHODS.get(m)
    for r in cfg.runners or ():
        RUNNERS.get(r)
    _check_e2e(cfg)

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    env = environment()
    stem = device_slug(env) + ("-quick" if quick else "")
    out_dir = Path(out)
    meta = {
        "environment": env,
        "config": {k: v for k, v in cfg.__dict__.items()},
        "layers_desc": f"{len(cfg.layers) if cfg.layers else 13} VGG16 layers",
    }
    records = _run(
        cfg, no_e2e, no_gemm, lambda recs: results.save(out_dir / f"{stem}.json", meta, recs)
    )
    if hasattr(os, "getloadavg"):  # the load can change over a long run: record both ends
        meta["environment"]["load_avg_1m_end"] = os.getloadavg()[0]
    results.save(out_dir / f"{stem}.json", meta, records)
    table = results.markdown_table(meta, records)
    from gpuprune.fileio import atomic_write_text

    atomic_write_text(out_dir / f"{stem}.md", table)
    plots = results.plot(records, out_dir / stem)
    console.print(table)
    console.print(f"results: {out_dir / (stem + '.json')}; plots: {', '.join(map(str, plots))}")
    if readme and not results.update_readme(
        readme, results.markdown_table(meta, records, sparsities=README_SPARSITIES)
    ):
        console.print(f"{readme} has no {results.README_START} marker; table not inserted")


def _zoo(quick, out, batches, methods, models, runtimes, sparsities, target) -> None:
    """``bench --zoo``: the model-zoo benchmark (gpuprune.bench.zoo)."""
    from gpuprune.bench import results
    from gpuprune.bench.environment import device_slug, environment
    from gpuprune.bench.zoo import (
        ZOO_FULL,
        ZOO_QUICK,
        check_runtimes,
        check_zoo,
        markdown_table,
        run_zoo,
    )
    from gpuprune.fileio import atomic_write_text, check_output
    from gpuprune.progress import progress_bar

    cfg = ZOO_QUICK if quick else ZOO_FULL
    if sparsities and len(sparsities) != 1:
        raise UserError("--zoo takes one sparsity", "pass e.g. --sparsities 0.75")
    changes = {"batches": batches, "methods": methods, "models": models, "runtimes": runtimes,
               "sparsity": sparsities[0] if sparsities else None, "target": target}  # fmt: skip
    cfg = cfg.with_(**{k: v for k, v in changes.items() if v is not None})
    check_output(out, flag="-o", folder=True)
    check_runtimes(cfg.runtimes)
    check_zoo(cfg.models)  # one line naming what to install, before anything runs
    env = environment()
    stem = "zoo-" + device_slug(env) + ("-quick" if quick else "")
    meta = {"environment": env, "config": dict(cfg.__dict__)}
    out_dir = Path(out)
    records: list[dict] = []
    with progress_bar("zoo {task.description:<30}", console=console, transient=True) as prog:
        task = prog.add_task("", total=len(cfg.models) * len(cfg.batches))
        for model in cfg.models:  # saved after each model: a long run keeps what it measured
            for batch in cfg.batches:
                prog.update(task, description=f"{model} b{batch}")
                records += run_zoo(cfg.with_(models=(model,), batches=(batch,)))
                prog.advance(task)
                results.save(out_dir / f"{stem}.json", meta, records)
    table = markdown_table(records)
    atomic_write_text(out_dir / f"{stem}.md", table)
    console.print(table)
    console.print(f"results: {out_dir / (stem + '.json')}")


def _check_readme(readme: str) -> None:
    """The README to update exists and has the table markers: checked before measuring."""
    from gpuprune.bench import results

    try:
        text = Path(readme).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--readme {readme} cannot be read ({type(exc).__name__})",
                        "pass an existing README file") from None  # fmt: skip
    if results.README_START not in text or results.README_END not in text:
        raise UserError(f"--readme {readme} has no {results.README_START} ... "
                        f"{results.README_END} markers",
                        "add them where the table goes")  # fmt: skip


def _check_e2e(cfg) -> None:
    """Refuse unknown end-to-end models, backends and runtimes before anything runs."""
    from gpuprune.bench.dense_runtimes import DENSE_RUNTIMES
    from gpuprune.bench.e2e_bench import E2E_MODELS
    from gpuprune.errors import UserError
    from gpuprune.kernels.backends import BACKENDS, get_backend

    for m in cfg.e2e_models:
        if m not in E2E_MODELS:
            raise UserError(
                f"unknown end-to-end model {m!r}", f"choose from {', '.join(E2E_MODELS)}"
            )
    for r in cfg.e2e_runtimes:
        DENSE_RUNTIMES.get(r)
    for b in cfg.e2e_backends:
        if b != "torch":
            try:
                get_backend(b)
            except ImportError:  # known but its dependency is missing: reported as skipped
                pass
            except UserError:
                raise UserError(
                    f"unknown end-to-end backend {b!r}",
                    f"choose from torch, {', '.join(BACKENDS.names())}",
                ) from None


def _run(cfg, no_e2e: bool, no_gemm: bool, partial) -> list[dict]:
    """Run the grid; ``partial(records)`` saves what is measured so far (GEMM before e2e)."""
    from gpuprune.bench.gemm_bench import plan, run_gemm
    from gpuprune.progress import progress_bar

    with progress_bar("{task.description:<44}", console=console, transient=False) as prog:
        task = prog.add_task("GEMM", total=sum(1 for _ in plan(cfg)))

        def progress(desc: str, new_cell: bool) -> None:
            if new_cell and prog.tasks[task].description != "GEMM":
                prog.advance(task)
            prog.update(task, description=desc)

        records = [] if no_gemm else run_gemm(cfg, progress)
        prog.update(task, completed=prog.tasks[task].total, description="GEMM done")
        partial(records)
        if not no_e2e:
            from gpuprune.bench.e2e_bench import e2e_cells, run_e2e

            groups = len(cfg.e2e_models) * len(cfg.e2e_batches)  # + one timing step each
            t2 = prog.add_task("end to end", total=len(e2e_cells(cfg)) + groups)
            records += run_e2e(cfg, lambda d: (prog.update(t2, description=d), prog.advance(t2)))
    return records
