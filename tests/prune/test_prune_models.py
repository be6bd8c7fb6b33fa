"""Every method on a narrow CIFAR VGG16 and on ResNet20 (residual connections)."""

from __future__ import annotations

import pytest
import torch
from prune_helpers import SMALL

from gpuprune.errors import UserError
from gpuprune.models import create_model
from gpuprune.prune import METHODS, Pruner, finalize, prune, sparsity_report

# quantised by design: N:M to 1/4 (0.6 -> 2:4), banks to 1/(2 bank), channel-perf to 8-row steps
QUANTISED = {"nm": 0.125, "channel-perf": 0.15, "balanced": 1 / (2 * SMALL.kwg)}


def staircase(layer, channels: int) -> float:
    """A fake latency: flat in steps of 8 channels, as GPUs are in warps."""
    return float(-(-channels // 8))


@pytest.mark.parametrize("name,width", [("vgg16", 0.25), ("resnet20", 1.0)])
@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_on_vgg16_and_resnet20(name, width, method):
    model = create_model(name, width=width)
    options = {"latency": staircase} if method == "channel-perf" else {}
    result = prune(model, method, 0.6, target=SMALL, method_options=options)
    assert result.method == method
    assert abs(result.sparsity - 0.6) <= QUANTISED.get(method, 0.01)
    assert 0 < result.flops_kept < 1
    for lr in result.layers:
        assert lr.blocks_kept >= 1 and lr.flops_kept <= lr.flops_dense
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    finalize(model)
    assert torch.equal(model(x), out)


def test_channel_perf_snaps_to_latency_steps():
    model = create_model("vgg16", width=0.25)
    result = prune(model, "channel-perf", 0.6, method_options={"latency": staircase, "probes": 16})
    for lr in result.layers:
        kept_rows = round((1 - lr.sparsity) * lr.shape[0])
        assert kept_rows % 8 == 0 or kept_rows == lr.shape[0], (lr.name, kept_rows)


def test_channel_perf_with_measured_latency_runs():
    model = create_model("resnet20", width=0.25)
    pruner = Pruner(model, "channel-perf", exclude=["layers.[1-8].*"], method_options={"probes": 2})
    result = pruner.apply(0.5)
    assert all(lr.sparsity in (0.0, 0.5) for lr in result.layers)


def test_tile_on_too_small_layers_is_an_error_or_skipped():
    model = create_model("resnet20", width=1.0)  # 16-channel layers, nvidia tile has 64 rows
    with pytest.raises(UserError, match="smaller than one tile block"):
        Pruner(model, "tile", target="nvidia", skip_small=False)
    pruner = Pruner(model, "tile", target="nvidia")  # skip_small is the default
    assert pruner.skipped and all(s.shape[0] >= 64 for s in pruner.specs.values())
    assert pruner.apply(0.5).skipped == tuple(pruner.skipped)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "tile"}, "needs|target"),
        ({"method": "blocky", "target": SMALL}, "unknown pruning method"),
        ({"method": "unstructured", "sparsity": 1.0}, "outside"),
        ({"method": "unstructured", "sparsity": -0.1}, "outside"),
        ({"method": "unstructured", "exclude": ["nope"]}, "matches no"),
        ({"method": "nm", "method_options": {"n": 5, "m": 4}}, "N:M"),
        ({"method": "ssl", "method_options": {"group": "kernel"}}, "SSL group"),
        ({"method": "unstructured", "allocation": "magic"}, "allocation"),
    ],
)
def test_bad_input_is_one_line_user_error(kwargs, match):
    model = create_model("resnet20", width=0.25)
    kwargs = {"sparsity": 0.5, **kwargs}
    with pytest.raises(UserError, match=match) as err:
        prune(model, **kwargs)
    assert "\n" not in str(err.value) and "; " in str(err.value)


def test_sparsity_report_lists_layers_and_total():
    model = create_model("resnet20", width=0.25)
    prune(model, "unstructured", 0.5)
    text = sparsity_report(model)
    assert "layers.3.shortcut.0" in text and "total" in text and "yes" in text


def test_package_is_callable_as_the_prune_function():
    import gpuprune.prune

    model = create_model("resnet20", width=0.25)
    assert gpuprune.prune(model, "unstructured", 0.5).sparsity == pytest.approx(0.5, abs=0.01)


def test_a_user_registered_method_plugs_in():
    from gpuprune.prune import PruneMethod

    class RowPairs(PruneMethod):
        name = "row-pairs"

        def unit(self, layer):
            return (2, layer.shape[1])

    METHODS.add("row-pairs", RowPairs)
    try:
        model = create_model("resnet20", width=0.5)
        result = prune(model, "row-pairs", 0.5)
        assert all(lr.block == (2, lr.shape[1]) for lr in result.layers)
        mask = next(iter(Pruner(model, "row-pairs").masks.values()))
        rows = mask.reshape(mask.shape[0], -1).all(dim=1)
        assert torch.equal(rows[0::2], rows[1::2])  # rows pruned in pairs
    finally:
        METHODS._items.pop("row-pairs")
