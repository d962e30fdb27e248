"""Packaging: the wheel, what pip resolves for it on each supported Python, and a base (runtime-only) install.

- The wheel holds the product only: no model weights, nothing of the shapes zoo (the separate `halfv-zoo`
  package in zoo/), and its unconditional requirements are torch-free.
- pip's resolver, per target Python and platform (`pip install --dry-run --report`, binary wheels only, as on the
  target): the base install resolves on 3.10-3.13 (x86_64, and aarch64 for JetPack 6's 3.10) without torch, with
  numpy 2 and with numpy 1.26; `[export]` resolves on 3.11-3.13 with torch and transformers 5, and on 3.10 pip
  refuses it, saying that transformers needs Python 3.11.
- A fresh venv with only the wheel (numpy 2 there; no torch): every `halfv_export.core` and `halfv_export.runtime`
  module imports, `halfv-export run` answers exactly as the dev venv does on the same graphs, and `export` names
  the missing extra in one `error:` line (exit 2).

Decision: the tiny graphs the base venv runs are exported in the dev venv in a session fixture (the session's
shared tiny export, tests/runtime/exported.py: the same export_graphs call as `halfv-export export --model
tiny-qwen2.5-vl`, paid once per suite) rather than committed as binaries: no binary bloat in the repository, and
the property proven is the same (graphs made with [export] answer identically under the base install).

Needs PyPI (or the index pip is configured with) for the resolution and the base venv: skipped with a reason
when it cannot be reached or a resolution takes over PIP_TIMEOUT. About 2-3 minutes on 2 cores (plus the shared tiny
export when run alone), most of it pip reading metadata.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEV_BIN = Path(sys.executable).parent
MODEL = "tiny-qwen2.5-vl"
PROMPT = "What is in the picture?"
WHEEL_LIMIT = 1_000_000  # bytes: code and profiles only (about 0.2 MB today)
PIP_TIMEOUT = 240  # seconds per resolution (an [export] one takes ~40 s here); past it the case skips (network)

# Linux targets as glibc versions: Ubuntu 22.04 (JetPack 6, and a common x86_64 host) has glibc 2.35. pip does
# not expand `--platform manylinux_2_35_x86_64` to the older manylinux tags the wheels carry, so list them all.
GLIBC = 35


def platforms(arch: str) -> list[str]:
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC, 16, -1)] + [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/") + "/"


@pytest.fixture(scope="session")
def pypi():
    """Skip (reason `network`) when the package index cannot be reached."""
    try:
        with urllib.request.urlopen(index_url() + "pip/", timeout=15) as reply:
            reply.read(1)
    except OSError as exc:
        pytest.skip(f"network: the package index {index_url()} is unreachable ({exc})")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built once per session (the dev venv's setuptools: no download)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(out)], check=True, timeout=300)
    (built,) = out.glob("halfv_export-*.whl")
    return built


def test_wheel_holds_no_weights_and_no_zoo(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert wheel.stat().st_size < WHEEL_LIMIT, f"{wheel.name}: {wheel.stat().st_size} bytes"
    heavy = [n for n in names if n.endswith((".safetensors", ".bin", ".pt", ".onnx", ".data", ".npz"))]
    assert heavy == []
    assert [n for n in names if "zoo" in n.split("/")[0] or "/zoo/" in n or "/weights/" in n] == []
    assert {n.split("/")[0] for n in names} == {"halfv_export", wheel.name.split("-")[0] + "-" +
                                                 wheel.name.split("-")[1] + ".dist-info"}
    assert any(n.startswith("halfv_export/core/profiles/") and n.endswith(".json") for n in names)
    # The base requirements (no `extra ==` marker) are the torch-free runtime.
    base = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
    names_only = {canonical(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]) for req in base}
    assert names_only == {"numpy", "onnxruntime", "pillow", "tokenizers", "click", "tqdm"}, base
    assert all(re.search(r"[<>]=?|~=", req) and "==" not in req for req in base), base  # ranges, not pins


# -- pip's resolver, per Python ----------------------------------------------------------------------------

# case id -> (python, arch, requirement suffix, extra requirements)
RESOLVE = {
    "base-3.10-aarch64": ("3.10", "aarch64", "", []),  # JetPack 6
    **{f"base-numpy2-{py}": (py, "x86_64", "", ["numpy>=2"]) for py in ("3.10", "3.11", "3.12", "3.13")},
    # numpy 1.26 at both ends of its range (no wheels for 3.13; 3.11 is the dev venv, pinned to 1.26)
    **{f"base-numpy1-{py}": (py, "x86_64", "", ["numpy>=1.26,<2"]) for py in ("3.10", "3.12")},
    **{f"export-{py}": (py, "x86_64", "[export]", []) for py in ("3.10", "3.11", "3.12", "3.13")},
}


def fast_deps() -> list[str]:
    """pip reads a wheel's metadata from the index's metadata file (PEP 658) when the index serves one; an index
    that does not (some mirrors) would make it download every wheel, GBs for torch and its CUDA wheels. pip's
    fast-deps reads the metadata through HTTP range requests instead, where this pip still has that feature."""
    probe = subprocess.run([sys.executable, "-m", "pip", "install", "--use-feature=fast-deps", "--help"],
                           capture_output=True, text=True, timeout=60)
    return ["--use-feature=fast-deps"] if probe.returncode == 0 else []


def resolve(wheel: Path, out: Path, case: str, options: list[str]) -> dict:
    python, arch, extras, more = RESOLVE[case]
    report = out / f"{case}.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", *options,
               "--report", str(report), "--only-binary=:all:", "--python-version", python, *platforms(arch),
               f"{wheel}{extras}", *more]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "stderr": f"timed out after {PIP_TIMEOUT} s", "install": {}}
    install = {}
    if done.returncode == 0:
        for item in json.loads(report.read_text())["install"]:
            install[canonical(item["metadata"]["name"])] = item["metadata"]["version"]
    return {"returncode": done.returncode, "stderr": done.stderr, "install": install}


@pytest.fixture(scope="session")
def resolutions(wheel, pypi, tmp_path_factory) -> dict:
    """Every RESOLVE case at once (pip is mostly waiting on downloads: four at a time)."""
    out, options = tmp_path_factory.mktemp("resolve"), fast_deps()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case: pool.submit(resolve, wheel, out, case, options) for case in RESOLVE}
        return {case: future.result() for case, future in futures.items()}


def resolved(resolutions: dict, case: str) -> dict:
    """The case's resolution; a timeout is the network's (skip), anything else the test judges."""
    result = resolutions[case]
    if result["returncode"] is None:
        pytest.skip(f"network: pip's resolution for {case} {result['stderr']}")
    return result


def major(version: str) -> int:
    return int(version.split(".")[0])


@pytest.mark.network
@pytest.mark.parametrize("case", [c for c in RESOLVE if c.startswith("base")])
def test_base_install_resolves_without_torch(resolutions, case):
    result = resolved(resolutions, case)
    assert result["returncode"] == 0, result["stderr"][-3000:]
    install = result["install"]
    assert "torch" not in install and "transformers" not in install and "onnx" not in install, install
    assert {"halfv-export", "numpy", "onnxruntime", "pillow", "tokenizers", "click", "tqdm"} <= install.keys()
    if "numpy2" in case:
        assert major(install["numpy"]) == 2
    if "numpy1" in case:
        assert install["numpy"].startswith("1.26.")


@pytest.mark.network
@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_export_extra_resolves_with_torch(resolutions, python):
    result = resolved(resolutions, f"export-{python}")
    assert result["returncode"] == 0, result["stderr"][-3000:]
    install = result["install"]
    assert "torch" in install and major(install["transformers"]) == 5, install
    assert {"onnx", "onnxscript", "onnx-ir", "onnx-graphsurgeon", "polygraphy", "safetensors"} <= install.keys()


@pytest.mark.network
def test_export_extra_is_refused_on_python_3_10_with_the_reason(resolutions):
    result = resolved(resolutions, "export-3.10")
    assert result["returncode"] != 0, result["install"]
    stderr = result["stderr"]
    assert "transformers" in stderr and re.search(r"Requires-Python >=3\.11", stderr), stderr[-3000:]


# -- a base install ----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_graphs() -> Path:
    """The tiny model's graphs, exported in the dev venv once per session (see the module docstring): the export
    the runtime and parity tests share (tests/runtime/exported.py, what `halfv-export export --model tiny-qwen2.5-vl`
    writes), so the full suite pays for it once."""
    from tests.runtime.exported import exported_graphs

    return exported_graphs(MODEL)


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> Path:
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "image.png"
    pixels = np.random.default_rng(0).integers(0, 256, size=(112, 140, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="session")
def base_venv(wheel, pypi, tmp_path_factory) -> Path:
    """A fresh venv with the wheel alone and numpy 2 (the dev pins for everything else the base needs)."""
    venv = tmp_path_factory.mktemp("base") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    constraints = venv.parent / "constraints.txt"
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
            if not re.match(r"\s*(torch|numpy)\b", line)]
    constraints.write_text("\n".join(pins) + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(constraints),
                    str(wheel), "numpy>=2,<3"], check=True, timeout=600)
    return venv


def in_venv(venv: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=timeout, cwd=venv.parent)  # not the checkout: nothing imports from it


@pytest.mark.network
def test_base_venv_has_no_torch_and_every_runtime_module_imports(base_venv):
    done = in_venv(base_venv, "python", "-c", "import torch")
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr
    walk = """
import importlib, json, pkgutil, sys
import numpy
failed, imported = {}, []
for package in ("halfv_export.core", "halfv_export.runtime"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if info.name.startswith("halfv_export.core.lint"):  # the lint extra (onnx)
            continue
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except Exception as exc:
            failed[info.name] = f"{type(exc).__name__}: {exc}"
heavy = sorted(m for m in ("torch", "transformers", "onnx") if m in sys.modules)
print(json.dumps({"failed": failed, "imported": imported, "heavy": heavy, "numpy": numpy.__version__,
                  "file": sys.modules["halfv_export.core"].__file__}))
"""
    done = in_venv(base_venv, "python", "-c", walk)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["failed"] == {}
    assert result["heavy"] == []
    assert major(result["numpy"]) == 2
    assert str(base_venv) in result["file"]  # the installed wheel, not the checkout
    assert "halfv_export.runtime.pipeline" in result["imported"] and "halfv_export.core.manifest" in result["imported"]


def answer_lines(stdout: str) -> list[str]:
    """`run --stats` output without the timing line."""
    return [line for line in stdout.splitlines() if not line.startswith("vision ")]


@pytest.mark.network
def test_base_venv_run_answers_as_the_dev_venv(base_venv, tiny_graphs, image):
    args = ["run", "--graphs", str(tiny_graphs), "--image", str(image), "--prompt", PROMPT,
            "--max-new-tokens", "8", "--stats"]
    dev = subprocess.run([str(DEV_BIN / "halfv-export"), *args], capture_output=True, text=True, timeout=300)
    assert dev.returncode == 0, dev.stderr
    base = in_venv(base_venv, "halfv-export", *args)
    assert base.returncode == 0, base.stderr
    assert answer_lines(base.stdout) == answer_lines(dev.stdout)
    assert any(line.startswith("visual tokens:") for line in answer_lines(base.stdout))


@pytest.mark.network
def test_base_venv_export_names_the_missing_extra(base_venv, tmp_path):
    done = in_venv(base_venv, "halfv-export", "export", "--model", MODEL, "--out", str(tmp_path / "graphs"))
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "halfv-export[export]" in lines[0] or "'export' extra" in lines[0], lines[0]
    assert not (tmp_path / "graphs").exists()
