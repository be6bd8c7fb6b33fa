"""Target files: TOML/YAML round trips, and malformed files give one-line errors."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuprune.arch import TARGETS, Target, get_target
from gpuprune.errors import TargetError


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".yml"])
@pytest.mark.parametrize("name", list(TARGETS))
def test_round_trip(tmp_path, name, suffix):
    t = get_target(name)
    path = tmp_path / f"gpu{suffix}"
    t.save(path)
    back = Target.load(path)
    assert back == t and back.source == t.source
    assert get_target(str(path)) == t


BAD_FILES = {
    "unknown.toml": ('name = "x"\nfoo = 1\n', "unknown field 'foo'"),
    "missing.toml": ('name = "x"\nvendor = "y"\n', "missing field"),
    "type.yaml": ("name: x\nvendor: y\nsimd_width: abc\n", "must be an integer"),
    "syntax.toml": ("name = = 3\n", "malformed target file"),
    "syntax.yaml": ("name: [unclosed\n", "malformed target file"),
    "list.yaml": ("- 1\n- 2\n", "expected a mapping"),
    "empty.yaml": ("", "expected a mapping"),
    "binary.toml": (b"\xff\xfe\x00garbage", "malformed target file"),
    "target.json": ("{}", "unknown extension"),
}


@pytest.mark.parametrize("fname", list(BAD_FILES))
def test_malformed_files_give_one_line_errors(tmp_path, fname):
    content, expect = BAD_FILES[fname]
    path = tmp_path / fname
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(TargetError) as info:
        Target.load(path)
    assert expect in str(info.value) and "\n" not in str(info.value)


def test_invalid_tiling_in_file_names_the_field(tmp_path):
    data = get_target("nvidia").to_dict() | {"mwg": 60}
    path = tmp_path / "bad.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TargetError, match=r"mwg=60 .*a value that passes: mwg=64"):
        Target.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(TargetError, match="cannot read"):
        Target.load(tmp_path / "nope.toml")


def test_save_is_atomic_and_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "gpu.toml"
    get_target("mali").save(path)
    before = path.read_text()
    with pytest.raises(TargetError):
        get_target("mali").save(tmp_path / "gpu.txt")
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["gpu.toml"], "no temp files left behind"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200), st.sampled_from([".toml", ".yaml"]))
def test_fuzz_parser_gives_target_or_documented_error(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        Target.load(path)
    except TargetError as err:
        assert "\n" not in str(err)
