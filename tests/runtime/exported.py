"""Tiny graphs exported once per test session (about 100 s each on 2 cores, nearly all of it in
torch.onnx.export), shared by the runtime and parity tests.

Tests that damage a folder work on a copy (`copy_graphs`), never on the shared export.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from halfv_export.core.manifest import DATA_FILES, Manifest, sha256_file
from halfv_export.core.plan import PruningPlan
from halfv_export.core.profile import shipped_profile
from tests.conftest import tiny_backbone


@functools.lru_cache(maxsize=None)
def session_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="halfv-graphs-"))
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.lru_cache(maxsize=None)
def exported_graphs(name: str) -> Path:
    """The tiny model exported with its shipped profile (HalfV, fps coverage, fp32, opset 20)."""
    from halfv_export.graphs.export import export_graphs

    profile = shipped_profile(name)
    out = session_dir() / name
    export_graphs(tiny_backbone(name), name, out, PruningPlan.halfv(profile), profile)
    return out


def copy_graphs(name: str, dest: Path) -> Path:
    return Path(shutil.copytree(exported_graphs(name), dest / name))


def reseal(folder: Path, file: str) -> None:
    """Record `file`'s new sha256 in the manifest, as if it had been exported that way."""
    manifest = Manifest.load(folder, verify=False)
    for entry in manifest["graphs"].values():
        if file in entry.get("sha256", {}):
            entry["sha256"][file] = sha256_file(folder / file)
    if file in (manifest.get(DATA_FILES) or {}):
        manifest[DATA_FILES][file]["sha256"] = sha256_file(folder / file)
    manifest.save()
