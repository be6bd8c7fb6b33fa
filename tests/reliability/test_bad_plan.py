"""A pruned-model header with valid checksums but a bad plan, model record or extra: one line,
exit 2, before any model is built or kernel compiled."""

from __future__ import annotations

import json

import pytest
from reliability_helpers import one_line_error
from safetensors.torch import save

from gpuprune.prune.files import checksum, header_digest, read_pruned


def _forge(src, dst, edit) -> None:
    header, tensors = read_pruned(src)
    edit(header)
    header["sha256"] = checksum(tensors)
    header["header_sha256"] = header_digest(header)  # an attacker or a buggy tool recomputes it
    dst.write_bytes(save(tensors, metadata={"gpuprune": json.dumps(header)}))


def _layer(h):
    return h["plan"]["layers"][0]


BAD = {
    "plan is a list": (lambda h: h.update(plan=[]), "not a mapping"),
    "plan version": (lambda h: h["plan"].update(version="gpuprune-plan/9"), "version"),
    "unknown plan key": (lambda h: h["plan"].update(layer_targets={}), "unknown key"),
    "kernel": (lambda h: _layer(h).update(kernel="cuda"), "kernel 'cuda'"),
    "kind": (lambda h: _layer(h).update(kind="lstm"), "kind 'lstm'"),
    "gemm rows": (lambda h: _layer(h).update(gemm=[3, _layer(h)["gemm"][1]]), "the model has a"),
    "gemm K": (lambda h: _layer(h).update(gemm=[_layer(h)["gemm"][0], 3]), "K="),
    "negative block": (lambda h: _layer(h).update(block=[-1, 4]), "positive integers"),
    "sparsity 2": (lambda h: _layer(h).update(sparsity=2.0), "fraction"),
    "sparsity nan-ish": (lambda h: _layer(h).update(requested="x"), "fraction"),
    "tiling string": (lambda h: _layer(h).update(tiling="os:abort"), "not a mapping"),
    "tiling mwg": (lambda h: _layer(h).update(tiling={**h["plan"]["target"], "mwg": 33}), "mwg"),
    "geometry": (lambda h: _layer(h)["geometry"].update(stride=[0, 1]), "stride"),
    "geometry K": (lambda h: _layer(h)["geometry"].update(in_channels=7), "K="),
    "unknown layer": (lambda h: _layer(h).update(name="features.99"), "lacks"),
    "duplicate layer": (lambda h: h["plan"]["layers"].append(_layer(h)), "twice"),
    "model record": (lambda h: h.update(model="tiny-cnn"), "model record"),
    "model width": (lambda h: h["model"].update(width=1e9), "width"),
    "model classes": (lambda h: h["model"].update(num_classes=-3), "num_classes"),
    "extra": (lambda h: h.update(extra=[1, 2]), "extra"),
    "unknown header entry": (lambda h: h.update(layer_targets={}), "unknown header entry"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_plan_behind_valid_checksums(files, tmp_path, cli, case):
    edit, needle = BAD[case]
    bad = tmp_path / "bad.safetensors"
    _forge(files["pruned"], bad, edit)
    line = one_line_error(cli("compile", bad, "--backend", "reference", "--repeats", "1"))
    assert needle in line, line
