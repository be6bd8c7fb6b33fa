"""Errors a user can act on.

Every error raised for bad input is a :class:`UserError`: its message is one line that names the
problem and the fix. The CLI prints it and exits with code 2; anything else is an internal fault
(exit code 1).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: a one-line message naming the problem and the fix."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class TargetError(UserError):
    """A Target description (preset, file or detected device) violates a kernel constraint."""


class UnsupportedLayerError(UserError):
    """A layer that gpuprune cannot view as a GEMM or cannot prune/compile."""


class DeviceNotFoundError(UserError):
    """No OpenCL or CUDA device could be found for detection or execution."""
