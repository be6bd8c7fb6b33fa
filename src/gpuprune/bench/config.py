"""What a benchmark run covers: ``QUICK`` fits minutes on 2 CPU cores, ``FULL`` is the grid."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class BenchConfig:
    batches: tuple[int, ...] = (1, 16, 64)
    sparsities: tuple[float, ...] = (0.5, 0.75, 0.875, 0.9, 0.95)  # 0 (dense) is always measured
    methods: tuple[str, ...] = ("tile", "simd", "simd-balanced", "unstructured", "nm")
    layers: tuple[str, ...] | None = None  # None: all 13 VGG16 convolutions
    runners: tuple[str, ...] | None = None  # None: every runner available here
    target: str = "cpu-pocl"  # blocks of the masks and of the skip kernels
    width: float = 1.0  # VGG16 channel multiplier
    warmup: int = 1
    repeats: int = 5
    budget_s: float = 1.5  # per measurement: stop repeating (after 3) past this
    e2e_batches: tuple[int, ...] = (1, 16)
    e2e_methods: tuple[str, ...] = ("tile", "simd", "simd-balanced", "unstructured", "nm")
    e2e_sparsities: tuple[float, ...] = (0.5, 0.75, 0.9)
    # gpuprune backends run end to end ("torch" = eager PyTorch on the unpruned model); the
    # OpenCL backend on PoCL takes seconds per ResNet-50 image, so it is opt-in (--e2e-backends)
    e2e_backends: tuple[str, ...] = ("torch", "cpu")
    # dense runtimes a CPU user deploys with, timed beside them (skipped with a note if missing)
    e2e_runtimes: tuple[str, ...] = ("openvino", "onnxruntime", "torch-compile")
    e2e_models: tuple[str, ...] = ("vgg16", "resnet50")
    e2e_width: float = 1.0  # channel multiplier of the models that take one (VGG16)
    # end to end, each path's timed call follows warm_s of untimed calls and is followed by
    # settle_s of idle (timing.measure_many): every runtime runs back to back at its library's
    # default wait policy, as in a serving loop, and its pool's spin after the call (OpenMP's:
    # under 15 ms here) ends before the next path starts
    warm_s: float = 0.05
    settle_s: float = 0.03
    notes: tuple[str, ...] = field(default=())

    def with_(self, **changes) -> BenchConfig:
        return replace(self, **changes)


FULL = BenchConfig()

QUICK = BenchConfig(
    batches=(16,),
    sparsities=(0.75,),
    methods=("tile", "simd", "unstructured"),
    layers=("conv4", "conv6", "conv9"),
    repeats=3,
    budget_s=0.6,
    e2e_batches=(16,),
    e2e_methods=("tile",),
    e2e_sparsities=(0.75,),
    e2e_models=("vgg16",),
    e2e_width=0.5,
    notes=(
        "quick mode: 3 layers, batch 16, 75% sparsity, 3 methods; VGG16 at width 0.5 end to "
        "end beside OpenVINO, ONNX Runtime and torch.compile",
    ),
)
