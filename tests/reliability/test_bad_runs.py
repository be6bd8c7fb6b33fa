"""Experiment configs, data folders and run folders gone wrong: refused up front or recovered."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from reliability_helpers import Exploit, copy_run, disk_full, one_line_error

from gpuprune.errors import UserError
from gpuprune.experiment import load_config, parse_config, run_experiment


def _write(tmp_path: Path, cfg: dict | str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return path


def _copy(run: Path, tmp_path: Path) -> Path:
    return copy_run(run, tmp_path)


# --- configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("name: [unclosed\n", "cfg.yaml line"),
        ("name: x\n\tseed: 1\n", "cfg.yaml line"),
        ("- a\n- b\n", "not a mapping"),
        ("42\n", "not a mapping"),
        ("nme: typo\n", "nme: unknown key"),
        ("prune: {sparsities: [1.0]}\n", "prune.sparsities.0"),
        ("prune: {sparsities: [-0.1]}\n", "prune.sparsities.0"),
        ("prune: {sparsities: [abc]}\n", "prune.sparsities.0"),
        ("prune: {sparsities: []}\n", "prune.sparsities"),
        ("dense: {epochs: -1}\n", "dense.epochs"),
        ("seed: 1.5\n", "seed"),
    ],
)
def test_bad_config_text(tmp_path, cli, text, named):
    path = _write(tmp_path, text)
    with pytest.raises(UserError, match=named):
        load_config(path)
    line = one_line_error(cli("run", path, "-o", tmp_path / "run"))
    assert named in line
    assert not (tmp_path / "run" / "dense").exists()


def test_config_not_utf8(tmp_path, cli):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"name: \xff\xfe\x00 caf\xe9\n")
    line = one_line_error(cli("run", path, "-o", tmp_path / "run"))
    assert "cfg.yaml" in line


def test_missing_config(tmp_path, cli):
    one_line_error(cli("run", tmp_path / "none.yaml", "-o", tmp_path / "run"))


@pytest.mark.parametrize(
    ("section", "change", "named"),
    [
        ("prune", {"methods": ["no-such-method"]}, "no-such-method"),
        ("prune", {"target": "no-such-gpu"}, "no-such-gpu"),
        ("prune", {"importance": "no-such-importance"}, "no-such-importance"),
        ("prune", {"allocation": "no-such-allocation"}, "no-such-allocation"),
        ("latency", {"backends": ["no-such-backend"]}, "no-such-backend"),
        ("data", {"name": "no-such-data"}, "no-such-data"),
        ("data", {"options": {"no_such_option": 1}}, "no_such_option"),
        ("model", {"name": "no-such-net"}, "no-such-net"),
        ("equal_latency", {"reference": "unstructured@0.99", "methods": ["unstructured"]},
         "unstructured@0.99 is not a cell"),
        ("equal_latency", {"reference": "unstructured@0.5", "methods": ["no-such-method"]},
         "no-such-method"),
        ("equal_latency", {"reference": "unstructured@0.5", "backend": "no-such-backend"},
         "no-such-backend"),
        ("equal_latency", {"methods": ["unstructured"]}, "needs equal_latency.reference"),
        ("equal_latency", {"reference": "unstructured"}, "must name a cell"),
        ("codesign", {"backend": "no-such-backend"}, "no-such-backend"),
    ],
)
def test_unknown_names_refused_before_training(tiny_config, tmp_path, cli, section, change, named):
    tiny_config.setdefault(section, {}).update(change)
    line = one_line_error(cli("run", _write(tmp_path, tiny_config), "-o", tmp_path / "run"))
    assert named in line
    assert not (tmp_path / "run" / "dense" / "model.safetensors").exists()  # no work wasted


# --- data folders --------------------------------------------------------------------------

FMNIST = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
          "t10k-labels-idx1-ubyte")  # fmt: skip


def _idx(shape: tuple[int, ...]) -> bytes:
    head = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    return head + np.zeros(int(np.prod(shape)), dtype=np.uint8).tobytes()


def _fmnist_folder(root: Path) -> Path:
    root.mkdir()
    for stem, shape in zip(FMNIST, [(20, 28, 28), (20,), (10, 28, 28), (10,)], strict=True):
        (root / (stem + ".gz")).write_bytes(gzip.compress(_idx(shape)))
    return root


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("missing file", "not found"),
        ("truncated", "truncated"),
        ("wrong file", "not a uint8 IDX file"),
        ("not gzip", "t10k-labels"),
        ("cut gzip", "t10k-labels"),
        ("label count", "counts differ"),
    ],
)
def test_bad_fashion_mnist_folder(tmp_path, cli, damage, named):
    from gpuprune.data import load_dataset

    root = _fmnist_folder(tmp_path / "fm")
    target = root / "t10k-labels-idx1-ubyte.gz"
    if damage == "missing file":
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(gzip.compress(_idx((10,))[:-3]))
    elif damage == "wrong file":
        target.write_bytes(gzip.compress(b"<html>404 not found</html>"))
    elif damage == "not gzip":
        target.write_bytes(b"plain bytes, not gzip at all" * 4)
    elif damage == "cut gzip":
        target.write_bytes(target.read_bytes()[:-6])
    else:
        target.write_bytes(gzip.compress(_idx((9,))))
    with pytest.raises(UserError, match=named):
        load_dataset("fashion-mnist", root=root, download=False)
    line = one_line_error(cli("train", "--model", "tiny-cnn", "--data", "fashion-mnist",
                              "--data-root", root, "-o", tmp_path / "t"))  # fmt: skip
    assert named in line


def test_cifar10_wrong_tarball(tmp_path, cli):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(gzip.compress(b"not the data set"))
    line = one_line_error(cli("train", "--model", "tiny-cnn", "--data", "cifar10",
                              "--data-root", bad, "-o", tmp_path / "t"))  # fmt: skip
    assert "wrong checksum" in line


@pytest.mark.parametrize("content", ["code", "garbage"])
def test_cifar10_batches_are_never_unpickled_as_code(tmp_path, cli, content):
    import pickle

    folder = tmp_path / "cifar"
    folder.mkdir()
    marker = tmp_path / "pwned"
    good = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(good))
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": Exploit(marker), b"labels": [0]}) if content == "code"
        else b"\x80\x04garbage")  # fmt: skip
    line = one_line_error(cli("train", "--model", "tiny-cnn", "--data", "cifar10",
                              "--data-root", folder, "-o", tmp_path / "t"))  # fmt: skip
    assert "test_batch" in line
    assert not marker.exists()


# --- run folders ---------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["cell result", "dense result"])
@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "empty"])
def test_damaged_run_results_are_redone(finished_run, tiny_config, tmp_path, what, damage):
    run = _copy(finished_run, tmp_path)
    path = run / ("cells/unstructured-0.5.json" if what == "cell result" else "dense/result.json")
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "bit-flipped":
        data[data.index(b'"')] ^= 0x40
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    want = json.loads((finished_run / "summary.json").read_text())
    summary = run_experiment(parse_config(tiny_config), run, progress=False)
    assert summary["dense"]["accuracy"] == want["dense"]["accuracy"]
    assert [c["accuracy"] for c in summary["cells"]] == [c["accuracy"] for c in want["cells"]]
    json.loads(path.read_text())  # rewritten whole


@pytest.mark.parametrize("damage", ["truncated summary", "no results"])
def test_report_of_a_damaged_run(finished_run, tmp_path, cli, damage):
    run = _copy(finished_run, tmp_path)
    if damage == "truncated summary":
        (run / "summary.json").write_text((run / "summary.json").read_text()[:100])
    else:
        shutil.rmtree(run / "dense")
        (run / "summary.json").unlink()
    line = one_line_error(cli("report", run))
    assert str(run) in line or "summary.json" in line


def test_report_of_a_missing_folder(tmp_path, cli):
    one_line_error(cli("report", tmp_path / "none"))


def test_disk_full_on_report_write(finished_run, tmp_path, cli, monkeypatch):
    run = _copy(finished_run, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name.startswith("report")}
    assert "report.md" in before and "report.html" in before
    with disk_full(monkeypatch) as failed:
        line = one_line_error(cli("report", run))
    assert failed and "No space left on device" in line and "free some space" in line
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.name.startswith("report")}
    assert after == before  # the previous report is intact
    assert not list(run.rglob("*.tmp"))


def test_disk_full_while_partly_written(finished_run, tmp_path, cli, monkeypatch):
    run = _copy(finished_run, tmp_path)
    (run / "report.md").unlink()
    with disk_full(monkeypatch, after_bytes=100):
        one_line_error(cli("report", run))
    assert not (run / "report.md").exists()  # never a half-written report
    assert not list(run.rglob("*.tmp"))


def test_disk_full_on_pruned_model_write(files, tmp_path, cli, monkeypatch):
    from reliability_helpers import TINY_ARGS

    out = tmp_path / "o.safetensors"
    with disk_full(monkeypatch, after_bytes=64):
        line = one_line_error(cli("prune", files["pt"], *TINY_ARGS, "--sparsity", "0.5",
                                  "--target", "cpu-pocl", "--skip-small", "-o", out))  # fmt: skip
    assert "No space left" in line
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncated", "nan", "other width"])
def test_bad_dense_checkpoint_in_config(tiny_config, tmp_path, cli, damage):
    import torch
    from reliability_helpers import tiny_model
    from safetensors.torch import save_file

    model = tiny_model(width=2.0 if damage == "other width" else 1.0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if damage == "nan":
        state["features.4.weight"][0, 0, 0, 0] = torch.nan
    ckpt = tmp_path / "dense.safetensors"
    save_file(state, str(ckpt))
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:-100])
    tiny_config["model"]["checkpoint"] = str(ckpt)
    line = one_line_error(cli("run", _write(tmp_path, tiny_config), "-o", tmp_path / "run"))
    assert "dense.safetensors" in line
    assert not list((tmp_path / "run").glob("cells/*.json"))
