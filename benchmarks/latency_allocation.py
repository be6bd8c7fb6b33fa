"""Latency-aware vs uniform tile pruning at equal modelled latency, on a trained dense model.

    python benchmarks/latency_allocation.py DENSE.safetensors [--finetune-steps 80] [-o out.json]

The dense model is the demo's (VGG16 at width 0.125 on Fashion-MNIST). Uniform ``tile`` at 75%
sets the latency budget: its latency on the measured per-layer curves (OpenCL on PoCL, batch 8),
as a fraction of dense. ``allocation="latency"`` then spends that budget with held-out loss
curves from 4 training batches. Both models are tested one-shot, after re-estimating BatchNorm
statistics on 20 training batches, and after the same number of fine-tuning steps (masks
fixed), on the full test split; then compiled for OpenCL and timed end to end, alternating.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from gpuprune.bench.environment import environment
from gpuprune.bench.timing import measure
from gpuprune.data import load_dataset, train_loader
from gpuprune.fileio import atomic_write_text
from gpuprune.gemm import block_reduce, gemm_view
from gpuprune.latency import LatencyModel, geometry_of, plan_latency
from gpuprune.models import create_model
from gpuprune.nn import compile as compile_model
from gpuprune.prune import Pruner, get_mask, get_method
from gpuprune.train.loop import evaluate as test_accuracy

TARGET, SPARSITY, BATCH = "cpu-pocl", 0.75, 8


def held_out_loss(model, batches, batch_stats=False):
    """Held-out loss with one layer's mask narrowed; ``batch_stats``: BatchNorm normalises with
    each batch's own statistics (running ones left untouched), as after recalibration."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def evaluate(name, mask):
        modules = dict(model.named_modules())
        buf = saved = None
        if name is not None:
            buf = get_mask(modules[name])
            saved = buf.clone()
            buf &= mask.reshape(buf.shape)
        model.eval()
        if batch_stats:
            for m in bns:
                m.train()
                m.momentum = 0.0  # normalise with batch statistics, keep the running ones
        try:
            with torch.no_grad():
                return sum(float(F.cross_entropy(model(x), y)) for x, y in batches) / len(batches)
        finally:
            for m in bns:
                m.momentum = 0.1
            if buf is not None:
                buf.copy_(saved)

    return evaluate


def finetune(model, data, steps, seed=0):
    if steps <= 0:
        return
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    done = 0
    while done < steps:
        for x, y in train_loader(data, 128, seed=seed + done):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            done += 1
            if done >= steps:
                break


@torch.no_grad()
def recalibrate_bn(model, data, batches=20):
    """Re-estimate BatchNorm statistics of the pruned model (no weight changes)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    for x, _ in itertools.islice(train_loader(data, 256, seed=7, augment=False), batches):
        model(x)
    for m in bns:
        m.momentum = 0.1


def modelled_ratio(pruner, lm):
    ms = dense = 0.0
    for name, spec in pruner.specs.items():
        curve = lm.curve(geometry_of(name, spec.module, spec.in_hw, BATCH))
        mask = gemm_view(get_mask(spec.module))
        kept = float(block_reduce(mask, lm.target.tile_block(), "any").float().mean())
        ms, dense = ms + curve(kept), dense + curve(1.0)
    return ms / dense


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dense")
    ap.add_argument("--finetune-steps", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0, help="held-out batches and fine-tuning order")
    ap.add_argument("--bn-batch-stats", action="store_true", help="sensitivity with batch BN")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    data = load_dataset("fashion-mnist", train_subset=10000, seed=0)
    base = create_model("vgg16", 10, data.in_channels, 0.125)
    base.load_state_dict(load_file(args.dense))
    size = (data.in_channels, *data.image_size)
    held = list(itertools.islice(train_loader(data, 256, seed=args.seed + 1, augment=False), 4))
    lm = LatencyModel("opencl", TARGET, "tile", progress=lambda n: print("measure", n))

    uniform = copy.deepcopy(base)
    pu = Pruner(uniform, "tile", TARGET, skip_small=True, input_size=size)
    pu.apply(SPARSITY)
    budget = modelled_ratio(pu, lm)

    aware = copy.deepcopy(base)
    pa = Pruner(aware, "tile", TARGET, skip_small=True, input_size=size)
    pa.apply(0.0)  # installs all-ones masks for the held-out evaluation
    imps = {n: gemm_view(s.module.weight).detach().abs() for n, s in pa.specs.items()}
    evaluate = held_out_loss(aware, held, args.bn_batch_stats)
    plan = plan_latency(
        SPARSITY, pa.specs, imps, get_method("tile"), evaluate,
        latency_budget=budget, latency_model=lm, latency_batch=BATCH,
    )  # fmt: skip
    pa = Pruner(aware, "tile", TARGET, allocation=plan.sparsities, skip_small=True,
                input_size=size)  # fmt: skip
    pa.apply(SPARSITY)
    rec = {
        "budget": budget,
        "aware_modelled": modelled_ratio(pa, lm),
        "allocation": {"uniform": {n: SPARSITY for n in pu.specs}, "latency": plan.sparsities},
    }

    for name, model, pr in (("uniform", uniform, pu), ("latency", aware, pa)):
        rec[name] = {"sparsity": pr.result().sparsity,
                     "oneshot_acc": test_accuracy(model, data)[1]}  # fmt: skip
        recalibrate_bn(model, data)
        rec[name]["bn_recalibrated_acc"] = test_accuracy(model, data)[1]
        finetune(model, data, args.finetune_steps, args.seed)
        rec[name]["finetuned_acc"] = test_accuracy(model, data)[1]
        print(name, rec[name])

    x = torch.randn(BATCH, *size)
    runs = {n: compile_model(m, TARGET, "opencl", methods="tile", verbose=False)
            for n, m in (("dense", base), ("uniform", uniform), ("latency", aware))}  # fmt: skip
    times: dict[str, list[float]] = {n: [] for n in runs}
    with torch.no_grad():
        for _ in range(5):  # alternate so drifting load hits every model alike
            for n, m in runs.items():
                times[n].append(measure(lambda m=m: m(x), warmup=2, repeats=7).median_ms)
    for n, t in times.items():
        rec.setdefault(n, {})["measured_ms"] = statistics.median(t)
    rec["environment"] = environment()
    rec["finetune_steps"], rec["seed"] = args.finetune_steps, args.seed
    rec["bn_batch_stats"] = args.bn_batch_stats
    print(json.dumps({k: v for k, v in rec.items() if k not in ("environment",)}, indent=1))
    if args.output:
        atomic_write_text(args.output, json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
