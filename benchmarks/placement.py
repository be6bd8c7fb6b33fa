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
