"""Mistakes caught before any training, each naming its config key or flag; taylor importance
works in a run."""

from __future__ import annotations

import time

import pytest
from reliability_helpers import one_line_error, write_config

from gpuprune.experiment import parse_config, run_experiment


def _refused_before_training(cli, tmp_path, cfg, *more) -> str:
    run = tmp_path / "run"
    line = one_line_error(cli("run", write_config(tmp_path, cfg), "-o", run, *more))
    assert not (run / "dense" / "checkpoint.pt").exists()
    assert not (run / "dense" / "model.safetensors").exists()
    return line


def test_taylor_importance_works_in_a_run(tiny_config, tmp_path):
    tiny_config["prune"]["importance"] = "taylor"
    summary = run_experiment(parse_config(tiny_config), tmp_path / "run", progress=False)
    cell = summary["cells"][0]
    assert cell["status"] == "ok", cell.get("error")
    assert 0.4 < cell["achieved_sparsity"] < 0.6


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"allocation": "missing.json"}, "prune.allocation"),
        ({"allocation": "BAD_FILE"}, "prune.allocation"),
        ({"method_options": {"unstructured": {"no_such_option": 1}}},
         "prune.method_options.unstructured"),
        ({"method_options": {"tile": {}}}, "prune.method_options.tile"),
        ({"schedule": "iterative", "schedule_options": {"no_such_option": 2}},
         "prune.schedule_options"),
        ({"exclude": ["no.such.layer*"]}, "prune.exclude"),
    ],
)
def test_bad_prune_settings_refused_before_training(tiny_config, tmp_path, cli, change, named):
    if change.get("allocation") == "BAD_FILE":
        bad = tmp_path / "alloc.json"
        bad.write_text('{"features.0": 1.5}')
        change = {"allocation": str(bad)}
    tiny_config["prune"].update(change)
    line = _refused_before_training(cli, tmp_path, tiny_config)
    assert named in line


def test_allocation_file_naming_an_unknown_layer(tiny_config, tmp_path, cli):
    alloc = tmp_path / "alloc.json"
    alloc.write_text('{"no.such.layer": 0.5}')
    tiny_config["prune"]["allocation"] = str(alloc)
    line = _refused_before_training(cli, tmp_path, tiny_config)
    assert "prune.allocation" in line and "no.such.layer" in line


@pytest.mark.parametrize("size", [10**9, 2**31])
def test_absurd_latency_batch_size(tiny_config, tmp_path, cli, size):
    tiny_config["latency"]["batch_size"] = size
    assert "latency.batch_size" in _refused_before_training(cli, tmp_path, tiny_config)


def test_unreachable_ray_address_times_out_with_a_message(tiny_config, tmp_path, cli):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    line = _refused_before_training(cli, tmp_path, tiny_config, "--ray", f"127.0.0.1:{port}")
    assert "--ray" in line and "cannot reach" in line
    assert time.monotonic() - started < 30


def test_bench_readme_missing_is_refused_before_measuring(tmp_path, cli):
    out = tmp_path / "bench"
    line = one_line_error(cli("bench", "--quick", "--no-e2e", "--readme", tmp_path / "NOPE.md",
                              "-o", out))  # fmt: skip
    assert "--readme" in line
    assert not out.exists()
