"""Atomic writes: all or nothing, and files get ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from gpuprune.fileio import atomic_open, atomic_write_text


def test_new_files_get_the_umask_mode_and_replacements_keep_theirs(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o640)
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as fh:
        fh.write("half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_records_carry_a_checksum(tmp_path):
    from gpuprune.fileio import read_record, write_record

    path = tmp_path / "r.json"
    stored = write_record(path, {"accuracy": 0.09375, "nested": {"a": [1, 2.5]}})
    assert read_record(path) == stored and "sha256" in stored
    path.write_text(path.read_text().replace("0.09375", "0.19375"))
    assert read_record(path) == {}


def test_check_output_refuses_folders_links_and_inputs(tmp_path):
    from gpuprune.errors import UserError
    from gpuprune.fileio import check_output

    src = tmp_path / "in.pt"
    src.write_text("x")
    (tmp_path / "link").symlink_to(src)
    for bad, kwargs in [(f"{tmp_path}/", {}), (tmp_path / "link", {}),
                        (src, {"inputs": [str(src)]}), (src / "below", {}),
                        (src, {"folder": True})]:  # fmt: skip
        with pytest.raises(UserError):
            check_output(bad, **kwargs)
    assert check_output(tmp_path / "new" / "out.bin") == tmp_path / "new" / "out.bin"
    assert check_output(tmp_path / "d", folder=True) == tmp_path / "d"


def test_set_aside_moves_ours_and_refuses_the_users(tmp_path):
    from gpuprune.errors import UserError
    from gpuprune.fileio import own_folder, set_aside

    ours = own_folder(tmp_path / "ours", "folder", "fix")
    (ours / "result.json").write_text("{}")
    moved = set_aside(ours, tmp_path / "stale")
    assert moved is not None and (moved / "result.json").exists() and not ours.exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("mine")
    with pytest.raises(UserError):
        set_aside(theirs, tmp_path / "stale")
    with pytest.raises(UserError):
        own_folder(theirs, "folder", "fix")
    assert (theirs / "thesis.tex").read_text() == "mine"


def test_long_names_get_short_temp_names(tmp_path):
    path = tmp_path / ("n" * 250)
    atomic_write_text(path, "ok")
    assert path.read_text() == "ok"
