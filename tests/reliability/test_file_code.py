"""Files are data: a pruned-model header or a run config never chooses code to import or run.

Each hostile file runs the CLI in a child process, so a header that did run ``os:abort`` would
kill the child (not the test session) and fail the test, as would ``builtins:input`` (blocking on
stdin) or ``sys:exit`` (exit 0). The checksums are recomputed, as an attacker would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save

import gpuprune
from gpuprune.prune.files import checksum, header_digest, read_pruned

SRC = str(Path(gpuprune.__file__).resolve().parents[1])
CODE = ["os:abort", "builtins:input", "sys:exit"]


def _gpuprune(*runs: list[object], timeout: float = 300) -> list[tuple[int, str, str]]:
    """Run ``gpuprune ARGS`` for each of ``runs`` in one child process (stdin closed):
    (exit code, stdout, last stderr line) each."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([[str(a) for a in r] for r in runs])], env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-1500:])  # the child survived
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


CHILD = """
import contextlib, io, json, sys
from gpuprune.cli.main import main
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # e.g. sys:exit run as a model factory
            code = f"SystemExit({exc.code})"
    text = err.getvalue()
    lines = text.strip().splitlines()
    results.append([code, out.getvalue(), lines[-1] if lines else "", "Traceback" in text])
print(json.dumps(results))
"""


def _refused(result: tuple, needle: str) -> None:
    code, _, last, traceback = result
    assert code == 2 and not traceback, result
    assert last.startswith("error: ") and needle in last, last


def _forge(src: Path, dst: Path, edit, *, header_checksum: bool = True) -> None:
    """Re-save ``src`` after ``edit(header)``, both checksums recomputed (or the header one
    dropped)."""
    header, tensors = read_pruned(src)
    edit(header)
    header["sha256"] = checksum(tensors)
    header.pop("header_sha256", None)
    if header_checksum:
        header["header_sha256"] = header_digest(header)
    dst.write_bytes(save(tensors, metadata={"gpuprune": json.dumps(header)}))


def test_header_naming_code_is_refused(files, tmp_path):
    runs = []
    for code in CODE:
        bad = tmp_path / f"{code.replace(':', '-')}.safetensors"
        _forge(files["pruned"], bad, lambda h, code=code: h["model"].update(name=code))
        runs.append(["compile", bad, "--backend", "reference", "--repeats", "1"])
    for result in _gpuprune(*runs):
        _refused(result, "names code to import")


@pytest.mark.parametrize("code", CODE)
def test_header_naming_code_is_refused_by_the_api(files, tmp_path, code):
    bad = tmp_path / "code.safetensors"
    _forge(files["pruned"], bad, lambda h: h["model"].update(name=code))
    with pytest.raises(gpuprune.UserError, match="names code to import"):
        gpuprune.load(bad)


def test_header_without_its_checksum_and_a_factory_on_the_command_line(files, tmp_path):
    bad = tmp_path / "nosum.safetensors"
    _forge(files["pruned"], bad, lambda h: h["model"].update(name="os:abort"),
           header_checksum=False)  # fmt: skip
    plain = tmp_path / "plain.safetensors"  # an honest file, checksum deleted: refused too
    _forge(files["pruned"], plain, lambda h: None, header_checksum=False)
    # the user names the code on the command line: the registered tiny-cnn by its module path
    named = ["compile", files["pruned"], "--backend", "reference", "--repeats", "1",
             "--image-size", "8", "--model", "gpuprune.models.tiny:tiny_cnn", "--json"]
    nosum, honest, ok = _gpuprune(["compile", bad, "--backend", "reference"],
                                  ["inspect", plain], named)  # fmt: skip
    _refused(nosum, "no header checksum")
    _refused(honest, "no header checksum")
    assert ok[0] == 0 and json.loads(ok[1])["max_rel_error"] < 1e-4, ok


def test_config_naming_code_is_refused_before_training(tiny_config, tmp_path):
    runs = []
    for i, code in enumerate(CODE):
        tiny_config["model"]["name"] = code
        cfg = tmp_path / f"cfg{i}.yaml"
        cfg.write_text(yaml.safe_dump(tiny_config))
        runs.append(["run", cfg, "-o", tmp_path / f"run{i}"])
    for i, result in enumerate(_gpuprune(*runs)):
        _refused(result, "never names code to import")
        assert not (tmp_path / f"run{i}" / "dense").exists()
