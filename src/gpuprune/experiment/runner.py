"""``gpuprune run``: the dense model, then every (method, sparsity) cell, stored as they finish.

Layout of a run folder::

    config.yaml          the validated config with defaults filled in
    dense/               checkpoint.pt while training, model.safetensors, result.json
    cells/<m>-<s>.json   one finished cell each (status ok or failed with the message)
    cells/<m>-<s>/       its fine-tuning checkpoint (while running) and pruned model
    summary.json         everything the report needs

Re-running skips finished cells (same settings) and resumes a half-trained dense model or cell.
A lock file keeps two runs out of one folder. Every stored result carries a sha256 and is redone
when it does not match; results of other settings move to ``stale/`` and are never deleted, and
gpuprune never touches a folder it did not create (each holds a ``.gpuprune`` marker).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import save

from gpuprune.bench.environment import cpu_isa, cpu_name
from gpuprune.data import ImageData
from gpuprune.errors import UserError
from gpuprune.experiment.cell import (
    CELLS_DIR,
    DENSE_DIR,
    allocation_of,
    build_model,
    cell_id,
    cell_key,
    cell_path,
    dense_state,
    fresh_workdir,
    input_shape,
    load_data,
    matched_plan,
    prunable_layers,
    run_cell,
    time_cell,
    trained_before,
    weights_digest,
)
from gpuprune.experiment.codesign_step import run_codesign
from gpuprune.experiment.config import ExperimentConfig, dump_config, parse_config
from gpuprune.experiment.distill_study import collect_study, pending_study, train_study_cell
from gpuprune.experiment.equal_latency import check_equal_latency, matched_methods
from gpuprune.experiment.latency import backend_device, compile_for, time_model, time_models
from gpuprune.experiment.oneshot import oneshot_done, run_oneshot
from gpuprune.fileio import (
    atomic_write_bytes,
    atomic_write_text,
    dir_lock,
    file_sha256,
    own_folder,
    read_record,
    write_record,
)
from gpuprune.train import distributed as ddp
from gpuprune.train import evaluate, fit

console = Console(stderr=True)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir/.lock`` (released on exit, even when killed)."""
    with dir_lock(run_dir, "run folder"):
        yield


def _backend_error(name: str) -> UserError | None:
    """Why this machine cannot run backend ``name``, or None when it can. An unknown name raises:
    a typo is not the machine's limit, and the registry's message names the choices."""
    from gpuprune.kernels.backends import BACKENDS
    from gpuprune.nn import resolve_backend

    try:
        resolve_backend(name)
    except UserError as err:
        if name not in BACKENDS:
            raise
        return err
    return None


def drop_unavailable(cfg: ExperimentConfig) -> tuple[ExperimentConfig, list[str]]:
    """With ``unavailable_backends: skip``: ``cfg`` without the latency and co-design backends
    this machine cannot run, and a note for each; else ``cfg`` unchanged. Unknown backend names
    raise either way (a typo is not a machine's limit), and so does leaving no latency backend."""
    if cfg.unavailable_backends != "skip":
        return cfg, []
    notes, kept = [], []
    for name in cfg.latency.backends:
        if (err := _backend_error(name)) is None:
            kept.append(name)
        else:
            notes.append(f"latency on {name} not measured on this machine: {err.problem}")
    if not kept:
        raise UserError("no backend in latency.backends can run on this machine "
                        f"({'; '.join(notes)})", "add one that can, e.g. cpu")  # fmt: skip
    update: dict[str, Any] = {"latency": cfg.latency.model_copy(update={"backends": kept})}
    c = cfg.codesign
    if c.backend is not None and (err := _backend_error(c.backend)) is not None:
        notes.append(f"co-design on {c.backend} not run on this machine: {err.problem}")
        update["codesign"] = c.model_copy(update={"backend": None})
    return cfg.model_copy(update=update), notes


def _check_setup(cfg: ExperimentConfig) -> None:
    """Every name in the config resolves, before any training: a typo costs seconds, not a run."""
    from gpuprune.arch import get_target
    from gpuprune.prune import ALLOCATIONS, IMPORTANCES, METHODS

    named = [("latency.backends", b) for b in cfg.latency.backends]
    if cfg.codesign.backend is not None:
        named.append(("codesign.backend", cfg.codesign.backend))
    for key, name in named:
        if (err := _backend_error(name)) is not None:  # names the setup step, and the option
            raise UserError(f"{key}: {err.problem}", f"{err.fix}; or set unavailable_backends: "
                            f"skip in the config to leave {name} out with a note")  # fmt: skip
    check_equal_latency(cfg)
    for method in cfg.prune.methods:
        METHODS.get(method)
    from gpuprune.models import list_models

    if cfg.model.name not in list_models():  # a config is a file: it never names code to import
        raise UserError(
            f"model.name {cfg.model.name!r} is not a registered model"
            + (" (a config file never names code to import)" if ":" in cfg.model.name else ""),
            f"choose one of: {', '.join(list_models())}",
        )
    get_target(cfg.prune.target)
    IMPORTANCES.get(cfg.prune.importance)
    for method in cfg.oneshot.methods:
        METHODS.get(method)
    for importance in cfg.oneshot.importances:
        IMPORTANCES.get(importance)
    if not cfg.prune.allocation.lower().endswith(".json"):
        ALLOCATIONS.get(cfg.prune.allocation)
    allocation_of(cfg)  # a .json file: read and checked now
    if cfg.model.checkpoint and not Path(cfg.model.checkpoint).is_file():
        raise UserError(f"model.checkpoint {cfg.model.checkpoint} not found",
                        "fix the path or remove the key")  # fmt: skip


def _check_model(cfg: ExperimentConfig, data: ImageData) -> None:
    """Checks that need the model: exclude patterns, allocation layers, method and schedule
    options. Each error names its config key; all of them come before any training."""
    from gpuprune.experiment.cell import schedule_for
    from gpuprune.prune import get_method

    p = cfg.prune
    model = build_model(cfg, data)
    try:
        layers = prunable_layers(cfg, model)
    except UserError as exc:
        raise UserError(f"prune.exclude: {exc.problem}", exc.fix) from None
    alloc = allocation_of(cfg)
    if isinstance(alloc, dict) and (unknown := sorted(set(alloc) - set(layers))):
        raise UserError(f"prune.allocation: {p.allocation} names {unknown[0]!r}, not a layer "
                        "this config prunes", f"use names such as {', '.join(layers[:4])}")
    methods = set(p.methods) | set(cfg.equal_latency.methods)
    for method, options in p.method_options.items():
        if method not in methods:
            raise UserError(f"prune.method_options.{method}: not a method of this config",
                            f"use one of: {', '.join(sorted(methods))}")  # fmt: skip
        try:
            get_method(method, **options)
        except (UserError, TypeError, ValueError) as exc:
            raise UserError(f"prune.method_options.{method}: {exc}",
                            f"{method} takes {_option_names(method)}") from None
    for method in p.methods:
        try:
            schedule_for(cfg, method, 100)
        except (UserError, TypeError, ValueError) as exc:
            raise UserError(f"prune.schedule_options: {exc}",
                            f"see the options of schedule {p.schedule!r}") from None


def _option_names(method: str) -> str:
    import inspect

    from gpuprune.prune import METHODS

    names = [n for n in inspect.signature(METHODS.get(method)).parameters if n != "self"]
    return "the options " + ", ".join(names) if names else "no options"


def _check_ray(address: str) -> None:
    """An unreachable Ray address fails in seconds with a message, not after a long hang."""
    import socket

    if address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray {address}: not an address", "pass HOST:PORT or 'local'")
    try:
        with socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise UserError(f"--ray {address}: cannot reach the cluster within "
                        f"{RAY_CONNECT_TIMEOUT_S:g} s ({exc.strerror or exc})",
                        "start it (ray start --head), fix the address, or use --ray local"
                        ) from None


RAY_CONNECT_TIMEOUT_S = 5.0


def dense_key(cfg: ExperimentConfig) -> str:
    """What the dense weights depend on (with ``model.checkpoint``: its content, not its path)."""
    return cfg.digest("data", "model", "dense", "seed", **weights_digest(cfg))


def timing_key(cfg: ExperimentConfig) -> str:
    """What the dense latencies depend on (besides the weights)."""
    p = cfg.prune
    return cfg.digest("latency", target=p.target, exclude=p.exclude,
                      first_last=p.exclude_first_last, variants=sorted(_variants(cfg)))  # fmt: skip


def _variants(cfg: ExperimentConfig) -> list[str]:
    """Kernel variants the cells use (tile always: the report's scale), each method's declared."""
    from gpuprune.prune import kernel_of

    kernels = {kernel_of(m) for m in cfg.prune.methods}
    return ["tile", *sorted(kernels - {"tile"})]


def run_dense(cfg: ExperimentConfig, run_dir: Path, data: ImageData,
              progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train (or load) the dense model, evaluate and time it; stored in ``dense/``."""
    from gpuprune.prune.layers import gemm_layers, layer_specs

    work = run_dir / DENSE_DIR
    result_file = work / "result.json"
    key = dense_key(cfg)
    done = read_record(result_file)  # checksummed; a damaged weights file makes it not done
    if done and not _weights_intact(work, done):
        done = {}
    if done.get("key") == key and done.get("timing_key") == timing_key(cfg):
        return done
    main = ddp.info().is_main  # under torchrun all ranks train; rank 0 alone writes and times
    model = build_model(cfg, data)
    if done.get("key") == key:  # same weights, other timing settings: time again only
        if main:
            model.load_state_dict(dense_state(run_dir))
            record = {k: v for k, v in done.items() if k not in ("latency", "timing_key")}
            _time_dense(cfg, model, data, record, result_file)
        return _shared(result_file)
    if main:
        fresh_workdir(work, key)
    ddp.barrier()
    started = time.perf_counter()
    history: list[dict[str, Any]] = []
    if cfg.model.checkpoint:
        path = Path(cfg.model.checkpoint)
        if not path.is_file():
            raise UserError(f"model.checkpoint {path} not found", "fix the path or remove the key")
        from gpuprune.prune.files import check_matches, read_state_dict

        state = read_state_dict(path)  # refuses damaged files and NaN/Inf weights
        check_matches(state, model.state_dict(),
                      f"model.checkpoint {path} ({cfg.model.name}, width {cfg.model.width})")
        model.load_state_dict(state)
        test_loss, test_acc = evaluate(model, data, cfg.dense.eval_batch_size)
    else:
        res = fit(model, data, cfg.dense.train_config(cfg.seed), run_dir=work, resume=True,
                  progress=progress, desc="dense")  # fmt: skip
        test_loss, test_acc, history = res.test_loss, res.test_acc, res.history
    if main:
        model.cpu().eval()
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        blob = save(state)
        atomic_write_bytes(work / "model.safetensors", blob)
        specs = layer_specs(model, gemm_layers(model), None, input_shape(data))
        record = {
            "key": key,
            "accuracy": test_acc,
            "test_loss": test_loss,
            "params": sum(p.numel() for p in model.parameters()),
            "flops": {n: s.dense_flops for n, s in specs.items()},
            "history": history,
            "trained": not cfg.model.checkpoint,
            "seconds": time.perf_counter() - started,
            "model_sha256": hashlib.sha256(blob).hexdigest(),
        }
        # The hand-over: the weights are recorded before the checkpoint goes, so a kill while
        # timing keeps the trained model (the rerun only times it).
        record = write_record(result_file, record)
        (work / "checkpoint.pt").unlink(missing_ok=True)
        _time_dense(cfg, model, data, record, result_file)
    return _shared(result_file)


def _weights_intact(work: Path, record: dict[str, Any]) -> bool:
    path = work / "model.safetensors"
    return path.is_file() and file_sha256(path) == record.get("model_sha256")


def _shared(path: Path) -> dict[str, Any]:
    """Read what rank 0 wrote, once it has (every rank, after a barrier)."""
    ddp.barrier()
    return read_record(path)


def _time_dense(cfg: ExperimentConfig, model: torch.nn.Module, data: ImageData,
                record: dict[str, Any], result_file: Path) -> dict[str, Any]:  # fmt: skip
    """Time the dense model eagerly and with each backend's kernels (nothing to skip)."""
    shape = input_shape(data)
    layers = prunable_layers(cfg, model)
    latency: dict[str, Any] = {"torch": time_model(model, shape, cfg.latency, cfg.seed)}
    if torch.cuda.is_available():
        latency["torch-cuda"] = time_model(model, shape, cfg.latency, cfg.seed, "cuda")
        model.cpu()
    for backend in cfg.latency.backends:
        variants = _variants(cfg)  # in alternation: the report scales SIMD cells by their ratio
        compiled = [compile_for(model, cfg.prune.target, backend, layers, kernel)
                    for kernel in variants]  # fmt: skip
        times = time_models(compiled, shape, cfg.latency, cfg.seed, backend_device(backend))
        latency[backend] = dict(zip(variants, times, strict=True))
    record.update(timing_key=timing_key(cfg), prunable_layers=layers, latency=latency)
    return write_record(result_file, record)


def _describe(rec: dict[str, Any], dense_acc: float) -> str:
    name = cell_id(rec["method"], rec["sparsity"], _is_matched(rec))
    if rec.get("status") == "unreachable":
        return f"[yellow]{name} skipped[/yellow]: {rec.get('error')}"
    if rec.get("status") != "ok":
        return f"[red]{name} failed[/red]: {rec.get('error')}"
    lat = ", ".join(f"{b} {v['median_ms']:.2f} ms" for b, v in rec["latency"].items())
    drop = (dense_acc - rec["accuracy"]) * 100
    return (f"{name}: accuracy {rec['accuracy']:.2%} (drop {drop:+.2f} pt), sparsity "
            f"{rec['achieved_sparsity']:.3f}, {lat} ({rec['seconds']:.0f} s)")  # fmt: skip


def _is_matched(rec: dict[str, Any]) -> bool:
    return bool(rec.get("equal_latency"))


def _ray_cell(cfg_dict: dict[str, Any], run_dir: str, method: str, sparsity: float,
              matched: bool) -> dict[str, Any]:  # fmt: skip
    # Runs on a Ray worker: it reads the data and dense model itself (shared file system).
    return run_cell(parse_config(cfg_dict), Path(run_dir), method, sparsity, progress=False,
                    matched=matched)  # fmt: skip


Cell = tuple[str, float, bool]  # method, sparsity, matched to the reference latency


def _run_cells_ray(cfg: ExperimentConfig, run_dir: Path, pending: list[Cell],
                   address: str, dense_acc: float) -> None:  # fmt: skip
    try:
        import ray
    except ImportError:
        raise UserError(
            "--ray needs the ray package", "pip install 'gpuprune[ray]', or run without --ray"
        ) from None
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address)
    task = ray.remote(num_cpus=1)(_ray_cell)
    futures = [task.remote(cfg.model_dump(), str(run_dir.resolve()), m, s, matched)
               for m, s, matched in pending]  # fmt: skip
    while futures:
        done, futures = ray.wait(futures, num_returns=1)
        console.print(_describe(ray.get(done[0]), dense_acc))


def _run_cells_parallel(cfg: ExperimentConfig, run_dir: Path, pending: list[Cell],
                        data: ImageData, dense_acc: float, workers: int, progress: bool
                        ) -> dict[str, float]:  # fmt: skip
    """Plan the matched cells here, fine-tune every cell in ``workers`` processes, then time
    each one here, alone; returns the wall seconds of the three phases."""
    from gpuprune.experiment.workers import ONESHOT, Job

    t0 = time.perf_counter()
    jobs: list[Job] = []
    trained: list[dict[str, Any]] = []
    for method, sparsity, matched in pending:
        if done := trained_before(cfg, run_dir, method, sparsity, matched):
            trained.append(done)  # fine-tuned by an earlier run that stopped before timing
        elif not matched:
            jobs.append(Job("cell", method, sparsity))
        elif (planned := matched_plan(cfg, run_dir, method, sparsity, data))["status"] == "planned":
            jobs.append(Job("cell", method, sparsity, True, planned.pop("plan")))  # planned here
        else:
            console.print(_describe(time_cell(cfg, run_dir, planned, data), dense_acc))
    t1 = time.perf_counter()
    # the longest jobs first: the one-shot study, then the study cells (they run a teacher too)
    jobs[:0] = [Job("distill", m, s) for m, s in pending_study(cfg, run_dir)]
    if cfg.oneshot.methods and not oneshot_done(cfg, run_dir):
        jobs.insert(0, ONESHOT)
    if jobs:
        trained += [r for r in _train_parallel(cfg, run_dir, jobs, workers, progress)
                    if r.get("method")]  # fmt: skip
    t2 = time.perf_counter()
    order = {cell: i for i, cell in enumerate(pending)}  # time in the config's order
    trained.sort(key=lambda r: order[(r["method"], r["sparsity"], bool(r["equal_latency"]))])
    for i, rec in enumerate(trained, 1):
        console.print(f"[{i}/{len(trained)}] " + _describe(time_cell(cfg, run_dir, rec, data),
                                                           dense_acc))  # fmt: skip
    return {"cells: planning matched": t1 - t0, "cells: fine-tuning (parallel)": t2 - t1,
            "cells: timing": time.perf_counter() - t2}


def _train_parallel(cfg: ExperimentConfig, run_dir: Path, jobs: list[Any], workers: int,
                    progress: bool) -> list[dict[str, Any]]:  # fmt: skip
    from gpuprune.experiment.workers import threads_per_worker, train_in_workers
    from gpuprune.progress import progress_bar

    threads = threads_per_worker(workers)
    out = []  # the cells' records (the studies store their own; the caller reads them back)
    title = f"cells fine-tuning in {workers} processes x {threads} thread{'s' * (threads > 1)}"
    with progress_bar(title, console=console, disable=not progress) as bar:
        task = bar.add_task("", total=len(jobs))
        for job, rec in train_in_workers(cfg, run_dir, jobs, workers):
            name = cell_id(job.method, job.sparsity, job.matched)
            if job.kind == "oneshot":
                bar.console.print(f"one-shot study: {len(rec.get('rows', []))} rows "
                                  f"({rec.get('seconds', 0):.0f} s)")
            elif job.kind == "distill" and rec.get("status") == "trained":
                bar.console.print(f"{name} {_arm(rec)}: accuracy {rec['accuracy']:.2%} "
                                  f"({rec.get('seconds', 0):.0f} s)")  # fmt: skip
            elif job.is_cell:
                if rec.get("status") == "trained":
                    bar.console.print(f"{name}: fine-tuned, accuracy {rec['accuracy']:.2%} "
                                      f"({rec.get('train_seconds', 0):.0f} s)")  # fmt: skip
                out.append(rec)
            bar.advance(task)
    return out


def _arm(rec: dict[str, Any]) -> str:
    return "with distillation" if rec.get("distill") else "without distillation"


def _run_study(cfg: ExperimentConfig, run_dir: Path, data: ImageData, progress: bool) -> None:
    """Fine-tune the distillation study's cells still missing, in this process."""
    for method, sparsity in pending_study(cfg, run_dir):
        rec = train_study_cell(cfg, run_dir, method, sparsity, data, progress)
        if ddp.info().is_main:
            name = cell_id(method, sparsity)
            console.print(f"{name} {_arm(rec)}: " + (f"accuracy {rec['accuracy']:.2%}"
                          if rec.get("status") == "trained" else f"FAILED: {rec.get('error')}"))


def all_cells(cfg: ExperimentConfig) -> list[Cell]:
    """Every cell of the config: the method x sparsity grid, then the latency-matched ones."""
    grid = [(m, s, False) for m, s in cfg.prune.grid()]
    ref = cfg.equal_latency.reference_cell
    return grid + [(m, ref[1], True) for m in matched_methods(cfg)] if ref else grid


def pending_cells(cfg: ExperimentConfig, run_dir: Path) -> list[Cell]:
    """Cells without a stored result from these settings (failed cells are retried)."""
    out = []
    for method, sparsity, matched in all_cells(cfg):
        rec = read_record(cell_path(run_dir, method, sparsity, matched))
        if rec.get("key") == cell_key(cfg, matched) and rec.get("status") in ("ok", "unreachable"):
            continue
        out.append((method, sparsity, matched))
    return out


def collect(cfg: ExperimentConfig, run_dir: Path, dense: dict[str, Any], data: ImageData,
            seconds: float, codesign: dict[str, Any] | None = None,
            oneshot: dict[str, Any] | None = None,
            phases: dict[str, float] | None = None,
            left_out: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Gather the dense result and every cell of this config into ``summary.json``;
    ``left_out``: notes on backends this machine could not run (shown with the config's)."""
    cells = []
    for method, sparsity, matched in all_cells(cfg):
        rec = read_record(cell_path(run_dir, method, sparsity, matched))
        if rec:
            cells.append(rec)
    cuts = list(data.notes)
    for phase, recipe in (("dense training", cfg.dense), ("fine-tuning", cfg.finetune)):
        if recipe.steps_per_epoch is not None:
            cuts.append(f"{phase}: epochs cut to {recipe.steps_per_epoch} steps")
    if cfg.finetune.train_subset is not None:
        cuts.append(f"fine-tuning on {cfg.finetune.train_subset} train images")
    summary = {
        "name": cfg.name,
        "config": cfg.model_dump(),
        "data": {"name": data.name, "source": data.source, "train": len(data.train_y),
                 "test": len(data.test_y), "image": list(input_shape(data))},  # fmt: skip
        "notes": [*cfg.notes, *(left_out or [])],
        "cuts": cuts,
        "dense": dense,
        "cells": cells,
        "codesign": codesign,
        "oneshot": oneshot,
        "distill_study": collect_study(cfg, run_dir),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "machine": platform.machine(), "cpu": cpu_name(), "cpu_isa": cpu_isa(),
                        "cpus": os.cpu_count(),
                        "threads": torch.get_num_threads()},  # fmt: skip
        "seconds": seconds,
        "phases": dict(phases or {}),
    }
    if ddp.info().is_main:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


def run_experiment(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    ray_address: str | None = None,
    progress: bool = True,
    raise_on_failure: bool = True,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run (or continue) the experiment in ``run_dir``; returns the summary.

    ``workers`` (default: the config's ``workers``): cells fine-tune in this many processes at
    once, then are timed one at a time (see :mod:`gpuprune.experiment.workers`).

    Raises:
        UserError: bad setup (data, backends, folder in use) or, at the end, failed cells
            (unless ``raise_on_failure`` is False; then see :func:`check_cells`).
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    main = ddp.info().is_main
    if ray_address and ddp.info().enabled:
        raise UserError("--ray and torchrun do not mix", "use one of them")
    phases: dict[str, float] = {}  # wall seconds per phase (cell records hold per-cell costs)
    say = console.print if main else (lambda *a, **k: None)
    cfg, left_out = drop_unavailable(cfg)
    for note in left_out:
        say(f"note: {note}")
    _check_setup(cfg)
    if ray_address:
        _check_ray(ray_address)
    if main:
        own_folder(run_dir, "run folder", "pass a new or empty folder, or one 'gpuprune run' made",
                   legacy=(".lock",))  # fmt: skip
    with run_lock(run_dir) if main else contextlib.nullcontext():
        data = load_data(cfg)
        _check_model(cfg, data)
        if main:  # only a config that passed every check replaces the stored one
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
        say(f"data: {data.name} from {data.source}: {len(data.train_y)} train, "
            f"{len(data.test_y)} test images")  # fmt: skip
        before = _stored_work(cfg, run_dir)
        dense = run_dense(cfg, run_dir, data, progress)
        say(f"dense {cfg.model.name}: accuracy {dense['accuracy']:.2%}")
        phases["dense"] = time.perf_counter() - started
        workers = cfg.workers if workers is None else workers
        parallel = workers > 1 and not ray_address and not ddp.info().enabled
        pending = pending_cells(cfg, run_dir)
        if parallel and pending and not oneshot_done(cfg, run_dir):  # one more worker job
            phases["one-shot"] = 0.0  # counted in the parallel phase
        else:
            oneshot = run_oneshot(cfg, run_dir, data, progress) if main else None
            phases["one-shot"] = time.perf_counter() - started - phases["dense"]
        total = len(all_cells(cfg))
        if len(pending) < total:
            say(f"{total - len(pending)} of {total} cells already done; skipping them")
        (run_dir / CELLS_DIR).mkdir(exist_ok=True)
        cells_started = time.perf_counter()
        if workers > 1 and not parallel:
            say(f"workers: {workers} ignored: cells already run "
                f"{'as Ray tasks' if ray_address else 'data-parallel under torchrun'}")
        if ray_address:
            _run_cells_ray(cfg, run_dir, pending, ray_address, dense["accuracy"])
        elif parallel and pending:
            phases.update(_run_cells_parallel(cfg, run_dir, pending, data, dense["accuracy"],
                                              workers, progress))  # fmt: skip
        else:
            for i, (method, sparsity, matched) in enumerate(pending, 1):
                rec = run_cell(cfg, run_dir, method, sparsity, data, progress, matched)
                if main:
                    say(f"[{i}/{len(pending)}] " + _describe(rec, dense["accuracy"]))
        if "cells: timing" not in phases:  # one process: cells trained and timed in turn
            phases["cells"] = time.perf_counter() - cells_started
        if main and parallel and pending:  # the workers stored it (or it failed there: run it)
            oneshot = run_oneshot(cfg, run_dir, data, progress)
        if pending_study(cfg, run_dir):  # not run in workers (or one failed there)
            study_started = time.perf_counter()
            _run_study(cfg, run_dir, data, progress)
            phases["distillation study"] = time.perf_counter() - study_started
        # after the cells: rank 0 alone searches, and other ranks must not wait on it mid-run
        codesign = run_codesign(cfg, run_dir, data, progress) if main else None
        seconds = time.perf_counter() - started
        if main and before["all_done"] and before == _stored_work(cfg, run_dir):
            # nothing was computed again (e.g. only the report's targets changed): the run's
            # time is still the one that computed it, not this read-back
            seconds, phases = before["seconds"], before["phases"]
        summary = collect(cfg, run_dir, dense, data, seconds, codesign, oneshot, phases,
                          left_out)  # fmt: skip
    if raise_on_failure:
        check_cells(summary, run_dir)
    return summary


def _stored_work(cfg: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """What the run folder holds for ``cfg``: the dense and co-design records, whether every cell
    and study is done, and the stored summary's time (to tell a pure read-back from new work)."""
    from gpuprune.experiment.codesign_step import CODESIGN_FILE

    try:
        previous = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        previous = {}
    done = (not pending_cells(cfg, run_dir) and oneshot_done(cfg, run_dir)
            and not pending_study(cfg, run_dir))  # fmt: skip
    return {"dense": read_record(run_dir / DENSE_DIR / "result.json"),
            "codesign": read_record(run_dir / CODESIGN_FILE),
            "all_done": done and isinstance(previous.get("seconds"), int | float),
            "seconds": previous.get("seconds"), "phases": previous.get("phases") or {}}


def check_cells(summary: dict[str, Any], run_dir: Path) -> None:
    """Raise a :class:`UserError` naming the failed cells, if any."""
    failed = [c for c in summary["cells"] if c.get("status") not in ("ok", "unreachable")]
    if failed:
        names = ", ".join(cell_id(c["method"], c["sparsity"], _is_matched(c)) for c in failed)
        raise UserError(
            f"{len(failed)} of {len(summary['cells'])} cells failed ({names}): "
            f"{failed[0].get('error')}",
            f"see {Path(run_dir) / CELLS_DIR}; fix the settings and rerun to retry only those",
        )
