"""The commit a result records says when the package's own files differ from it."""

from __future__ import annotations

import subprocess

import pytest

from gpuprune.bench import environment


@pytest.mark.parametrize("diff_status,expected", [(0, "abc1234"), (1, "abc1234+changes")])
def test_commit_marks_uncommitted_changes(monkeypatch, diff_status, expected):
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if cmd[:2] == ["git", "rev-parse"]:
            return subprocess.CompletedProcess(cmd, 0, stdout="abc1234\n")
        return subprocess.CompletedProcess(cmd, diff_status)

    monkeypatch.setattr(environment.subprocess, "run", run)
    assert environment.commit() == expected
    assert calls[1][:3] == ["git", "diff", "--quiet"]


def test_commit_outside_a_checkout(monkeypatch):
    def run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 128, stdout="")

    monkeypatch.setattr(environment.subprocess, "run", run)
    assert environment.commit() is None
