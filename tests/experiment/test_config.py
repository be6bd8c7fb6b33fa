"""Config validation: one line naming the key, exit code 2 from the CLI; shipped configs parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gpuprune.cli.main import main
from gpuprune.errors import UserError
from gpuprune.experiment import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"prune": {"methodz": ["tile"]}}, "prune.methodz: unknown key"),
        ({"dense": {"epochs": "many"}}, "dense.epochs: Input should be a valid integer"),
        ({"prune": {"sparsities": [0.5, 1.5]}}, "prune.sparsities.1: Input should be less than 1"),
        ({"prune": {"sparsities": [0.0]}}, "prune.sparsities.0: Input should be greater than 0"),
        ({"latency": {"batch_size": 0}}, "latency.batch_size"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"data": {"\n": None}}, "data.'\\\\n': unknown key"),  # the fuzzer's find: quoted
    ],
)
def test_bad_configs_name_the_key(patch, needle) -> None:
    with pytest.raises(UserError, match=needle.replace(".", r"\.")) as exc:
        parse_config(patch)
    assert "\n" not in str(exc.value)


def test_cli_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune:\n  sparsities: [0.5, 1.2]\n")
    assert main(["run", str(bad), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "prune.sparsities.1" in err
    bad.write_text("prune: [unclosed\n")
    assert main(["run", str(bad), "-o", str(tmp_path / "run")]) == 2
    assert "bad.yaml line" in capsys.readouterr().err
    bad.write_text("a: &x [1, 2]\nb: *x\n")  # aliases can expand exponentially: refused
    assert main(["run", str(bad), "-o", str(tmp_path / "run")]) == 2
    assert "aliases are not supported" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "run")]) == 2


@pytest.mark.parametrize("name", ["demo.yaml", "vgg16-cifar10.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    cfg = load_config(ROOT / "configs" / name)
    from gpuprune.prune import METHODS

    assert set(cfg.prune.methods) <= set(METHODS.names())
    assert cfg.model.name == "vgg16"


def test_defaults_fill_in_and_round_trip(tiny_config) -> None:
    cfg = parse_config(tiny_config)
    from gpuprune.experiment import dump_config

    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert cfg.finetune.train_config(3).seed == 3
