"""Pruned files of any model: packed, exact round trips for every method, and zoo models
(``timm:``/``torchvision:``) rebuilt from the file's own record through the model registry."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import gpuprune
from gpuprune.cli.main import main
from gpuprune.errors import UserError
from gpuprune.models import ModelSpec, create_model
from gpuprune.prune import METHODS, get_mask, masked_layers, prune, read_pruned, save_pruned
from gpuprune.prune.files import load
from zoo_helpers import zoo

TARGET = {"tile": "nvidia", "simd": "nvidia", "simd-balanced": "nvidia"}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)  # -0.0 and +0.0 differ here


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_round_trips_bit_exact(method, tmp_path):
    torch.manual_seed(1)
    model = create_model("vgg16", width=0.25)
    with torch.no_grad():  # a negative zero among the kept weights must survive too
        model.features[3].weight.view(-1)[::7] = -0.0
    result = prune(model, method, 0.75, target=TARGET.get(method, "nvidia"))
    path = tmp_path / "m.safetensors"
    save_pruned(path, model, result, model_name=ModelSpec("vgg16", width=0.25))
    _, tensors = read_pruned(path)
    assert not any(k.startswith("mask:") for k in tensors)  # masks are stored packed
    again, plan, _ = load(path)
    assert plan == result.plan
    want, got = masked_layers(model), masked_layers(again)
    assert set(want) == set(got)
    for name, mod in want.items():
        assert torch.equal(get_mask(mod), get_mask(got[name]))
        assert torch.equal(_bits(mod.weight), _bits(got[name].weight))
        original = mod.parametrizations.weight.original
        assert torch.equal(_bits(original), _bits(got[name].parametrizations.weight.original))
    dense = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in dense.items())


@pytest.mark.parametrize("method", ["tile", "unstructured"])
def test_a_75_percent_sparse_file_is_well_under_half_the_dense_checkpoint(method, tmp_path):
    model = create_model("vgg16", width=0.5)
    dense = tmp_path / "dense.pt"
    torch.save(model.state_dict(), dense)
    result = prune(model, method, 0.75, target="nvidia", exclude_first_last=False)
    save_pruned(tmp_path / "p.safetensors", model, result)
    ratio = (tmp_path / "p.safetensors").stat().st_size / dense.stat().st_size
    assert ratio < 0.4, ratio


def test_a_format_2_file_still_loads(tmp_path):
    from safetensors.torch import save

    from gpuprune.prune.files import checksum, header_digest, plain_state_dict

    model = create_model("tiny-cnn", width=4.0)
    result = prune(model, "tile", 0.5, target="nvidia")
    tensors = {k: v.contiguous() for k, v in plain_state_dict(model).items()}
    tensors |= {f"mask:{n}": get_mask(m) for n, m in masked_layers(model).items()}
    header = {"format": "gpuprune-pruned/2",
              "model": {"name": "tiny-cnn", "num_classes": 10, "in_channels": 3, "width": 4.0},
              "plan": result.plan.to_dict(), "extra": {}, "sha256": checksum(tensors)}  # fmt: skip
    header["header_sha256"] = header_digest(header)
    old = tmp_path / "v2.safetensors"
    old.write_bytes(save(tensors, metadata={"gpuprune": json.dumps(header)}))
    with pytest.warns(UserWarning, match=r"K order \(c_in, kh, kw\).*prune the dense model again"):
        again = gpuprune.load(old).model
    for name, mod in masked_layers(model).items():
        assert torch.equal(get_mask(mod), get_mask(again.get_submodule(name)))


def test_a_format_3_file_unpacks_in_its_own_k_order(tmp_path):
    """A /3 file packed its blocks over weight.reshape(out, -1): they unpack in that order."""
    from safetensors.torch import save

    from gpuprune.prune.files import checksum, header_digest, plain_state_dict
    from gpuprune.prune.packing import pack_layer

    model = create_model("tiny-cnn", width=4.0)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 3)
    w = conv.weight.detach()
    keep = torch.zeros(w.shape[0], w[0].numel(), dtype=torch.bool)
    keep[:, : 32 * (w[0].numel() // 64)] = True  # the first (c_in, kh, kw) columns: 1x32 blocks
    name = next(n for n, m in model.named_modules() if m is conv)
    tensors = {k: v.contiguous() for k, v in plain_state_dict(model).items()}
    masked = (w * keep.reshape(w.shape)).contiguous()
    del tensors[f"{name}.weight"]
    # what /3 wrote: the packing over the reshape, i.e. of a matrix given as the weight itself
    tensors |= pack_layer(name, masked.reshape(w.shape[0], -1), keep, (1, 32))
    tensors[f"packed:{name}:shape"] = torch.tensor(list(w.shape), dtype=torch.int64)
    assert f"packed:{name}:blocks" in tensors  # stored as blocks, not bits
    header = {"format": "gpuprune-pruned/3",
              "model": {"name": "tiny-cnn", "num_classes": 10, "in_channels": 3, "width": 4.0},
              "plan": None, "extra": {}, "sha256": checksum(tensors)}  # fmt: skip
    header["header_sha256"] = header_digest(header)
    old = tmp_path / "v3.safetensors"
    old.write_bytes(save(tensors, metadata={"gpuprune": json.dumps(header)}))
    again = gpuprune.load(old).model.get_submodule(name)
    assert torch.equal(get_mask(again), keep.reshape(w.shape))
    assert torch.equal(again.weight.detach(), masked)


def test_a_file_never_makes_gpuprune_fetch_weights():
    record = {"name": "torchvision:resnet18", "num_classes": 10, "in_channels": 3, "width": 1.0,
              "kwargs": {"weights": "DEFAULT"}}  # fmt: skip
    with pytest.raises(UserError, match="fetch weights"):
        ModelSpec.from_dict(record)
    spec = ModelSpec("torchvision:resnet18", kwargs={"weights": None, "num_classes": 10})
    assert spec.to_dict()["kwargs"] == {"num_classes": 10}


@pytest.mark.parametrize("kwargs, needle", [
    ([1, 2], "not a mapping"), ({"1x": 2}, "not an argument name"), ({"a": float("nan")}, "JSON"),
])  # fmt: skip
def test_bad_model_arguments_are_one_line_errors(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        create_model("tiny-cnn", kwargs=kwargs)


def test_a_zoo_that_cannot_be_imported_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails
    with pytest.raises(UserError) as err:
        create_model("torchvision:resnet18")
    line = str(err.value)
    assert "cannot import torchvision" in line and "pip install" in line and "\n" not in line


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_zoo_models_build_by_name_and_unknown_names_are_refused(source):
    zoo(source)
    model = create_model(f"{source}:resnet18", kwargs={"num_classes": 7})
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(UserError, match=f"{source} has no model"):
        create_model(f"{source}:no_such_net")
    # a file may name a zoo model: it resolves through the registry, no code is imported
    spec = ModelSpec.from_dict(ModelSpec(f"{source}:resnet18", kwargs={"num_classes": 7}).to_dict())
    assert spec.build(allow_import=False)(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_cli_prunes_and_compiles_a_torchvision_model_from_its_file(tmp_path, capsys):
    zoo("torchvision")
    model = create_model("torchvision:resnet18", kwargs={"num_classes": 10})
    ckpt = tmp_path / "dense.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "r18.safetensors"
    args = ["prune", ckpt, "--model", "torchvision:resnet18", "--model-args",
            '{"num_classes": 10}', "--method", "tile", "--target", "nvidia", "--sparsity",
            "0.75", "--input-size", "3,64,64", "-o", out]  # fmt: skip
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    capsys.readouterr()
    header, _ = read_pruned(out)
    assert header["model"]["kwargs"] == {"num_classes": 10}
    assert out.stat().st_size < 0.5 * ckpt.stat().st_size
    code = main(["compile", str(out), "--backend", "reference", "--image-size", "32",
                 "--repeats", "1", "--json"])  # fmt: skip
    text = capsys.readouterr()
    assert code == 0, text.err
    assert json.loads(text.out)["max_rel_error"] < 1e-4
    # the size flags belong to gpuprune's own models
    args[args.index("-o") + 1] = tmp_path / "never.safetensors"
    assert main([str(a) for a in [*args, "--num-classes", "10"]]) == 2
    assert "--model-args" in capsys.readouterr().err
    bad = [*args]
    bad[bad.index("--input-size") + 1] = "3,x,64"
    assert main([str(a) for a in bad]) == 2
    assert "--input-size" in capsys.readouterr().err


class _Variants(torch.nn.Module):
    """A grouped conv, a transposed conv and a Conv1d between a stem and a head."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.a = nn.Conv2d(3, 64, 3, padding=1)
        self.g = nn.Conv2d(64, 128, 3, padding=1, groups=2)
        self.t = nn.ConvTranspose2d(128, 64, 2, stride=2)
        self.c1 = nn.Conv1d(64, 64, 3, padding=1)
        self.h = nn.Linear(64, 10)

    def forward(self, x):
        return self.h(self.c1(self.t(self.g(self.a(x))).flatten(2)).mean(2))


@pytest.mark.parametrize("method", ["tile", "simd", "unstructured"])
def test_conv_variants_round_trip_bit_exact(method, tmp_path):
    torch.manual_seed(2)
    model = _Variants()
    result = prune(model, method, 0.75, target="cpu-pocl", example_inputs=torch.randn(1, 3, 8, 8))
    save_pruned(tmp_path / "v.safetensors", model, result)
    again = _Variants()
    gpuprune.load_pruned(tmp_path / "v.safetensors", again)
    want, got = masked_layers(model), masked_layers(again)
    assert set(want) == set(got) and {"g", "c1"} <= set(want)
    for name, mod in want.items():
        assert torch.equal(get_mask(mod), get_mask(got[name]))
        assert torch.equal(_bits(mod.weight), _bits(got[name].weight))
