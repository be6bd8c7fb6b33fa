"""The GPU benchmark's work (see run.py): models, baselines, timing, records.

Imported by run.py after it has set ``TRITON_INTERPRET`` for a dry run.
"""

from __future__ import annotations

import copy
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gpuprune import compile as gp_compile
from gpuprune.arch import Target, get_target
from gpuprune.bench import results
from gpuprune.bench.environment import device_slug, environment
from gpuprune.bench.timing import measure
from gpuprune.gemm import expand_blocks, from_gemm, gemm_view
from gpuprune.geometry import ConvGeometry
from gpuprune.kernels import get_backend, pack_for
from gpuprune.models import create_model
from gpuprune.nn.fold import find_chains, fold_bn

ROOT = Path(__file__).resolve().parents[2]
DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}
TOLERANCE = {torch.float32: 2e-2, torch.float16: 2e-2, torch.bfloat16: 5e-2}  # TF32 / half


# ---- models ---------------------------------------------------------------------------------
def _cbr(c_in: int, c_out: int, k: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if relu else []))


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck (torchvision v1.5: stride on the 3x3 conv)."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * 4
        self.body = nn.Sequential(_cbr(c_in, width, 1), _cbr(width, width, 3, stride),
                                  _cbr(width, c_out, 1, relu=False))  # fmt: skip
        self.short = (_cbr(c_in, c_out, 1, stride, relu=False)
                      if stride != 1 or c_in != c_out else nn.Identity())  # fmt: skip

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


def resnet50(width: float = 1.0, num_classes: int = 1000) -> nn.Module:
    """ResNet-50 (He et al. 2016; torchvision's layout) with a channel multiplier."""

    def c(n: int) -> int:
        return max(4, round(n * width))

    layers: list[nn.Module] = [_cbr(3, c(64), 7, 2), nn.MaxPool2d(3, 2, 1)]
    c_in = c(64)
    for i, (w, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        for b in range(blocks):
            layers.append(Bottleneck(c_in, c(w), 2 if (b == 0 and i > 0) else 1))
            c_in = c(w) * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(c_in, num_classes))  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    name: str
    side: int  # input height = width

    def build(self, width: float) -> nn.Module:
        if self.name == "resnet50":
            return resnet50(width)
        return create_model("vgg16", num_classes=10 if self.name == "vgg16-cifar" else 1000,
                            width=width)  # fmt: skip


def model_specs(dry: bool) -> dict[str, ModelSpec]:
    if dry:  # tiny: 1/16 of the channels, small images (the logic is what a dry run checks)
        return {"vgg16-cifar": ModelSpec("vgg16-cifar", 8), "vgg16-224": ModelSpec("vgg16-224", 16),
                "resnet50": ModelSpec("resnet50", 32)}  # fmt: skip
    return {"vgg16-cifar": ModelSpec("vgg16-cifar", 32), "vgg16-224": ModelSpec("vgg16-224", 224),
            "resnet50": ModelSpec("resnet50", 224)}  # fmt: skip


@dataclass(frozen=True)
class Layer:
    """A distinct Conv2d/Linear shape of a model, with the names of the layers that have it."""

    kind: str
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    hw: tuple[int, int]
    names: tuple[str, ...]

    @property
    def k(self) -> int:
        return self.cin * self.kernel[0] * self.kernel[1]

    def out_hw(self) -> tuple[int, int]:
        return tuple(
            (self.hw[i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel[i] - 1) - 1)
            // self.stride[i] + 1 for i in range(2)
        )  # fmt: skip

    def gemm(self, batch: int) -> tuple[int, int, int]:
        oh, ow = self.out_hw()
        return self.cout, self.k, batch * oh * ow

    def label(self) -> str:
        return f"{self.names[0]} {self.cin}->{self.cout} {self.kernel[0]}x{self.kernel[1]}/" \
               f"{self.stride[0]} @{self.hw[0]}x{self.hw[1]}"  # fmt: skip


def distinct_layers(model: nn.Module, side: int, skip: set[str]) -> list[Layer]:
    """Every Conv2d/Linear shape once (hooks record each layer's input size)."""
    seen: dict[tuple, list[str]] = {}
    hooks = []

    def hook(name):
        def fn(mod, inp, _out):
            x = inp[0]
            if isinstance(mod, nn.Conv2d):
                key = ("conv", mod.in_channels, mod.out_channels, tuple(mod.kernel_size),
                       tuple(mod.stride), tuple(mod.padding), tuple(mod.dilation),
                       tuple(x.shape[2:]))  # fmt: skip
            else:
                key = ("linear", mod.in_features, mod.out_features, (1, 1), (1, 1), (0, 0),
                       (1, 1), (1, 1))  # fmt: skip
            seen.setdefault(key, []).append(name)
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear) and name not in skip:
            hooks.append(mod.register_forward_hook(hook(name)))
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, side, side))
    for h in hooks:
        h.remove()
    return [Layer(*key, names=tuple(names)) for key, names in seen.items()]


def calibrated(model: nn.Module, side: int) -> nn.Module:
    """BatchNorm statistics from one random batch, so activations are O(1) as in a trained
    network (at initialisation they shrink layer by layer and output checks would see zeros)."""
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(torch.randn(8, 3, side, side))
    return model.eval()


def first_and_last(model: nn.Module) -> set[str]:
    """The first conv and the last linear stay dense (as the recipe's exclude_first_last)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return {names[0], names[-1]}


def fold_dense(model: nn.Module) -> nn.Module:
    """BatchNorm folded into its conv, for the cuDNN end-to-end baseline (as compile() does)."""
    out = copy.deepcopy(model).eval()
    mods = dict(out.named_modules())
    for name, chain in find_chains(out).items():
        if chain.bn and isinstance(mods.get(chain.bn), nn.BatchNorm2d):
            conv = mods[name]
            w, b = fold_bn(conv, mods[chain.bn])
            conv.weight = nn.Parameter(w)
            conv.bias = nn.Parameter(b)
            parent, _, child = chain.bn.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, nn.Identity())
    return out


def block_mask(m: int, k: int, block: tuple[int, int], sparsity: float, seed: int) -> torch.Tensor:
    """[m, k] 0/1 mask with exactly round(sparsity * blocks) random whole blocks zeroed."""
    gm, gk = -(-m // block[0]), -(-k // block[1])
    g = torch.Generator().manual_seed(seed)
    keep = torch.ones(gm * gk, dtype=torch.bool)
    pruned = min(round(sparsity * gm * gk), gm * gk - 1)  # a layer keeps at least one block
    keep[torch.randperm(gm * gk, generator=g)[:pruned]] = False
    return expand_blocks(keep.reshape(gm, gk), block, (m, k)).float()


def two_four(w: torch.Tensor) -> torch.Tensor:
    """``w`` [M, K] with the 2 smallest of every 4 consecutive weights along K zeroed."""
    m, k = w.shape
    g = w.reshape(m, k // 4, 4)
    keep = g.abs().argsort(dim=2)[..., 2:]
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(2, keep, True)
    return (g * mask).reshape(m, k)


# ---- the run --------------------------------------------------------------------------------
class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.start = time.perf_counter()
        self.dry = args.dry_run
        self.cuda = torch.cuda.is_available() and not self.dry
        if not self.cuda and not self.dry:
            raise SystemExit("no CUDA GPU: run with --dry-run to check the logic on the CPU")
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.backend = get_backend("triton")
        self.backend.check_available()
        if args.target == "detect":
            self.target = Target.detect("cuda") if self.cuda else get_target("nvidia")
        else:
            self.target = get_target(args.target)
        self.width = 1 / 16 if self.dry else 1.0
        self.specs = model_specs(self.dry)
        self.models = [m for m in args.models.split(",") if m]
        self.batches = [int(b) for b in args.batches.split(",") if b]
        self.sparsities = [float(s) for s in args.sparsities.split(",") if s]
        self.dtypes = [DTYPES[d] for d in args.dtypes.split(",") if d]
        if self.dry:
            self.batches = sorted({min(b, 2) for b in self.batches})
        self.records: list[dict] = []
        self.skipped: list[str] = []
        self.unavailable: dict[str, str] = {}
        self._built: dict[str, tuple[nn.Module, list[Layer], set[str]]] = {}

    # ---- timing ----
    def time_ms(self, fn) -> dict:
        if self.cuda:
            import triton.testing

            q = triton.testing.do_bench(fn, warmup=10, rep=40, quantiles=[0.5, 0.2, 0.8])
            return {"median_ms": q[0], "p20_ms": q[1], "p80_ms": q[2]}
        t = measure(fn, warmup=0, repeats=1, budget_s=0.0)
        return {"median_ms": t.median_ms, "p20_ms": t.p25_ms, "p80_ms": t.p75_ms}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    # ---- plan ----
    def cells(self) -> list[tuple[str, str, int, tuple[float, ...], str]]:
        """(what, model, batch, sparsities, layout) in priority order."""
        first_b = self.batches[0]
        first_s = tuple(s for s in self.sparsities if abs(s - 0.75) < 1e-9) or self.sparsities[:1]
        rest_s = tuple(s for s in self.sparsities if s not in first_s)
        out = []
        for what in ("layers", "e2e"):
            out += [(what, m, first_b, first_s, "nchw") for m in self.models]
        if rest_s:
            out += [("layers", m, first_b, rest_s, "nchw") for m in self.models]
        for b in self.batches[1:]:
            out += [("layers", m, b, tuple(self.sparsities), "nchw") for m in self.models]
        for b in self.batches[1:]:
            out += [("e2e", m, b, first_s, "nchw") for m in self.models]
        if rest_s:
            out += [("e2e", m, b, rest_s, "nchw") for m in self.models for b in self.batches]
        out += [("layers", m, first_b, first_s, "channels_last") for m in self.models]
        if self.args.no_e2e:
            out = [c for c in out if c[0] != "e2e"]
        return out

    def run(self) -> None:
        for what, model, batch, sparsities, layout in self.cells():
            label = f"{what} {model} batch {batch} {layout} sparsity {sparsities}"
            if self.left() <= 0:
                self.skipped.append(f"{label}: time budget ({self.args.budget_s:.0f} s) spent")
                continue
            print(f"[{time.perf_counter() - self.start:6.0f} s] {label}", flush=True)
            try:
                if what == "layers":
                    self.bench_layers(model, batch, sparsities, layout)
                else:
                    self.bench_e2e(model, batch, sparsities)
            except torch.cuda.OutOfMemoryError as err:
                self.skipped.append(f"{label}: out of GPU memory ({str(err).splitlines()[0]})")
                torch.cuda.empty_cache()

    def built(self, name: str):
        if name not in self._built:
            spec = self.specs[name]
            torch.manual_seed(0)
            model = calibrated(spec.build(self.width), spec.side)
            skip = first_and_last(model)
            layers = distinct_layers(model, spec.side, skip)
            if self.dry:  # the interpreter is slow: four shapes spread over the network
                step = max(1, len(layers) // 4)
                layers = layers[::step][:4]
            self._built[name] = (model, layers, skip)
        return self._built[name]

    # ---- per layer ----
    def bench_layers(self, name: str, batch: int, sparsities, layout: str) -> None:
        _, layers, _ = self.built(name)
        for layer in layers:
            if self.left() <= 0:
                self.skipped.append(f"layers {name} {layer.label()} batch {batch} {layout}: "
                                    "time budget spent")  # fmt: skip
                continue
            for dtype in self.dtypes:
                self.bench_layer(name, layer, batch, sparsities, layout, dtype)

    def bench_layer(self, model, layer: Layer, batch, sparsities, layout, dtype) -> None:
        seed = zlib.crc32(f"{model} {layer.names[0]}".encode())
        g = torch.Generator().manual_seed(seed)
        m, k, n = layer.gemm(batch)
        weight = torch.randn(m, k, generator=g) * (2 / k) ** 0.5
        bias = torch.randn(m, generator=g) * 0.1
        dev = self.device
        gx = torch.Generator(device=dev).manual_seed(seed)  # large inputs: drawn on the device
        shape = (batch, layer.cin, *layer.hw) if layer.kind == "conv" else (batch, layer.cin)
        x = torch.randn(shape, generator=gx, device=dev).to(dtype)
        if layout == "channels_last" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
        geo = dict(geometry=ConvGeometry(layer.cin, layer.kernel, **conv))

        def dense_op(w):
            wd = w.to(dev, dtype)
            b = bias.to(dev, dtype)
            if layer.kind == "conv":
                wd = from_gemm(wd, (m, layer.cin, *layer.kernel))
                if layout == "channels_last":
                    wd = wd.contiguous(memory_format=torch.channels_last)
                return lambda: F.conv2d(x, wd, b, **conv).relu_()
            return lambda: F.linear(x, wd, b).relu_()

        def ours(w, variant):
            packed = pack_for(w, self.target, variant)
            if layer.kind == "conv":
                f = self.backend.conv2d(packed, bias, self.target, variant=variant, relu=True,
                                        **geo)  # fmt: skip
            else:
                f = self.backend.linear(packed, bias, self.target, variant=variant, relu=True)
            return (lambda: f(x)), packed

        common = dict(model=model, layer=layer.names[0], layers=list(layer.names),
                      shape=layer.label(), gemm_mnk=[m, k, n], batch=batch,
                      dtype=str(dtype).removeprefix("torch."), layout=layout,
                      precision=self.precision(dtype, layer.kind))  # fmt: skip
        dense_bytes = m * k * dtype.itemsize
        cudnn = self.time_ms(dense_op(weight))
        base = cudnn["median_ms"]
        self.add(common, "dense", "cudnn", 0.0, cudnn, base, None, dense_bytes, dense_bytes)
        fn, _ = ours(weight, "dense")
        own = self.time_ms(fn)
        self.add(common, "dense", "triton", 0.0, own, base, own["median_ms"], dense_bytes,
                 dense_bytes)  # fmt: skip
        for s in sparsities:
            for variant in ("tile", "simd"):
                block = self.target.simd_block() if variant == "simd" else self.target.tile_block()
                w = weight * block_mask(m, k, block, s, seed=int(s * 100))
                fn, packed = ours(w, variant)
                err = self.rel_err(fn(), dense_op(w)())
                t = self.time_ms(fn)
                packed_bytes = packed.values.numel() * dtype.itemsize
                self.add(common, variant, "triton", s, t, base, own["median_ms"], packed_bytes,
                         dense_bytes, max_rel_err=err, ok=err <= TOLERANCE[dtype])  # fmt: skip
                if variant == "tile":
                    self.bench_bsr(common, w, x, layer, s, base, dense_bytes, dtype)
        if 0.5 in sparsities:
            self.bench_24(common, weight, x, layer, base, dense_bytes, dtype)

    def precision(self, dtype, kind: str) -> str:
        from gpuprune.kernels.triton.backend import fp32_precision

        return fp32_precision(kind) if dtype == torch.float32 else str(dtype).removeprefix("torch.")

    def rel_err(self, y, ref) -> float:
        scale = max(float(ref.float().abs().max()), 1e-6)
        return float((y.float() - ref.float()).abs().max()) / scale

    def add(self, common, method, backend, s, t, base, own, packed_bytes, dense_bytes, **extra):
        med = t["median_ms"]
        self.records.append({
            "kind": "gemm", **common, "method": method, "backend": backend, "sparsity": s, **t,
            "speedup": (own / med) if own else None,
            "speedup_vs_torch_dense": base / med,
            "ideal_speedup": 1 / (1 - s) if s < 1 else None,
            "efficiency": (base / med) * (1 - s) if s else None,
            "packed_bytes": packed_bytes, "dense_bytes": dense_bytes, **extra,
        })  # fmt: skip

    def cols(self, x, layer: Layer) -> torch.Tensor:
        """im2col columns [K, N] (what BSR and 2:4 multiply; their cost is part of the layer)."""
        if layer.kind == "linear":
            return x.t().contiguous()
        c = F.unfold(x, layer.kernel, dilation=layer.dilation, padding=layer.padding,
                     stride=layer.stride)  # fmt: skip
        b, _, n = c.shape  # unfold's rows (c, kh, kw) in gemm_view's order (kh, kw, c)
        return c.view(b, layer.cin, -1, n).permute(2, 1, 0, 3).reshape(layer.k, -1)

    def bench_bsr(self, common, w, x, layer, s, base, dense_bytes, dtype) -> None:
        key = "torch-bsr"
        if key in self.unavailable:
            return
        try:
            from torch.sparse._triton_ops import bsr_dense_mm
        except ImportError as err:
            self.unavailable[key] = f"torch.sparse._triton_ops.bsr_dense_mm missing ({err})"
            return
        if not self.cuda:
            self.unavailable[key] = "bsr_dense_mm needs a CUDA device"
            return
        bm, bk = self.target.tile_block()
        pad_m, pad_k = -w.shape[0] % bm, -w.shape[1] % bk  # BSR needs whole blocks: zero-pad
        try:
            bsr = F.pad(w, (0, pad_k, 0, pad_m)).to(self.device, dtype).to_sparse_bsr((bm, bk))

            def fn():
                c = self.cols(x, layer)
                pad_n = -c.shape[1] % 16  # bsr_dense_mm wants N % 16 == 0
                return bsr_dense_mm(bsr, F.pad(c, (0, pad_n, 0, pad_k)) if pad_n or pad_k else c)

            fn()
            t = self.time_ms(fn)
        except Exception as err:  # this shape: noted with the reason, the run goes on
            self.records.append({"kind": "note", **common, "method": "tile", "backend": key,
                                 "why": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"})
            return  # fmt: skip
        packed = bsr.values().numel() * dtype.itemsize
        self.add(common, "tile", key, s, t, base, None, packed, dense_bytes)

    def bench_24(self, common, weight, x, layer, base, dense_bytes, dtype) -> None:
        key = f"torch-2:4-{dtype}".replace("torch.", "")
        if key in self.unavailable:
            return
        try:
            from torch.sparse import to_sparse_semi_structured

            if not self.cuda:
                raise RuntimeError("semi-structured sparsity needs a CUDA GPU (SM 8.0+)")
            if dtype == torch.float32:
                raise RuntimeError("semi-structured sparsity runs float16/bfloat16/int8, not "
                                   "float32")  # fmt: skip
            if layer.k % 4:
                raise RuntimeError(f"K={layer.k} is not a multiple of 4")
            w24 = two_four(weight).to(self.device, dtype)
            sparse = to_sparse_semi_structured(w24)

            def fn():
                return torch.mm(sparse, self.cols(x, layer))

            fn()
            t = self.time_ms(fn)
        except Exception as err:
            self.records.append({"kind": "note", **common, "method": "nm", "backend": "torch-2:4",
                                 "why": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"})
            return  # fmt: skip
        self.add(common, "nm", "torch-2:4", 0.5, t, base, None, dense_bytes // 2 * 9 // 8,
                 dense_bytes)  # fmt: skip

    # ---- end to end ----
    def bench_e2e(self, name: str, batch: int, sparsities) -> None:
        model, _, skip = self.built(name)
        spec = self.specs[name]
        prunable = [n for n, m in model.named_modules()
                    if isinstance(m, nn.Conv2d | nn.Linear) and n not in skip]  # fmt: skip
        for dtype in self.dtypes:
            x = torch.randn(batch, 3, spec.side, spec.side).to(self.device, dtype)
            dense = fold_dense(model).to(self.device, dtype)
            layouts = {"nchw": (dense, x)}
            if self.cuda:
                cl = copy.deepcopy(dense).to(memory_format=torch.channels_last)
                layouts["channels_last"] = (cl, x.contiguous(memory_format=torch.channels_last))
            times = {}
            with torch.no_grad():
                for lay, (mod, inp) in layouts.items():
                    times[lay] = self.time_ms(lambda mod=mod, inp=inp: mod(inp))
            best = min(times, key=lambda lay: times[lay]["median_ms"])
            base = times[best]["median_ms"]
            common = dict(model=name, batch=batch, dtype=str(dtype).removeprefix("torch."),
                          precision=self.precision(dtype, "conv"))  # fmt: skip
            for lay, t in times.items():
                self.records.append({"kind": "e2e", **common, "method": "dense",
                                     "backend": f"cudnn-{lay}", "sparsity": 0.0, **t,
                                     "speedup_vs_torch_dense": base / t["median_ms"]})  # fmt: skip
            for s in sparsities:
                for variant, method in (("tile", "tile"), ("simd", "simd")):
                    if self.left() <= 0:
                        self.skipped.append(f"e2e {name} b{batch} {dtype} {variant} {s}: budget")
                        continue
                    pruned = self.pruned(model, prunable, variant, s)
                    compiled = gp_compile(pruned.to(dtype), self.target, backend="triton",
                                          methods=dict.fromkeys(prunable, method),
                                          verbose=False).to(self.device)  # fmt: skip
                    with torch.no_grad():
                        ref = fold_dense(pruned).to(self.device, dtype)(x)
                        y = compiled(x)
                        err = self.rel_err(y, ref)
                        t = self.time_ms(lambda c=compiled, x=x: c(x))
                    report = compiled.gpuprune_compile
                    self.records.append({
                        "kind": "e2e", **common, "method": method, "backend": "triton",
                        "sparsity": s, **t, "speedup_vs_torch_dense": base / t["median_ms"],
                        "ideal_speedup": 1 / (1 - s), "dense_backend": f"cudnn-{best}",
                        "compiled_layers": len(report.layers),
                        "dense_layers": [lay.to_dict() for lay in report.dense],
                        "max_rel_err": err, "ok": err <= TOLERANCE[dtype],
                    })  # fmt: skip

    def pruned(self, model, names, variant, s) -> nn.Module:
        out = copy.deepcopy(model)
        block = self.target.simd_block() if variant == "simd" else self.target.tile_block()
        with torch.no_grad():
            for i, n in enumerate(names):
                w = out.get_submodule(n).weight
                flat = gemm_view(w)
                w.copy_(from_gemm(flat * block_mask(*flat.shape, block, s, seed=i), w))
        return out

    # ---- output ----
    def save(self) -> Path:
        env = environment()
        out = self.args.out or ROOT / "benchmarks" / "results" / "gpu" / (
            ("dry-run" if self.dry else device_slug(env)) + ".json")  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        ok = [r["ok"] for r in self.records if "ok" in r]
        meta = {
            "benchmark": "gpu", "dry_run": self.dry, "environment": env,
            "target": self.target.to_dict(), "models": self.models, "batches": self.batches,
            "sparsities": self.sparsities, "dtypes": [str(d) for d in self.dtypes],
            "width": self.width, "budget_s": self.args.budget_s,
            "elapsed_s": time.perf_counter() - self.start,
            "layers_desc": "distinct layer shapes of " + ", ".join(self.models),
            "all_outputs_match": all(ok) if ok else None,
            "skipped": self.skipped,
            "note": "speedup: against the same Triton kernel walking every block; "
                    "speedup_vs_torch_dense: against cuDNN at the same dtype and layout "
                    "(float32 uses TF32 exactly when PyTorch does); medians of do_bench",
        }  # fmt: skip
        records = list(self.records)
        if self.unavailable:
            records.append({"kind": "skipped", "runners": dict(self.unavailable)})
        results.save(out, meta, records)
        return out

