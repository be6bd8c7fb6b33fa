"""One verdict for every accuracy target: met or not, and whether the margin is within noise.

Accuracies of the same recipe move between seeds and between CPUs (float reductions follow the
SIMD width), so a target passed by less than that spread is not a claim the run can carry. The
config's ``targets.noise_pt`` states the measured spread, one number or one per subject
(``{dense: 0.7, default: 1.8}``: the dense model's accuracy moves less between seeds than a pruned
cell's); a margin smaller than it is reported as "within noise" whichever side of the goal it
falls on.
"""

from __future__ import annotations

from typing import Any


def noise_pt(summary: dict[str, Any], subject: str = "default") -> float | None:
    """The measured accuracy spread (percentage points) the run's config states for ``subject``
    (``dense``, a method name, ...; a per-subject table falls back to its ``default``)."""
    targets = (summary.get("config") or {}).get("targets") or {}
    value = targets.get("noise_pt")
    if isinstance(value, dict):
        value = value.get(subject, value.get("default"))
    return None if value is None else float(value)


def verdict(
    margin_pt: float, noise: float | None, met: str = "met", missed: str = "NOT met"
) -> str:
    """``met`` when ``margin_pt >= 0`` (measured minus goal, in points), else ``missed``;
    ", within noise" is added when the margin is smaller than the stated spread."""
    word = met if margin_pt >= 0 else missed
    if noise is not None and abs(margin_pt) < noise:
        return f"{word}, within noise (margin {margin_pt:+.2f} pt, spread {noise:.2f} pt)"
    return word
