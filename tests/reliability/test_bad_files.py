"""Corrupt, truncated, foreign and hostile model files: refused in one line, never loaded wrong."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from reliability_helpers import TINY_ARGS, Exploit, one_line_error, tiny_model
from safetensors.torch import load_file, save

from gpuprune.errors import UserError
from gpuprune.prune.files import checksum, load_pruned, read_pruned, read_state_dict

PRUNE = ("prune", "--method", "tile", "--sparsity", "0.5", "--target", "cpu-pocl", "--skip-small")


def _header_len(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Re-save a pruned file after ``edit(header, tensors)``, with a consistent tensor checksum."""
    header, tensors = read_pruned(src)
    edit(header, tensors)
    header["sha256"] = checksum(tensors)
    header.pop("header_sha256", None)
    from gpuprune.prune.files import header_digest

    header["header_sha256"] = header_digest(header)
    dst.write_bytes(save(tensors, metadata={"gpuprune": json.dumps(header)}))


@pytest.mark.parametrize("where", ["empty", "8 bytes", "half header", "half tensors", "last byte"])
def test_truncated_pruned_file(files, tmp_path, cli, where):
    data = files["pruned"].read_bytes()
    cut = {"empty": 0, "8 bytes": 8, "half header": _header_len(data) // 2,
           "half tensors": (_header_len(data) + len(data)) // 2, "last byte": len(data) - 1}[where]
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:cut])
    for cmd in (("inspect", bad), ("compile", bad, "--backend", "reference")):
        line = one_line_error(cli(*cmd))
        assert "cut.safetensors" in line


@pytest.mark.parametrize("region", ["tensor data", "mask data", "header json"])
def test_bit_flipped_pruned_file(files, tmp_path, cli, region):
    data = bytearray(files["pruned"].read_bytes())
    start = _header_len(data)
    meta = json.loads(bytes(data[8:start]))
    if region == "header json":
        # a digit of the recorded plan: still valid JSON, so only a header checksum catches it
        pos = bytes(data).index(b'sparsity\\": 0.') + len(b'sparsity\\": 0.')
    else:
        # the packed mask of a pruned layer (its kept-block grid or bitmap), or a dense tensor
        is_mask = lambda k: k.startswith("packed:") and k.endswith((":blocks", ":bits"))  # noqa: E731
        name = next(k for k in meta if k != "__metadata__" and (
            is_mask(k) if region == "mask data" else not k.startswith("packed:")))  # fmt: skip
        pos = start + meta[name]["data_offsets"][0] + 1
    data[pos] ^= 0x01
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(data))
    line = one_line_error(cli("inspect", bad))
    assert "corrupt" in line or "not a readable" in line


def test_pruned_file_into_another_architecture(files):
    from gpuprune.models import create_model

    other = create_model("resnet20", num_classes=10, in_channels=1, width=0.25)
    with pytest.raises(UserError, match="does not match the model"):
        load_pruned(files["pruned"], other)
    with pytest.raises(UserError, match="holds a pruned tiny-cnn, not a resnet20"):
        load_pruned(files["pruned"], other, model_name="resnet20")
    wider = tiny_model(width=4.0)
    with pytest.raises(UserError, match="has shape"):
        load_pruned(files["pruned"], wider)


def test_pruned_file_whose_header_names_another_model(files, tmp_path, cli):
    bad = tmp_path / "renamed.safetensors"
    _rewrite(files["pruned"], bad, lambda h, t: h["model"].update(name="vgg16"))
    line = one_line_error(cli("compile", bad, "--backend", "reference"))
    assert "does not match the model" in line


def test_pruned_file_for_another_target_still_compiles_exactly(files, cli):
    # Blocks of cpu-pocl run through nvidia's tiling: fewer blocks skip, the output is still exact
    # (compile itself fails when the compiled model differs from the masked one).
    res = cli("compile", files["pruned"], "--backend", "reference", "--target", "nvidia",
              "--image-size", "8", "--repeats", "1", "--json")  # fmt: skip
    assert res.code == 0, res.err
    out = json.loads(res.out)
    assert out["target"] == "nvidia" and out["max_rel_error"] < 1e-4


def test_pruned_file_with_a_bad_target_record(files, tmp_path, cli):
    bad = tmp_path / "target.safetensors"
    _rewrite(files["pruned"], bad, lambda h, t: h["plan"]["target"].update(mwg=33))
    line = one_line_error(cli("inspect", bad))
    assert "mwg" in line


@pytest.mark.parametrize("how", ["transposed", "flattened", "wrong size", "float values",
                                 "values short", "shape swapped"])  # fmt: skip
def test_mask_shape_disagrees_with_weight(files, tmp_path, cli, how):
    def edit(header, tensors):
        # the packed mask of a conv layer: its kept-block grid
        name = next(k for k in tensors if k.startswith("packed:") and k.endswith(":blocks"))
        layer = name[: -len(":blocks")]
        m, values, shape = tensors[name], tensors[layer + ":values"], tensors[layer + ":shape"]
        if how == "values short":
            tensors[layer + ":values"] = values[:-1].contiguous()
            return
        if how == "shape swapped":
            tensors[layer + ":shape"] = shape.flip(0).contiguous()
            return
        tensors[name] = {
            "transposed": lambda: m.t().contiguous(),
            "flattened": lambda: m.reshape(-1).contiguous(),
            "wrong size": lambda: m[:-1].contiguous(),
            "float values": lambda: m.float() * 0.5,
        }[how]()

    bad = tmp_path / "mask.safetensors"
    _rewrite(files["pruned"], bad, edit)
    with pytest.raises(UserError, match="mask"):
        load_pruned(bad, tiny_model())
    line = one_line_error(cli("compile", bad, "--backend", "reference"))
    assert "mask" in line


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused(files, tmp_path, cli, value):
    state = load_file(str(files["st"]))
    name = next(k for k in state if k.endswith("weight") and state[k].dim() == 4)
    state[name] = state[name].clone()
    state[name].view(-1)[3] = value
    torch.save(state, tmp_path / "nan.pt")
    line = one_line_error(cli(*PRUNE[:1], tmp_path / "nan.pt", *TINY_ARGS, *PRUNE[1:],
                              "-o", tmp_path / "out.safetensors"))  # fmt: skip
    assert "NaN or infinite" in line and name in line
    assert not (tmp_path / "out.safetensors").exists()
    bad = tmp_path / "nan.safetensors"
    _rewrite(files["pruned"], bad, lambda h, t: t[name].view(-1).__setitem__(3, value))
    line = one_line_error(cli("compile", bad, "--backend", "reference"))
    assert "NaN or infinite" in line


@pytest.mark.parametrize("where", ["truncated", "bit-flipped", "garbage", "empty"])
def test_bad_torch_checkpoint(files, tmp_path, cli, where):
    data = bytearray(files["pt"].read_bytes())
    if where == "truncated":
        data = data[: len(data) * 2 // 3]
    elif where == "bit-flipped":
        # inside the largest tensor's stored bytes: torch.load alone would not notice
        data[len(data) // 2] ^= 0x04
    elif where == "garbage":
        data = bytearray(b"\x00not a checkpoint" * 50)
    else:
        data = bytearray()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError):
        read_state_dict(bad)
    line = one_line_error(cli(*PRUNE[:1], bad, *TINY_ARGS, *PRUNE[1:], "-o", tmp_path / "o.st"))
    assert "bad.pt" in line
    assert not (tmp_path / "o.st").exists()


def test_checkpoint_of_another_model(files, tmp_path, cli):
    line = one_line_error(cli("prune", files["pt"], "--model", "resnet20", "--in-channels", "1",
                              *PRUNE[1:], "-o", tmp_path / "o.safetensors"))  # fmt: skip
    assert "does not match the model" in line


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_checkpoint_with_code_is_never_executed(tmp_path, cli, suffix):
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Exploit(tmp_path / "armed")))  # a plain unpickler would run it
    assert (tmp_path / "armed").exists()
    bad = tmp_path / f"evil{suffix}"
    torch.save({"features.0.weight": Exploit(marker)}, bad)
    line = one_line_error(cli(*PRUNE[:1], bad, *TINY_ARGS, *PRUNE[1:], "-o", tmp_path / "o.st"))
    assert "cannot read checkpoint" in line
    assert not marker.exists()
    # a raw pickle (not torch's zip format) as well
    bad.write_bytes(pickle.dumps({"w": Exploit(marker)}))
    one_line_error(cli(*PRUNE[:1], bad, *TINY_ARGS, *PRUNE[1:], "-o", tmp_path / "o.st"))
    assert not marker.exists()


def test_plain_safetensors_is_not_a_pruned_file(files, cli):
    line = one_line_error(cli("inspect", files["st"]))
    assert "no gpuprune header" in line


def test_missing_files(tmp_path, cli):
    one_line_error(cli("inspect", tmp_path / "none.safetensors"))
    one_line_error(cli("prune", tmp_path / "none.pt", *TINY_ARGS, *PRUNE[1:], "-o", tmp_path / "o"))
    one_line_error(cli("compile", tmp_path / "none.safetensors"))


@pytest.mark.parametrize("method", ["tile", "unstructured", "filter"])
def test_api_refuses_to_prune_non_finite_weights(method):
    from gpuprune.prune import Pruner

    model = tiny_model()
    with torch.no_grad():
        model.features[4].weight[0, 0, 0, 0] = float("nan")
    pruner = Pruner(model, method, "cpu-pocl", skip_small=True, exclude_first_last=False)
    with pytest.raises(UserError, match="features.4 has NaN or infinite weights"):
        pruner.apply(0.5)
