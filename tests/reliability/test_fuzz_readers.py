"""Fuzzing the readers of untrusted input: any bytes give a valid object or the documented
:class:`UserError`, never another exception, a hang, or (for pruned files) different tensors."""

from __future__ import annotations

import contextlib
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reliability_helpers import COUNTS

from gpuprune.arch import Target, get_target
from gpuprune.errors import TargetError, UserError
from gpuprune.experiment import load_config, parse_config
from gpuprune.experiment.config import ExperimentConfig
from gpuprune.prune.files import PrunedInfo, info_from_header, read_pruned

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
LIMIT_S = 10  # one input using more CPU time than this counts as a hang


@contextlib.contextmanager
def no_hang(seconds: float = LIMIT_S) -> Iterator[None]:
    """Fail (TimeoutError) if the block uses more than ``seconds`` of CPU time.

    CPU time, not wall time: a loaded machine must not turn a slow input into a "hang".
    """

    def alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s of CPU time: a hang")

    old = signal.signal(signal.SIGPROF, alarm)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


def _file(data: bytes, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix, prefix="fuzz-")
    with open(fd, "wb") as fh:
        fh.write(data)
    return Path(name)


def _read(data: bytes, suffix: str, reader, error=UserError):
    COUNTS["fuzzed"] += 1
    path = _file(data, suffix)
    try:
        with no_hang():
            return reader(path)
    except error:
        return None
    finally:
        path.unlink()


# --- pruned-model reader -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned(files) -> tuple[bytes, dict, dict]:
    """The valid file's bytes, header and tensors."""
    return (files["pruned"].read_bytes(), *read_pruned(files["pruned"]))


@FUZZ
@given(data=st.binary(max_size=4096))
@example(data=b"")
@example(data=b"\xff" * 8 + b"{}")
@example(data=(2**63).to_bytes(8, "little") + b"{}")
@example(data=(20).to_bytes(8, "little") + b'{"a": {"dtype": "F32"}}')
def test_pruned_reader_on_random_bytes(data):
    got = _read(data, ".safetensors", read_pruned)
    if got is not None:  # only a well-formed file with a matching checksum can get here
        header, tensors = got
        assert isinstance(info_from_header(header), PrunedInfo)


@FUZZ
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                      min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)))  # fmt: skip
def test_pruned_reader_on_damaged_files(pruned, edits, cut):
    original, want_header, want = pruned
    data = bytearray(original)
    for where, xor in edits:
        data[int(where * len(data))] ^= xor
    if cut is not None:
        data = data[: int(cut * len(data))]
    got = _read(bytes(data), ".safetensors", read_pruned)
    if got is not None:  # accepted: then it must be the same model (e.g. a flip in padding)
        header, tensors = got
        assert tensors.keys() == want.keys()
        assert all(torch.equal(tensors[k], want[k]) for k in want)
        assert header == want_header


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".pt", ".safetensors"]))
@example(data=b"PK\x03\x04" + b"\x00" * 40, suffix=".pt")
@example(data=b"\x80\x02}q\x00.", suffix=".pt")
def test_checkpoint_reader_on_random_bytes(data, suffix):
    from gpuprune.prune.files import read_state_dict

    got = _read(data, suffix, read_state_dict)
    assert got is None or all(isinstance(v, torch.Tensor) for v in got.values())


@FUZZ
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                      min_size=1, max_size=3))  # fmt: skip
def test_checkpoint_reader_on_damaged_files(files, edits):
    """A damaged torch checkpoint is refused or loads the very same tensors (CRC-checked)."""
    from gpuprune.prune.files import read_state_dict

    original = files["pt"].read_bytes()
    want = read_state_dict(files["pt"])
    data = bytearray(original)
    for where, xor in edits:
        data[int(where * len(data))] ^= xor
    got = _read(bytes(data), ".pt", read_state_dict)
    if got is not None:
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


# --- experiment config parser --------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=2048))
@example(data=b"")
@example(data=b"\xff\xfe")
@example(data=b"a: &a [1]\nb: *a\n")
@example(data=b"!!python/object/apply:os.system ['true']\n")
@example(data=b"prune: {sparsities: [.nan]}\n")
@example(data=b"seed: 1e400\n")
@example(data=b"[" * 5000)
def test_config_reader_on_random_bytes(data):
    got = _read(data, ".yaml", load_config)
    assert got is None or isinstance(got, ExperimentConfig)


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                     st.text(max_size=12))  # fmt: skip
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)  # fmt: skip
_KEYS = st.sampled_from(["name", "seed", "notes", "data", "model", "dense", "finetune", "prune",
                         "latency", "targets", "epochs", "sparsities", "methods", "lr",
                         "options", "root"])  # fmt: skip


@FUZZ
@given(cfg=st.dictionaries(_KEYS, st.one_of(_VALUES, st.dictionaries(_KEYS, _VALUES, max_size=4)),
                           max_size=6))  # fmt: skip
def test_config_parser_on_random_structures(cfg):
    COUNTS["fuzzed"] += 1
    try:
        with no_hang():
            got = parse_config(cfg)
    except UserError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(got, ExperimentConfig)
    got.digest("data", "model", "prune")  # what every run computes first


def test_config_alias_bomb_is_refused_quickly(tmp_path):
    # A few hundred bytes of YAML aliases that expand to 10**9 list items.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "data:\n  options:\n" + "".join(f"    {ln}\n" for ln in lines)
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    assert yaml.safe_load(text)["data"]["options"]["a8"]  # it is valid YAML
    with no_hang(), pytest.raises(UserError, match="bomb.yaml"):
        load_config(path).digest("data")


# --- target parser -------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=1024), suffix=st.sampled_from([".toml", ".yaml", ".yml"]))
@example(data=b"mwg = 1e999\n", suffix=".toml")
@example(data=b"mwg: !!float nan\n", suffix=".yaml")
def test_target_reader_on_random_bytes(data, suffix):
    got = _read(data, suffix, Target.load, TargetError)
    assert got is None or isinstance(got, Target)


_FIELDS = ["name", "vendor", "simd_width", "max_work_group_size", "local_mem_bytes",
           "compute_units", "mwg", "nwg", "kwg", "mdimc", "ndimc", "vwm", "vwn", "simd_k"]
_NUMBERS = st.one_of(st.integers(-4, 4096), st.sampled_from([2**63, -(2**63), 0]),
                     st.floats(allow_nan=True), st.text(max_size=4), st.none(), st.booleans())


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(_FIELDS), _NUMBERS, min_size=1, max_size=4))
def test_target_fields_with_random_values(changes):
    COUNTS["fuzzed"] += 1
    data = {**get_target("nvidia").to_dict(), **changes}
    try:
        with no_hang():
            got = Target.from_dict(data)
    except TargetError as err:
        assert "\n" not in str(err)
        return
    # accepted: every kernel constraint holds
    assert got.mwg % (got.mdimc * got.vwm) == 0 and got.local_mem_needed <= got.local_mem_bytes


@FUZZ
@given(name=st.text(max_size=40))
def test_target_names(name):
    COUNTS["fuzzed"] += 1
    try:
        got = get_target(name)
    except (TargetError, UserError):
        return
    assert isinstance(got, Target)


@FUZZ
@given(vendor=st.text(max_size=20), simd=st.integers(-1, 300), wg=st.integers(-1, 5000),
       local=st.integers(-1, 1 << 20), cus=st.integers(-1, 256))  # fmt: skip
def test_detection_of_an_unknown_device(vendor, simd, wg, local, cus):
    """Whatever an unknown driver reports, detection yields a valid Target or a TargetError."""
    from gpuprune.arch.detect import fit_target, vendor_of

    COUNTS["fuzzed"] += 1
    try:
        got = fit_target(name=vendor or "gpu", vendor=vendor_of(vendor), simd_width=simd,
                         max_work_group_size=wg, local_mem_bytes=local, compute_units=cus,
                         source="fuzz")  # fmt: skip
    except TargetError as err:
        assert "\n" not in str(err)
        return
    assert got.work_group_size <= wg and got.local_mem_needed <= local
