"""Pruned-model files: round trip, checksum, and refusing a file for another model."""

from __future__ import annotations

import struct

import pytest
import torch
from prune_helpers import SMALL

from gpuprune.errors import UserError
from gpuprune.models import ModelSpec, create_model
from gpuprune.prune import Pruner, get_mask, load_pruned, masked_layers, read_pruned, save_pruned
from gpuprune.prune.files import read_state_dict


@pytest.fixture
def pruned(tmp_path):
    model = create_model("vgg16", width=0.25)
    result = Pruner(model, "tile", target=SMALL).apply(0.5)
    path = tmp_path / "vgg.safetensors"
    save_pruned(path, model, result, model_name=ModelSpec("vgg16", width=0.25),
                extra={"accuracy": 0.5})  # fmt: skip
    return model, result, path


def test_round_trip_restores_weights_masks_and_plan(pruned):
    model, result, path = pruned
    fresh = create_model("vgg16", width=0.25)
    info = load_pruned(path, fresh, model_name="vgg16")
    assert info.model == ModelSpec("vgg16", width=0.25)
    assert info.method == "tile" and info.target == SMALL
    assert info.plan == result.plan and fresh.gpuprune_plan == result.plan
    assert info.extra == {"accuracy": 0.5}
    assert set(masked_layers(fresh)) == set(masked_layers(model))
    for name, mod in masked_layers(model).items():
        assert torch.equal(get_mask(fresh.get_submodule(name)), get_mask(mod))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), fresh.eval()(x))


def test_tampered_tensor_is_detected(pruned, tmp_path):
    _, _, path = pruned
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    raw[8 + n + 100] ^= 0xFF  # flip bits inside the tensor payload
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="checksum"):
        read_pruned(bad)


def test_file_for_another_model_is_refused(pruned):
    _, _, path = pruned
    with pytest.raises(UserError, match="does not match the model"):
        load_pruned(path, create_model("resnet20"))
    with pytest.raises(UserError, match="shape"):
        load_pruned(path, create_model("vgg16", width=0.5))
    with pytest.raises(UserError, match="not a resnet20"):
        load_pruned(path, create_model("vgg16", width=0.25), model_name="resnet20")


def test_non_gpuprune_files_are_user_errors(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file at all")
    with pytest.raises(UserError, match="safetensors"):
        read_pruned(junk)
    with pytest.raises(UserError, match="does not exist"):
        read_pruned(tmp_path / "missing.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_state_dict(tmp_path / "junk.pt")


def test_read_state_dict_accepts_wrapped_checkpoints(tmp_path):
    state = create_model("resnet20", width=0.25).state_dict()
    torch.save({"model": state, "epoch": 3}, tmp_path / "c.pt")
    assert read_state_dict(tmp_path / "c.pt").keys() == state.keys()
    torch.save([1, 2], tmp_path / "l.pt")
    with pytest.raises(UserError, match="no state dict"):
        read_state_dict(tmp_path / "l.pt")
