"""No silently wrong result: damaged stored results are recomputed, changed inputs noticed,
unused options refused and bad weights stopped at save time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reliability_helpers import TINY_ARGS, copy_run, one_line_error, tiny_model, write_config
from safetensors.torch import load_file, save_file

from gpuprune.errors import UserError
from gpuprune.experiment import parse_config, run_experiment


def _cells(summary: dict) -> list[tuple]:
    return [(c["method"], c["sparsity"], c["accuracy"]) for c in summary["cells"]]


# --- stored results carry checksums -------------------------------------------------------------


def test_edited_cell_accuracy_is_recomputed_not_reused(finished_run, tiny_config, tmp_path):
    run = copy_run(finished_run, tmp_path)
    path = run / "cells" / "unstructured-0.5.json"
    rec = json.loads(path.read_text())
    rec["accuracy"] += 0.1  # still valid JSON: only a checksum notices
    path.write_text(json.dumps(rec, indent=1))
    want = json.loads((finished_run / "summary.json").read_text())
    summary = run_experiment(parse_config(tiny_config), run, progress=False)
    assert _cells(summary) == _cells(want)


@pytest.mark.parametrize("damage", ["huge weight", "truncated"])
def test_damaged_dense_weights_are_recomputed(finished_run, tiny_config, tmp_path, damage):
    run = copy_run(finished_run, tmp_path)
    path = run / "dense" / "model.safetensors"
    if damage == "huge weight":
        state = load_file(str(path))
        state["features.0.weight"].view(-1)[0] = 1.47e37
        save_file(state, str(path))
    else:
        path.write_bytes(path.read_bytes()[:-50])
    want = json.loads((finished_run / "summary.json").read_text())
    summary = run_experiment(parse_config(tiny_config), run, progress=False)
    assert summary["dense"]["accuracy"] == want["dense"]["accuracy"]
    assert _cells(summary) == _cells(want)
    assert path.read_bytes() == (finished_run / "dense" / "model.safetensors").read_bytes()


def test_near_duplicate_sparsities_are_refused(tiny_config, tmp_path, cli):
    tiny_config["prune"]["sparsities"] = [0.5, 0.5000001]
    line = one_line_error(cli("run", write_config(tmp_path, tiny_config), "-o", tmp_path / "r"))
    assert "prune.sparsities" in line and "same cell" in line


def test_changed_checkpoint_at_the_same_path_is_noticed(tiny_config, tmp_path):
    ckpt = tmp_path / "dense.safetensors"
    model = tiny_model(width=1.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    tiny_config["model"]["checkpoint"] = str(ckpt)
    tiny_config["finetune"]["epochs"] = 0
    run = tmp_path / "run"
    first = run_experiment(parse_config(tiny_config), run, progress=False)
    torch.manual_seed(1)
    other = {k: v.contiguous() for k, v in tiny_model(width=1.0).state_dict().items()}
    for k, v in other.items():
        if v.is_floating_point() and "running" not in k:
            v.copy_(torch.randn_like(v) * 0.1)
    save_file(other, str(ckpt))
    second = run_experiment(parse_config(tiny_config), run, progress=False)
    assert first["dense"]["key"] != second["dense"]["key"]
    got = load_file(str(run / "dense" / "model.safetensors"))
    assert all(torch.equal(got[k], other[k]) for k in other)


def test_allocation_file_works_and_its_content_is_keyed(tiny_config, tmp_path):
    alloc = tmp_path / "alloc.json"
    alloc.write_text('{"features.4": 0.5, "features.8": 0.5}')
    tiny_config["prune"]["allocation"] = str(alloc)
    tiny_config["finetune"]["epochs"] = 0
    run = tmp_path / "run"
    first = run_experiment(parse_config(tiny_config), run, progress=False)["cells"][0]
    assert first["status"] == "ok", first.get("error")
    alloc.write_text('{"features.4": 0.9, "features.8": 0.9}')  # same path, other plan
    second = run_experiment(parse_config(tiny_config), run, progress=False)["cells"][0]
    assert second["status"] == "ok" and second["key"] != first["key"]
    assert second["achieved_sparsity"] > first["achieved_sparsity"]


# --- train --resume keeps the run's settings ----------------------------------------------------

TRAIN = ("train", "--model", "tiny-cnn", "--data", "synthetic", "--train-subset", "64",
         "--epochs", "2", "--batch-size", "32", "--seed", "0")  # fmt: skip


@pytest.mark.parametrize(("flag", "value"), [("--train-subset", "96"), ("--width", "2")])
def test_resume_with_other_settings_is_refused(tmp_path, cli, monkeypatch, flag, value):
    import gpuprune.train.loop as loop

    out = tmp_path / "t"
    real = loop.lr_at

    def stop(cfg, step, total):  # stop after the first epoch's checkpoint
        if step == 2:
            raise KeyboardInterrupt
        return real(cfg, step, total)

    monkeypatch.setattr(loop, "lr_at", stop)
    assert cli(*TRAIN, "-o", out).code == 130
    monkeypatch.setattr(loop, "lr_at", real)
    args = list(TRAIN)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    line = one_line_error(cli(*args, "-o", out, "--resume"))
    assert flag in line
    assert not (out / "model.safetensors").exists()


# --- options that would be ignored are refused --------------------------------------------------


def test_bench_unknown_layer_is_refused(tmp_path, cli):
    line = one_line_error(cli("bench", "--layers", "conv99", "-o", tmp_path / "b"))
    assert "conv99" in line
    assert not (tmp_path / "b").exists()


def test_latency_backend_without_latency_allocation_is_refused(files, tmp_path, cli):
    out = tmp_path / "o.safetensors"
    line = one_line_error(cli("prune", files["pt"], *TINY_ARGS, "--sparsity", "0.5", "--target",
                              "cpu-pocl", "--skip-small", "--latency-backend", "foo", "-o", out))
    assert "--latency-backend" in line
    assert not out.exists()


def test_targets_save_without_detect_is_refused(tmp_path, cli):
    out = tmp_path / "t.toml"
    line = one_line_error(cli("targets", "--save", out))
    assert "--save" in line and "--detect" in line
    assert not out.exists()


# --- weights checked where they are read and written --------------------------------------------


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int32, torch.bool])
def test_non_float_checkpoint_is_refused(tmp_path, cli, dtype):
    state = {k: v.contiguous() for k, v in tiny_model().state_dict().items()}
    state["features.0.weight"] = state["features.0.weight"].to(dtype)
    ckpt = tmp_path / "odd.pt"
    torch.save(state, ckpt)
    out = tmp_path / "o.safetensors"
    line = one_line_error(cli("prune", ckpt, *TINY_ARGS, "--sparsity", "0.5", "--target",
                              "cpu-pocl", "--skip-small", "-o", out))  # fmt: skip
    assert "features.0.weight" in line
    assert not out.exists()


def test_save_pruned_refuses_nan(tmp_path):
    import gpuprune.prune as gp

    model = tiny_model()
    result = gp.Pruner(model, "unstructured", exclude_first_last=False).apply(0.5)
    with torch.no_grad():
        model.fc.bias[0] = float("nan")
    out = tmp_path / "nan.safetensors"
    with pytest.raises(UserError, match="NaN"):
        gp.save_pruned(out, model, result, model_name="tiny-cnn")
    assert not out.exists()


def test_edited_records_are_not_read(finished_run, tmp_path):
    from gpuprune.fileio import read_record

    cells = list(Path(finished_run, "cells").glob("*.json"))
    assert cells
    for path in [finished_run / "dense" / "result.json", *cells]:
        rec = read_record(path)
        assert rec, path
        rec["accuracy"] = 0.99  # valid JSON, another number
        edited = tmp_path / path.name
        edited.write_text(json.dumps(rec))
        assert read_record(edited) == {}, path


def test_edited_cached_latency_curve_is_measured_again(tmp_path):
    from gpuprune.latency.cache import LatencyCache
    from gpuprune.latency.curve import LatencyCurve

    cache = LatencyCache(tmp_path)
    key = {"layer": "conv1", "backend": "cpu"}
    cache.put(key, LatencyCurve((0.25, 0.5, 1.0), (1.0, 2.0, 4.0)))
    assert cache.get(key) is not None
    path = cache.path(key)
    data = json.loads(path.read_text())
    data["curve"]["ms"][0] = 0.01  # a flipped digit: a 100x "speedup"
    path.write_text(json.dumps(data))
    assert cache.get(key) is None
