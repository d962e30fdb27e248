"""Atomic writes leave complete artifacts with the modes a plain open()/mkdir() would give (umask-respecting)."""

from __future__ import annotations

import os
import stat

import pytest

from halfv_export.core.fileio import atomic_dir, atomic_path, write_json


@pytest.fixture
def umask():
    def set_mask(mask):
        previous.append(os.umask(mask))
    previous = []
    yield set_mask
    if previous:
        os.umask(previous[0])


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask,folder,file", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600), (0o002, 0o775, 0o664)])
def test_outputs_get_umask_modes_not_private_temp_modes(tmp_path, umask, mask, folder, file):
    umask(mask)
    with atomic_dir(tmp_path / "graphs") as tmp:
        (tmp / "sub").mkdir()
        with atomic_path(tmp / "sub" / "manifest.json") as part:  # nested: mkstemp would make it 0600
            part.write_text("{}")
        (tmp / "model.onnx").write_bytes(b"x")
    write_json(tmp_path / "summary.json", {"a": 1})
    out = tmp_path / "graphs"
    assert _mode(out) == folder and _mode(out / "sub") == folder
    assert _mode(out / "sub" / "manifest.json") == file and _mode(out / "model.onnx") == file
    assert _mode(tmp_path / "summary.json") == file
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left behind


def test_a_failed_block_leaves_the_previous_artifact(tmp_path):
    write_json(tmp_path / "a.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert (tmp_path / "a.json").read_text().strip().startswith("{") and len(list(tmp_path.iterdir())) == 1
