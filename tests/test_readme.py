"""README's Python example runs as written (so the front page stays true)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"## Python\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README has a Python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), "README.md", "exec"), {})
    assert (tmp_path / "vgg16-tile.safetensors").exists()


def test_readme_keeps_the_two_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


@pytest.mark.slow
def test_readme_zoo_example_runs(tmp_path, monkeypatch):
    """The torchvision example (skipped without torchvision; tests/zoo_helpers.py explains the
    import shim some machines need)."""
    from zoo_helpers import zoo

    zoo("torchvision")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = next((b for b in blocks if "torchvision" in b), None)
    assert code, "README shows a torchvision/timm model end to end"
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "resnet18-tile.safetensors").exists()
