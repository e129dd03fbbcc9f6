"""The one way cotune publishes a file or a folder: whole or not at all, no temp file left."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from cotune import _files
from cotune._files import building_folder, replacing, write_atomic


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_atomic_replaces_the_file_with_the_permissions_open_would_give(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_atomic(path, "old")
    assert write_atomic(path, "ünï") == path
    assert path.read_text(encoding="utf-8") == "ünï"
    write_atomic(path, b"\x00\x01", sync=False)
    assert path.read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
    assert leftovers(path.parent) == []


def test_a_failed_write_keeps_the_old_file_names_the_path_and_leaves_no_temp_file(
    tmp_path, monkeypatch
):
    path = tmp_path / "a.json"
    write_atomic(path, "old")

    def full(handle, data, sync=True):
        handle.write(data[:1])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_files, "_write_and_sync", full)
    with pytest.raises(OSError, match=r"cannot write .*a\.json: No space left") as caught:
        write_atomic(path, "new")
    assert caught.value.errno == errno.ENOSPC
    assert path.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_replacing_publishes_only_a_block_that_finishes(tmp_path):
    path = tmp_path / "model.gguf"
    with replacing(path) as tmp:
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_bytes(b"whole")
    assert path.read_bytes() == b"whole"
    with pytest.raises(ValueError), replacing(path) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("hash mismatch")
    assert path.read_bytes() == b"whole"
    assert leftovers(tmp_path) == []


def test_building_folder_renames_into_place_and_a_concurrent_winner_is_kept(tmp_path):
    dest = tmp_path / "index"
    with building_folder(dest, complete=dest.is_dir) as tmp:
        (tmp / "part").write_text("mine")
    assert (dest / "part").read_text() == "mine"

    with building_folder(dest, complete=lambda: (dest / "part").is_file()) as tmp:
        (tmp / "part").write_text("second")  # the rename fails: dest is there and complete
    assert (dest / "part").read_text() == "mine"

    with pytest.raises(OSError), building_folder(dest, complete=lambda: False) as tmp:
        (tmp / "part").write_text("third")  # fails, and dest is not what we wanted
    with pytest.raises(RuntimeError), building_folder(tmp_path / "other", complete=dest.is_dir):
        raise RuntimeError("conversion failed")
    assert not (tmp_path / "other").exists()
    assert leftovers(tmp_path) == []
