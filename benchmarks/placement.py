"""Where the hypervisor has put this VM's two vCPUs right now: near (sharing an L3) or far.

``placement_probe.c`` times a cache line's round trip between CPUs 0 and 1: 55-80 ns near,
320-390 ns far on this project's 2-vCPU VM, switching within seconds. Far, every byte one
thread reads that the other wrote crosses between L3s (benchmarks/README.md, "slow phases").
A timed stretch counts as near when the probes before and after it both read under ``far`` ns,
far when both read over it; a stretch between one of each is a switch, left out of both. Readings
of 100-250 ns come too, mostly right after a timed call (its thread pool still spinning on the
two vCPUs), and time like near ones.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gpuprune.kernels.cpu import build

FAR_NS = 250.0


class Probe:
    """Builds the probe once (in a temporary folder) and runs it on each call (ns)."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory()
        self.path = Path(self._folder.name) / "placement_probe"
        source = Path(__file__).with_name("placement_probe.c")
        subprocess.run([build.find_compiler(), "-O2", "-pthread", str(source), "-o",
                        str(self.path)], check=True)  # fmt: skip

    def __call__(self) -> float:
        return float(subprocess.run([self.path], capture_output=True, text=True,
                                    check=True).stdout)  # fmt: skip


def placement(before: float, after: float, far: float = FAR_NS) -> str:
    """'near', 'far' or 'switch' for a stretch between two probe readings."""
    if max(before, after) < far:
        return "near"
    return "far" if min(before, after) > far else "switch"


def tagged_rounds(one_round: Callable[[int], dict], seconds: float) -> list[dict]:
    """Rounds for ``seconds``: each the probe, ``one_round(i)`` (a dict of what it measured) and
    the probe again, as ``{"probe_ns": [before, after], **measured}``."""
    probe = Probe()
    rounds: list[dict] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        before = probe()
        measured = one_round(len(rounds))
        rounds.append({"probe_ns": [before, probe()], **measured})
    return rounds


def by_placement(rounds: list[dict], far: float = FAR_NS) -> dict[str, list[dict]]:
    """The near rounds and the far ones (a switch is in neither)."""
    where = [placement(*r["probe_ns"], far) for r in rounds]
    return {p: [r for r, w in zip(rounds, where, strict=True) if w == p] for p in ("near", "far")}
