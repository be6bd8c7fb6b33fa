"""The Target: one GPU's hierarchy, as the pruning patterns and the kernels see it.

A Target holds what decides which weight blocks a GPU can skip without divergence:

* the SIMD width (warp / wavefront / sub-group: lanes that run in lockstep),
* the work-group limits and local-memory size,
* the tiling of the GEMM kernel, named as in CLBlast's XGEMM: a work-group computes an
  ``MWG x NWG`` tile of ``Out[M, N]``, walks K in ``KWG``-deep slabs staged in local memory, and is
  shaped ``MDIMC x NDIMC`` work-items, each holding an ``MWI x NWI`` micro-tile
  (``MWI = MWG / MDIMC``, ``NWI = NWG / NDIMC``); ``VWM``/``VWN`` are vector widths.

Lane layout (documented in docs/design.md): gpuprune's kernels number work-items with the N index
fastest, ``local_id = n_thread + NDIMC * m_thread``, and each m-thread owns ``MWI`` contiguous rows.
A SIMD group of ``S`` consecutive work-items therefore covers ``S / NDIMC`` m-threads when
``S >= NDIMC`` and one m-thread otherwise, so it computes ``R = max(S / NDIMC, 1) * MWI``
contiguous rows of the tile. That ``R`` is the row extent of a SIMD-group vector.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuprune.errors import TargetError

VECTOR_WIDTHS = (1, 2, 4, 8, 16)  # OpenCL vector types: float, float2, ... float16
FLOAT_BYTES = 4  # kernels run float32


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclass(frozen=True)
class Target:
    """A validated description of one GPU (or CPU OpenCL device) and its GEMM tiling.

    Construction validates every constraint a real kernel has; a violation raises
    :class:`~gpuprune.errors.TargetError` naming the field, the constraint and a value that passes.

    Example:
        >>> from gpuprune.arch import get_target
        >>> t = get_target("nvidia")
        >>> t.tile_block(), t.simd_block()
        ((64, 32), (16, 1))
    """

    name: str  # preset or user name
    vendor: str  # nvidia, amd, intel, arm, qualcomm, cpu or free text
    simd_width: int  # lanes in lockstep: warp 32, wavefront 64/32, sub-group 8/16...
    max_work_group_size: int  # CL_DEVICE_MAX_WORK_GROUP_SIZE / max threads per block
    local_mem_bytes: int  # CL_DEVICE_LOCAL_MEM_SIZE / shared memory per block
    compute_units: int  # CUs / SMs / EUs: used by latency models, not by block shapes
    mwg: int  # work-group tile rows (M = output channels)
    nwg: int  # work-group tile columns (N = output pixels x batch)
    kwg: int  # K slab depth staged in local memory per step
    mdimc: int  # work-group threads along M
    ndimc: int  # work-group threads along N
    vwm: int = 1  # vector width along M
    vwn: int = 1  # vector width along N
    simd_k: int = 1  # k extent of one SIMD-group vector (1 = finest)
    source: str = field(default="", compare=False)  # where the numbers come from

    # ---- derived quantities -------------------------------------------------------------
    @property
    def mwi(self) -> int:
        """Rows of the micro-tile each work-item keeps in registers."""
        return self.mwg // self.mdimc

    @property
    def nwi(self) -> int:
        """Columns of the micro-tile each work-item keeps in registers."""
        return self.nwg // self.ndimc

    @property
    def work_group_size(self) -> int:
        return self.mdimc * self.ndimc

    @property
    def simd_groups_per_work_group(self) -> int:
        return self.work_group_size // self.simd_width

    @property
    def simd_rows(self) -> int:
        """``R``: rows of the tile one SIMD group computes under the N-fastest lane layout."""
        return max(self.simd_width // self.ndimc, 1) * self.mwi

    @property
    def row_groups_per_tile(self) -> int:
        """How many distinct SIMD row-groups (``R``-row slices) one ``MWG`` tile has."""
        return self.mwg // self.simd_rows

    @property
    def local_mem_needed(self) -> int:
        """Bytes of local memory one work-group uses for its A (weight) and B (input) slabs."""
        return FLOAT_BYTES * self.kwg * (self.mwg + self.nwg)

    # ---- block shapes ---------------------------------------------------------------------
    def tile_block(self) -> tuple[int, int]:
        """(rows, k) of a work-group tile block: ``(MWG, KWG)`` of the [M, K] weight."""
        return (self.mwg, self.kwg)

    def simd_block(self) -> tuple[int, int]:
        """(rows, k) of a SIMD-group vector: ``(R, simd_k)`` of the [M, K] weight."""
        return (self.simd_rows, self.simd_k)

    def defines(self) -> dict[str, int]:
        """Compile-time parameters for the kernels, as CLBlast passes them (``-DMWG=64``...)."""
        return {
            "MWG": self.mwg,
            "NWG": self.nwg,
            "KWG": self.kwg,
            "MDIMC": self.mdimc,
            "NDIMC": self.ndimc,
            "MWI": self.mwi,
            "NWI": self.nwi,
            "VWM": self.vwm,
            "VWN": self.vwn,
            "SIMD_WIDTH": self.simd_width,
            "SIMD_ROWS": self.simd_rows,
            "SIMD_K": self.simd_k,
        }

    # ---- validation -----------------------------------------------------------------------
    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> Target:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    # ---- files ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, origin: str = "target") -> Target:
        """Build a Target from plain data (a parsed file), checking keys and types first."""
        if not isinstance(data, dict):
            raise TargetError(
                f"{origin}: expected a mapping of target fields, got {type(data).__name__}",
                "write one 'field = value' per line (TOML) or 'field: value' (YAML)",
            )
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - set(names))
        if unknown:
            raise TargetError(
                f"{origin}: unknown field {unknown[0]!r}",
                f"valid fields are {', '.join(names)}",
            )
        for key, value in data.items():
            want = str if key in ("name", "vendor", "source") else int
            if want is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise TargetError(
                    f"{origin}: field {key!r} must be an integer, got {value!r}",
                    f"write e.g. {key} = 32",
                )
            if want is str and not isinstance(value, str):
                raise TargetError(
                    f"{origin}: field {key!r} must be a string, got {value!r}",
                    f'write e.g. {key} = "my-gpu"',
                )
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in data]
        if missing:
            raise TargetError(f"{origin}: missing field {missing[0]!r}", "add it to the file")
        try:
            return cls(**data)
        except TargetError as err:
            raise TargetError(f"{origin}: {err.problem}", err.fix) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Target:
        """Read a Target from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file."""
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix not in (".toml", ".yaml", ".yml"):
            raise TargetError(
                f"target file {p} has an unknown extension {suffix!r}", "use .toml, .yaml or .yml"
            )
        try:
            raw = p.read_bytes()
        except OSError as err:
            raise TargetError(
                f"cannot read target file {p}: {err.strerror}", "check the path"
            ) from None
        try:
            text = raw.decode("utf-8")
            if suffix == ".toml":
                data = tomllib.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as err:  # any parser error is the user's malformed file
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TargetError(
                f"malformed target file {p}: {first}", "fix the syntax (see docs/targets.md)"
            ) from None
        return cls.from_dict(data, origin=f"target file {p}")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this Target as TOML or YAML (by extension), atomically."""
        from gpuprune.fileio import atomic_write_text

        p = Path(path)
        data = self.to_dict()
        suffix = p.suffix.lower()
        if suffix == ".toml":
            import tomli_w

            text = tomli_w.dumps(data)
        elif suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            raise TargetError(f"cannot save target to {p}", "use a .toml, .yaml or .yml file name")
        atomic_write_text(p, text)

    @classmethod
    def detect(cls, backend: str = "auto") -> Target:
        """Describe the GPU (or OpenCL device) on this machine; see :mod:`gpuprune.arch.detect`."""
        from gpuprune.arch.detect import detect_target

        return detect_target(backend)


# ---- the constraints ------------------------------------------------------------------------
def _fail(t: Target, fld: str, constraint: str, passing: str) -> TargetError:
    value = getattr(t, fld, None)
    return TargetError(
        f"target {t.name!r}: {fld}={value} violates {constraint}",
        f"a value that passes: {passing}",
    )


# Upper bounds no real device reaches (several times today's largest): past them a value is a
# typo, and a kernel built from it would allocate gigabytes.
LIMITS = {"simd_width": 1024, "max_work_group_size": 65536, "local_mem_bytes": 1 << 26,
          "compute_units": 1 << 16, "mwg": 1024, "nwg": 1024, "kwg": 1024, "mdimc": 1024,
          "ndimc": 1024, "simd_k": 1024}  # fmt: skip


def _validate(t: Target) -> None:
    if not isinstance(t.name, str) or not t.name.strip():
        raise TargetError("target name must be a non-empty string", 'set name = "my-gpu"')
    if not isinstance(t.vendor, str):
        raise TargetError(f"target {t.name!r}: vendor must be a string", 'set vendor = "nvidia"')
    ints = [f.name for f in dataclasses.fields(t) if f.type in ("int", int)]
    for fld in ints:
        v = getattr(t, fld)
        if isinstance(v, bool) or not isinstance(v, int):
            raise TargetError(
                f"target {t.name!r}: {fld} must be an integer, got {v!r}", f"{fld}=32"
            )
        if v < 1:
            raise _fail(t, fld, f"{fld} >= 1", f"{fld}=1")
        if fld in LIMITS and v > LIMITS[fld]:
            raise _fail(t, fld, f"{fld} <= {LIMITS[fld]}", f"{fld}={LIMITS[fld]}")
    for fld in ("vwm", "vwn"):
        v = getattr(t, fld)
        if v not in VECTOR_WIDTHS:
            near = min(VECTOR_WIDTHS, key=lambda w: (abs(w - v), w))
            raise _fail(t, fld, f"{fld} in {VECTOR_WIDTHS} (OpenCL vector widths)", f"{fld}={near}")
    # Divisibility, as in CLBlast's XGEMM: each work-item owns whole vectors of its micro-tile.
    step = t.mdimc * t.vwm
    if t.mwg % step:
        raise _fail(t, "mwg", f"mwg % (mdimc*vwm={step}) == 0", f"mwg={_round_up(t.mwg, step)}")
    step = t.ndimc * t.vwn
    if t.nwg % step:
        raise _fail(t, "nwg", f"nwg % (ndimc*vwn={step}) == 0", f"nwg={_round_up(t.nwg, step)}")
    wg = t.work_group_size
    if wg > t.max_work_group_size:
        # fix ndimc when that can work; an mdimc alone past the limit needs mdimc itself fixed
        fld, other = ("ndimc", t.mdimc) if t.mdimc <= t.max_work_group_size else ("mdimc", t.ndimc)
        raise _fail(
            t,
            fld,
            f"mdimc*ndimc={wg} <= max_work_group_size={t.max_work_group_size}",
            f"{fld}={max(t.max_work_group_size // other, 1)}",
        )
    if wg % t.simd_width:
        step = t.simd_width // math.gcd(t.simd_width, t.mdimc)
        raise _fail(
            t,
            "ndimc",
            f"work-group size mdimc*ndimc={wg} a multiple of simd_width={t.simd_width}",
            f"ndimc={_round_up(t.ndimc, step)}",
        )
    # Lane layout (N fastest): a SIMD group must cover whole m-threads, or a whole divisor of one.
    s, nd = t.simd_width, t.ndimc
    if s >= nd and s % nd:
        good = max(d for d in range(1, s + 1) if s % d == 0 and d <= nd)
        raise _fail(
            t,
            "ndimc",
            f"simd_width={s} % ndimc == 0 (lanes cover whole m-threads)",
            f"ndimc={good}",
        )
    if s < nd and nd % s:
        raise _fail(t, "ndimc", f"ndimc % simd_width={s} == 0", f"ndimc={_round_up(nd, s)}")
    # Cooperative slab loads: every work-item loads the same number of A and B slab elements.
    need = math.lcm(wg // math.gcd(wg, t.mwg), wg // math.gcd(wg, t.nwg))
    if t.kwg % need:
        raise _fail(
            t,
            "kwg",
            f"kwg*mwg and kwg*nwg multiples of mdimc*ndimc={wg} (even slab loads)",
            f"kwg={_round_up(t.kwg, need)}",
        )
    if t.kwg % t.simd_k:
        good = math.gcd(t.kwg, t.simd_k)
        raise _fail(
            t, "simd_k", f"kwg={t.kwg} % simd_k == 0 (vectors stay in one slab)", f"simd_k={good}"
        )
    need = t.local_mem_needed
    if need > t.local_mem_bytes:
        kwg = t.kwg
        while kwg > 1 and FLOAT_BYTES * kwg * (t.mwg + t.nwg) > t.local_mem_bytes:
            kwg //= 2
        raise _fail(
            t,
            "kwg",
            f"local memory 4*kwg*(mwg+nwg)={need} B <= local_mem_bytes={t.local_mem_bytes}",
            f"kwg={kwg}",
        )
