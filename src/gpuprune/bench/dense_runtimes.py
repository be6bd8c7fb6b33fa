"""The dense runtimes a CPU user deploys with: OpenVINO, ONNX Runtime and ``torch.compile``.

Each factory takes an eval-mode model and an example input and returns a zero-argument callable
that runs one inference (blocking until the output is ready), or raises :class:`Unavailable`
naming what is missing. Every runtime gets the thread count torch uses, so all paths compete on
the same cores. Fed the masked model, the same factories measure what a runtime makes of the
pruned weights when it cannot skip them (the "masked dense" baselines).
"""

from __future__ import annotations

import io
import warnings
import weakref
from collections.abc import Callable, Iterable

import torch
from torch import nn

from gpuprune.bench.runners import Unavailable
from gpuprune.registry import Registry

Infer = Callable[[], torch.Tensor]
RuntimeFactory = Callable[[nn.Module, torch.Tensor], Infer]

DENSE_RUNTIMES: Registry[RuntimeFactory] = Registry("dense runtime")
EAGER = "torch-dense"  # eager PyTorch (oneDNN): the reference every speedup also names


_ONNX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (shape, bytes)


def _onnx_bytes(model: nn.Module, x: torch.Tensor) -> bytes:
    """The model as ONNX, exported once per model and input shape (OpenVINO and ONNX Runtime
    read the same file). The TorchScript exporter: it needs only the ``onnx`` package, and for
    these static CNNs gives the same graph as the dynamo exporter in a fraction of the time."""
    cached = _ONNX.get(model)
    if cached and cached[0] == tuple(x.shape):
        return cached[1]
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError:
        raise Unavailable("onnx not installed: pip install 'gpuprune[runtimes]'") from None
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():  # deprecation notices: not the user's concern
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"])
    _ONNX[model] = (tuple(x.shape), buf.getvalue())
    return buf.getvalue()


def openvino_config(**extra: object) -> dict:
    """OpenVINO's compile settings for a timed baseline: our threads, latency mode, and fp32.

    fp32 because every gpuprune kernel computes in fp32: OpenVINO's default inference precision
    is bf16 wherever the CPU has native bf16 (AVX512_BF16 or AMX), which would time another
    precision with other numerics (``environment()`` records the default it would pick)."""
    return {
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        **extra,
    }


@DENSE_RUNTIMES.register("openvino")
def openvino_runtime(model: nn.Module, x: torch.Tensor) -> Infer:
    try:
        import openvino as ov
    except ImportError:
        raise Unavailable("openvino not installed: pip install 'gpuprune[runtimes]'") from None
    # from the ONNX file ONNX Runtime also reads: one export, and OpenVINO's ONNX reader is
    # several times faster than its TorchScript-tracing PyTorch frontend
    converted = ov.convert_model(io.BytesIO(_onnx_bytes(model, x)))
    compiled = ov.Core().compile_model(converted, "CPU", openvino_config())
    request = compiled.create_infer_request()
    inp = x.numpy()

    def run() -> torch.Tensor:
        return torch.from_numpy(request.infer([inp])[0].copy())

    return run


@DENSE_RUNTIMES.register("onnxruntime")
def onnxruntime_runtime(model: nn.Module, x: torch.Tensor) -> Infer:
    try:
        import onnxruntime as ort
    except ImportError:
        raise Unavailable("onnxruntime not installed: pip install 'gpuprune[runtimes]'") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    # its default spin-wait stays on, as users run it: the timing loop idles after each call
    # (BenchConfig.settle_s) so the spinning pool never takes the next path's cores
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        _onnx_bytes(model, x), opts, providers=["CPUExecutionProvider"]
    )
    feed = {"x": x.numpy()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


@DENSE_RUNTIMES.register("torch-compile")
def torch_compile_runtime(model: nn.Module, x: torch.Tensor) -> Infer:
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(x)  # compiles now, so the timed calls never include it
    except Exception as err:  # Inductor needs a C++ compiler; a failure is a skipped baseline
        raise Unavailable(f"torch.compile failed: {type(err).__name__}: {err}"[:200]) from None

    def run() -> torch.Tensor:
        with torch.no_grad():
            return compiled(x)

    return run


def runtime_backend(runtime: str, masked: bool) -> str:
    """Record name of a runtime baseline: ``openvino-dense`` or ``openvino-masked``."""
    return f"{runtime}-{'masked' if masked else 'dense'}"


def dense_backends(runtimes: Iterable[str]) -> set[str]:
    """The record names that count as a dense path a user would pick: eager and each runtime."""
    return {EAGER} | {runtime_backend(r, masked=False) for r in runtimes}


def best_dense(records: list[dict], candidates: set[str]) -> dict[tuple, tuple[str, float]]:
    """The fastest dense record per (model, batch) among ``candidates``: (backend, median_ms).

    Only unpruned models count (``method == "dense"``); a runtime that was skipped has no record
    and so cannot be the best.
    """
    best: dict[tuple, tuple[str, float]] = {}
    for r in records:
        if r.get("kind") != "e2e" or r["method"] != "dense" or r["backend"] not in candidates:
            continue
        key = (r.get("model"), r["batch"])
        if r["median_ms"] is not None and (key not in best or r["median_ms"] < best[key][1]):
            best[key] = (r["backend"], r["median_ms"])
    return best


__all__ = [
    "DENSE_RUNTIMES",
    "EAGER",
    "best_dense",
    "dense_backends",
    "runtime_backend",
]
