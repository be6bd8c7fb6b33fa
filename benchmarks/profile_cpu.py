"""Where the CPU backend's time goes, per layer and per op, for a whole model.

For a model pruned with ``tile`` (or ``simd``) and compiled with ``backend="cpu"``, one forward is
split into:

* per module: the time each leaf module takes inside the forward (forward hooks), next to eager
  PyTorch on the unpruned model (oneDNN) for the same module;
* per op inside each skip conv, measured by running the same kernel call with parts removed:
  ``skip`` the real call; ``im2col`` the same call with no kept blocks but every K block
  marked used (mapping X, the kernel's im2col: row addresses, gathers and masked copies, and the
  bias/ReLU(/max pool) store, no multiply-add; stored as ``im2col_ms``); ``store`` no
  kept blocks and no K block used (store and the thread pool's wake-up only; the tap tables
  are built once per input shape, outside the call). GEMM = skip - im2col;
  im2col = im2col - store;
* Python: the module call minus the bare ctypes call of the kernel;
* "between layers": the whole forward minus the sum of the leaf modules (residual adds,
  flatten, the hooks' own cost).

The split is of the forward run layer by layer: a hook on a module turns off what compile
joined (runs of convolutions in one call, residual blocks' tails in the last conv's store), so
the forward is also timed without hooks, as deployed, and both are printed.

Every figure is a median over ``--repeats`` interleaved rounds, or with ``--stat min`` the
fastest round: on a host shared with other jobs the minimum estimates what each part costs
without preemption, which a per-op split needs (medians then mix in other processes' time
slices). Writes JSON and prints tables.

    python benchmarks/profile_cpu.py --model vgg16 --width 0.5 --batch 16 --threads 2 \\
        -o benchmarks/results/profile/vgg16-b16.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from gpuprune.bench.config import FULL
from gpuprune.bench.e2e_bench import E2E_MODELS, _build_model
from gpuprune.bench.environment import environment
from gpuprune.fileio import atomic_write_text
from gpuprune.nn import compile as compile_model
from gpuprune.nn.layers import SkipConv2d, SkipLinear


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


STAT = statistics.median  # --stat picks median or min


def forward_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """The median whole forward as the model is; with no hooks on it, as deployed (a hook on a
    module turns the convolution runs and fused residual blocks off)."""
    totals = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            totals.append((time.perf_counter() - t0) * 1e3)
    return STAT(totals)


def per_module_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> tuple[dict, float]:
    """Median ms per leaf module inside the forward, and the median whole forward, with a hook
    on every leaf (layer by layer: no convolution runs, no fused residual blocks)."""
    times: dict[str, list[float]] = defaultdict(list)
    start: dict[str, float] = {}
    handles = []
    for name, mod in _leaves(model):
        if isinstance(mod, nn.Identity):
            continue

        def pre(_m, _i, name=name):
            start[name] = time.perf_counter()

        def post(_m, _i, _o, name=name):
            times[name].append((time.perf_counter() - start[name]) * 1e3)

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    total = forward_ms(model, x, repeats)
    for h in handles:
        h.remove()
    return {n: STAT(t[1:]) for n, t in times.items()}, total


def _raw_call(layer: SkipConv2d, x: torch.Tensor, *, blocks: bool, used: str):
    """The bare ctypes call of a skip conv's kernel (with the layer's cached arguments and tap
    tables); optionally with no kept blocks and the im2col switched fully on (``used="all"``)
    or off (``"none"``)."""
    run = layer._run
    with torch.no_grad():
        y = layer(x)  # caches the integer arguments and tap tables of this input shape
    _, args, tables = run._shapes[x.shape]
    out = torch.empty_like(y)
    row_ptr = run.row_ptr if blocks else torch.zeros_like(run.row_ptr)
    flags = {"real": run.used, "all": torch.ones_like(run.used), "none": torch.zeros_like(run.used)}
    used_t = flags[used]
    lib = run.lib
    bias = None if run.bias is None else run.bias.data_ptr()
    call_args = (
        args.data_ptr(), x.data_ptr(), row_ptr.data_ptr(), run.col_idx.data_ptr(),
        run.wt.data_ptr(), bias, out.data_ptr(), used_t.data_ptr(), tables.data_ptr(),
    )  # fmt: skip

    def call():
        lib.gp_conv2d(*call_args, torch.get_num_threads(), run.mode, ctypes.c_void_p(None),
                      ctypes.c_void_p(None), 0)  # fmt: skip
        return row_ptr, used_t, out, args, tables  # keep them alive

    return call


def interleaved(fns: dict, repeats: int) -> dict:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: STAT(v) for k, v in times.items()}


def conv_ops(model: nn.Module, x: torch.Tensor, repeats: int) -> dict:
    """Per skip conv: ms of the module, the bare kernel, and its im2col/GEMM/store split."""
    inputs: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_pre_hook(lambda _m, i, n=n: inputs.__setitem__(n, i[0].contiguous()))
        for n, m in model.named_modules()
        if isinstance(m, SkipConv2d)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    out = {}
    for name, inp in inputs.items():
        layer = model.get_submodule(name)
        fns = {
            "module": lambda layer=layer, inp=inp: layer(inp),
            "kernel": _raw_call(layer, inp, blocks=True, used="real"),
            "im2col+store": _raw_call(layer, inp, blocks=False, used="all"),
            "store": _raw_call(layer, inp, blocks=False, used="none"),
        }
        with torch.no_grad():
            t = interleaved(fns, repeats)
        m, k = layer.packed.shape
        out[name] = {
            "gemm_mk": [m, k],
            "n": int(inp.shape[0] * layer(inp).shape[2] * layer(inp).shape[3]),
            "module_ms": t["module"],
            "kernel_ms": t["kernel"],
            "gemm_ms": max(t["kernel"] - t["im2col+store"], 0.0),
            "im2col_ms": max(t["im2col+store"] - t["store"], 0.0),
            "store_ms": t["store"],
            "python_ms": max(t["module"] - t["kernel"], 0.0),
            "skippable": layer.skippable_fraction,
        }
    return out


def openvino_layers(model: nn.Module, x: torch.Tensor, repeats: int) -> tuple[dict, float]:
    """OpenVINO's own per-node times (its profiling counters) for the dense model, by module name
    (a Convolution node carries the conv's name; bias and ReLU are fused into it), and the
    median whole inference. Empty when OpenVINO is not installed."""
    try:
        import openvino as ov

        from gpuprune.bench.dense_runtimes import _onnx_bytes, openvino_config
    except ImportError:
        return {}, float("nan")
    import io

    compiled = ov.Core().compile_model(
        ov.convert_model(io.BytesIO(_onnx_bytes(model, x))),
        "CPU",
        openvino_config(PERF_COUNT=True),
    )
    request = compiled.create_infer_request()
    request.infer([x.numpy()])
    names = {n for n, _ in model.named_modules() if n}
    per_node: dict[str, list[float]] = defaultdict(list)
    totals = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        request.infer([x.numpy()])
        totals.append((time.perf_counter() - t0) * 1e3)
        for info in request.get_profiling_info():
            if info.node_type in ("Convolution", "MaxPool", "FullyConnected", "MatMul"):
                # "/features/features.3/Conv/WithoutBiases" -> "features.3": the last scope
                # that names a module
                # (ResNet: "/layers/layers.0/conv1/Conv" -> "layers.0.conv1": scopes nest)
                parts, path, found = info.node_name.strip("/").split("/"), "", info.node_name
                for part in parts:
                    path = part if part.startswith(path) or not path else f"{path}.{part}"
                    if path in names:
                        found = path
                name = found
                per_node[name].append(info.real_time.total_seconds() * 1e3)
    return {k: STAT(v) for k, v in per_node.items()}, STAT(totals)


def kind(mod: nn.Module) -> str:
    if isinstance(mod, SkipConv2d):
        return "skip conv (im2col+GEMM+bias/ReLU)"
    if isinstance(mod, SkipLinear):
        return "skip linear"
    return type(mod).__name__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16", choices=sorted(E2E_MODELS))
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--method", default="tile")
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args()
    global STAT
    STAT = min if args.stat == "min" else statistics.median
    torch.set_num_threads(args.threads)
    cfg = FULL.with_(e2e_width=args.width)
    spec = E2E_MODELS[args.model]
    x = torch.randn(args.batch, 3, spec.side, spec.side, generator=torch.Generator().manual_seed(1))
    dense = _build_model(args.model, cfg, "dense", 0.0)
    pruned = _build_model(args.model, cfg, args.method, args.sparsity)
    compiled = compile_model(pruned, backend="cpu", target=cfg.target, methods=args.method,
                             verbose=False)  # fmt: skip
    dense_compiled = compile_model(dense, backend="cpu", target=cfg.target, methods="tile",
                                   verbose=False)  # fmt: skip  (every block walked)
    eager_mod, eager_total = per_module_ms(dense, x, args.repeats)
    deployed = forward_ms(compiled, x, args.repeats)
    skip_mod, skip_total = per_module_ms(compiled, x, args.repeats)
    ops = conv_ops(compiled, x, args.repeats)
    dense_ops = conv_ops(dense_compiled, x, args.repeats)
    ov_layers, ov_total = openvino_layers(dense, x, args.repeats)
    leaves = dict(_leaves(compiled))
    by_kind: dict[str, float] = defaultdict(float)
    for name, ms in skip_mod.items():
        by_kind[kind(leaves[name])] += ms
    split = {
        "mapping X (im2col: gathers, masked copies)": sum(o["im2col_ms"] for o in ops.values()),
        "GEMM (kept blocks)": sum(o["gemm_ms"] for o in ops.values()),
        "bias/ReLU/pool store + thread wake-up": sum(o["store_ms"] for o in ops.values()),
        "Python + ctypes per skip conv": sum(o["python_ms"] for o in ops.values()),
    }
    for k, v in by_kind.items():
        if not k.startswith("skip conv"):
            split[k] = v
    split["between layers (adds, flatten, hooks)"] = skip_total - sum(skip_mod.values())
    result = {
        "meta": {"environment": environment(), "args": vars(args) | {"out": str(args.out)}},
        "forward_ms": {"gpuprune_cpu": deployed, "gpuprune_cpu_layer_by_layer": skip_total,
                       "eager_dense": eager_total, "openvino_dense": ov_total},  # fmt: skip
        "split_ms": split,
        "conv_layers": ops,
        "conv_layers_dense_kernel": dense_ops,
        "openvino_dense_layers_ms": ov_layers,
        "modules_ms": {"gpuprune_cpu": skip_mod, "eager_dense": eager_mod},
    }
    label = (f"{args.model} b{args.batch} {args.method}@{args.sparsity:g}, {args.threads} "
             f"threads, {args.stat} of {args.repeats} rounds")  # fmt: skip
    print(f"{label}: forward {deployed:.2f} ms as deployed, {skip_total:.2f} ms layer by layer "
          f"as split below (a hook on every module) (eager dense {eager_total:.2f} ms, OpenVINO "
          f"dense {ov_total:.2f} ms)")  # fmt: skip
    print("| part | ms | share |\n|---|---|---|")
    for k, v in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.3f} | {100 * v / skip_total:.0f}% |")
    print("\n| layer | M x K | N | OpenVINO dense | eager dense | our dense kernel | our "
          f"{args.method} kernel | map X | GEMM | store | Python |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for name, o in ops.items():
        print(f"| {name} | {o['gemm_mk'][0]}x{o['gemm_mk'][1]} | {o['n']} "
              f"| {ov_layers.get(name, nan):.3f} | {eager_mod.get(name, nan):.3f} "
              f"| {dense_ops.get(name, {}).get('kernel_ms', nan):.3f} | {o['kernel_ms']:.3f} "
              f"| {o['im2col_ms']:.3f} | {o['gemm_ms']:.3f} | {o['store_ms']:.3f} "
              f"| {o['python_ms']:.3f} |")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
