"""``gpuprune prune`` (prune a checkpoint to a file) and ``gpuprune inspect`` (look at one)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gpuprune.cli.output import console, print_json, print_table
from gpuprune.errors import UserError
from gpuprune.gemm import block_grid, block_reduce, gemm_view
from gpuprune.prune import (
    IMPORTANCES,
    METHODS,
    Pruner,
    read_pruned,
    save_pruned,
)
from gpuprune.prune.allocation import allocation_names, check_sparsity
from gpuprune.prune.files import check_matches, info_from_header, read_state_dict, unpack


def _parse_options(pairs: tuple[str, ...]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"method option {pair!r} is not KEY=VALUE", "write e.g. --option n=2")
        try:
            out[key] = json.loads(raw)  # numbers, true/false, null
        except ValueError:
            out[key] = raw  # plain strings such as group=filter
    return out


def _parse_model_args(text: str | None) -> dict:
    from gpuprune.models.factory import check_kwargs

    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as err:
        raise UserError(f"--model-args is not JSON ({err})",
                        'write e.g. --model-args \'{"num_classes": 1000}\'') from None  # fmt: skip
    return check_kwargs(data, "--model-args")


def _parse_size(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        size = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        size = ()
    if not size or min(size) < 1 or len(size) > 4:
        raise UserError(f"--input-size {text!r} is not a shape",
                        "write e.g. --input-size 3,224,224")  # fmt: skip
    return size


def _given(param: str) -> bool:
    """Whether the user passed this option (not just its default): unused options are refused."""
    ctx = click.get_current_context()
    return ctx.get_parameter_source(param) not in (None, click.core.ParameterSource.DEFAULT)


CODESIGN_FIX = "pass the JSON that `gpuprune codesign -o FILE` wrote"


def _read_layer_targets(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot read layer targets {path} ({err})", CODESIGN_FIX
        ) from None
    tilings = data.get("layer_targets", data) if isinstance(data, dict) else None
    if not isinstance(tilings, dict) or not all(isinstance(v, dict) for v in tilings.values()):
        raise UserError(
            f"{path} holds no {{layer: target}} mapping", CODESIGN_FIX
        )
    return tilings


def _parse_allocation(value: str) -> str | dict[str, float]:
    if value in allocation_names():
        return value
    path = Path(value)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(
                f"cannot read allocation file {path} ({err})", "check the path"
            ) from None
        if not isinstance(data, dict):
            raise UserError(f"allocation file {path} is not a mapping", 'write {"layer": 0.5, ...}')
        return data
    raise UserError(
        f"unknown allocation {value!r}",
        f"choose one of: {', '.join(allocation_names())}, or a .json file {{layer: sparsity}}",
    )


def _batches(name: str, root: str | None, count: int, batch_size: int) -> list:
    from gpuprune.data import load_dataset, train_loader

    data = load_dataset(name, root=root, download=False, train_subset=count * batch_size)
    loader = train_loader(data, batch_size, augment=False)
    return [batch for _, batch in zip(range(count), loader, strict=False)]


@click.command("prune")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--model", "model_name", required=True,
              help="vgg16, resnet20, timm:NAME, torchvision:NAME or package.module:factory.")
@click.option("--model-args", help='Model constructor arguments as JSON, e.g. \'{"num_classes": '
              '1000}\' (recorded in the output file).')  # fmt: skip
@click.option("--method", default="tile", show_default=True, help=", ".join(METHODS.names()))
@click.option("--sparsity", type=float, required=True, help="Fraction of weights to zero, [0, 1).")
@click.option("--target", help="Target preset or .toml/.yaml file (tile/simd methods need one).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output file.")
@click.option("--importance", default="magnitude", show_default=True,
              help=", ".join(IMPORTANCES.names()))  # fmt: skip
@click.option("--allocation", default="uniform", show_default=True,
              help="uniform, global, sensitivity, latency or a .json file")  # fmt: skip
@click.option("--latency-budget", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="For --allocation latency: latency as a fraction of dense.")  # fmt: skip
@click.option("--latency-backend", default="analytical", show_default=True,
              help="For --allocation latency: backend whose curves are used.")  # fmt: skip
@click.option("--layer-targets", type=click.Path(dir_okay=False),
              help="JSON from `gpuprune codesign -o`: a tiling per layer.")  # fmt: skip
@click.option("--exclude", multiple=True, help="Layer name or glob left dense (repeatable).")
@click.option("--include-first-last", is_flag=True, help="Also prune the first and last layers.")
@click.option("--skip-small/--no-skip-small", default=True, show_default=True,
              help="Leave layers smaller than one block dense (listed), or refuse them.")
@click.option("-O", "--option", "options", multiple=True, help="Method option KEY=VALUE, e.g. n=2.")
@click.option("--num-classes", type=click.IntRange(1, 100_000), default=10, show_default=True)
@click.option("--in-channels", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--width", type=click.FloatRange(0, 64, min_open=True), default=1.0,
              show_default=True, help="Model width multiplier.")  # fmt: skip
@click.option("--reconstruct", is_flag=True,
              help="Re-fit kept weights to the dense layer outputs on --data (obs implies it).")
@click.option("--permute", is_flag=True,
              help="Reorder channels first so the blocks gather important weights (same "
                   "function; tile, simd, simd-balanced).")  # fmt: skip
@click.option("--recalibrate-bn", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="Batches of --data to re-estimate batch-norm statistics after pruning.")
@click.option("--input-size", help="One input's shape for measuring FLOPs, e.g. 3,224,224 "
              "(default 3,32,32 for CNNs, or the --data samples' shape).")  # fmt: skip
@click.option("--data", "data_name",
              help="Data set for taylor/sensitivity/obs/--reconstruct, e.g. fashion-mnist.")
@click.option("--data-root", type=click.Path(), help="Where the data set's files are.")
@click.option("--batches", type=click.IntRange(1, 10_000), default=4, show_default=True,
              help="Batches of --data used.")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(1, 65536), default=64, show_default=True)
@click.option("--json", "json_out", is_flag=True, help="Print the result as JSON.")
def prune_cmd(
    checkpoint: str,
    model_name: str,
    model_args: str | None,
    method: str,
    sparsity: float,
    target: str | None,
    output: str,
    importance: str,
    allocation: str,
    latency_budget: float | None,
    latency_backend: str,
    layer_targets: str | None,
    exclude: tuple[str, ...],
    include_first_last: bool,
    skip_small: bool,
    options: tuple[str, ...],
    num_classes: int,
    in_channels: int,
    width: float,
    input_size: str | None,
    data_name: str | None,
    data_root: str | None,
    batches: int,
    batch_size: int,
    json_out: bool,
    reconstruct: bool,
    permute: bool,
    recalibrate_bn: int,
) -> None:
    """Prune CHECKPOINT (a state dict or .safetensors) of --model and write a pruned-model file."""
    from gpuprune.fileio import check_output
    from gpuprune.models import MODEL_SOURCES, ModelSpec

    check_output(output, flag="-o", inputs=(checkpoint, layer_targets, allocation))
    check_sparsity(sparsity)
    METHODS.get(method)  # unknown names: one-line errors before any work
    alloc = _parse_allocation(allocation)
    tilings = _read_layer_targets(layer_targets) if layer_targets else None
    alloc_options = {}
    if alloc == "latency":
        alloc_options = {"latency_backend": latency_backend}
        if latency_budget is not None:
            alloc_options["latency_budget"] = latency_budget
    else:
        for flag, given in (("--latency-budget", latency_budget is not None),
                            ("--latency-backend", _given("latency_backend"))):  # fmt: skip
            if given:
                raise UserError(f"{flag} only applies to --allocation latency",
                                f"add --allocation latency or drop {flag}")  # fmt: skip
    if not data_name:
        for flag, name in (("--data-root", "data_root"), ("--batches", "batches"),
                           ("--batch-size", "batch_size")):  # fmt: skip
            if _given(name):
                raise UserError(f"{flag} only applies with --data", f"add --data or drop {flag}")
    imp = IMPORTANCES.get(importance)
    needs_data = (imp.needs_grad or alloc == "sensitivity" or imp.reconstructs or reconstruct
                  or recalibrate_bn > 0)  # fmt: skip
    if needs_data and not data_name:
        raise UserError(
            f"importance {importance!r} / allocation {allocation!r} / --reconstruct / "
            "--recalibrate-bn needs data",
            "pass --data fashion-mnist (or cifar10) and --data-root if needed",
        )
    kwargs = _parse_model_args(model_args)
    source = model_name.partition(":")[0] if ":" in model_name else None
    if source in MODEL_SOURCES:  # a zoo model takes its sizes from its own arguments
        for flag, name in (("--num-classes", "num_classes"), ("--in-channels", "in_channels"),
                           ("--width", "width")):  # fmt: skip
            if _given(name):
                raise UserError(f"{flag} applies to gpuprune's own models, not {model_name}",
                                f"pass --model-args '{{\"{name}\": ...}}' with the argument "
                                f"{source} takes (e.g. num_classes)")  # fmt: skip
    spec = ModelSpec(model_name, num_classes, in_channels, width, kwargs)
    model = spec.build(allow_import=True)  # named on the command line: the user's own code
    state = read_state_dict(checkpoint)
    check_matches(state, model.state_dict(), f"checkpoint {checkpoint} (for model {model_name})")
    model.load_state_dict(state)
    count = max(batches, recalibrate_bn)
    data = _batches(data_name, data_root, count, batch_size) if needs_data else None
    pruner = Pruner(
        model,
        method,
        target,
        importance,
        alloc,
        exclude,
        exclude_first_last=not include_first_last,
        skip_small=skip_small,
        method_options=_parse_options(options),
        input_size=_parse_size(input_size) or (tuple(data[0][0].shape[1:]) if data else None),
        progress=not json_out,
        allocation_options=alloc_options,
        reconstruct=reconstruct,
    )
    if tilings:
        from gpuprune.latency import use_layer_targets

        use_layer_targets(pruner, tilings)
    if permute:
        pruner.permute(sparsity, data=data)
    result = pruner.apply(sparsity, data=data)
    if recalibrate_bn:
        from gpuprune.prune import recalibrate_bn as recalibrate

        recalibrate(model, data, recalibrate_bn)
    # the plan carries each layer's tiling (co-design), kernel and geometry to compile
    save_pruned(output, model, result, model_name=spec)
    if json_out:
        print_json({**result.to_dict(), "output": output})
        return
    cols, rows = result.table()
    name = result.target.name if result.target else "-"
    print_table(f"{model_name} pruned with {result.method} (target {name})", cols, rows)
    if result.skipped:
        console.print("left dense:")
        for s in result.skipped:
            console.print(f"  {s.name}: {s.reason}")
    if result.permutation is not None:
        _print_permutation(result.permutation)
    console.print(
        f"sparsity {result.sparsity:.4f} (requested {result.requested:.4f}), "
        f"FLOPs kept {result.flops_kept:.4f}; written to {output}"
    )


def _print_permutation(summary: dict) -> None:
    """What --permute did: links reordered, importance kept before/after, layers left in order."""
    before, after = summary["kept_before"], summary["kept_after"]
    gain = (sum(after.values()) - sum(before.values())) / max(len(after), 1)
    console.print(f"channels reordered on {summary['links_changed']} of {summary['links']} links "
                  f"({summary['swaps']} swaps): importance kept per pruned layer +{gain:.4f} "
                  "on average")  # fmt: skip
    if summary["fixed"]:
        console.print("channels left in order:")
        for name, why in summary["fixed"].items():
            console.print(f"  {name}: {why}")


@click.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write a heatmap of kept blocks (.png, .svg or .pdf).")
@click.option("--json", "json_out", is_flag=True, help="Print the per-layer facts as JSON.")
def inspect_cmd(file: str, plot: str | None, json_out: bool) -> None:
    """Show a pruned-model FILE: method, target and each layer's kept blocks and sparsity."""
    if plot:
        from gpuprune.fileio import check_output
        from gpuprune.prune.plot import plot_format

        check_output(plot, flag="--plot", inputs=(file,))
        plot_format(plot)
    header, tensors = read_pruned(file)
    info = info_from_header(header, file)
    tensors = unpack(tensors, file)
    masks = {k.split(":", 1)[1]: v for k, v in tensors.items() if k.startswith("mask:")}
    planned = {lay.name: lay for lay in info.plan} if info.plan else {}
    order = [n for n in planned if n in masks] + sorted(n for n in masks if n not in planned)
    masks = {n: masks[n] for n in order}  # the file sorts names; show them in model order
    layers = {}
    for name, mask in masks.items():
        m2 = gemm_view(mask)
        lay = planned.get(name)
        block = lay.block if lay else (1, 1)
        gm, gk = block_grid(tuple(m2.shape), block)
        layers[name] = {
            "shape": list(m2.shape),
            "block": list(block),
            "blocks_kept": int(block_reduce(m2, block, "any").sum()),
            "blocks_total": gm * gk,
            "sparsity": 1 - float(m2.float().mean()),
            "kernel": lay.kernel if lay else None,
            "tiling": (lay.tiling or info.target).name if lay and (lay.tiling or info.target)
            else None,
        }
    if json_out:
        print_json(
            {
                "model": info.model.name if info.model else None,
                "method": info.method,
                "target": info.target.name if info.target else None,
                "layers": layers,
            }
        )
    else:
        title = (
            f"{file}: {info.model.name if info.model else '?'} pruned with {info.method or '?'} "
            f"(target {info.target.name if info.target else '-'})"
        )
        rows = [
            [
                n,
                "x".join(map(str, d["shape"])),
                "x".join(map(str, d["block"])),
                d["kernel"] or "-",
                d["tiling"] or "-",
                f"{d['blocks_kept']}/{d['blocks_total']}",
                f"{d['sparsity']:.3f}",
            ]
            for n, d in layers.items()
        ]
        print_table(title, ["layer", "GEMM MxK", "block", "kernel", "tiling", "blocks kept",
                            "sparsity"], rows)  # fmt: skip
    if plot:
        from gpuprune.prune.plot import plot_masks

        blocks = {n: tuple(d["block"]) for n, d in layers.items()}
        name = info.model.name if info.model else ""
        plot_masks(masks, blocks, plot, title=f"{name} {info.method or ''}".strip())
        if not json_out:
            console.print(f"heatmap written to {plot}")
