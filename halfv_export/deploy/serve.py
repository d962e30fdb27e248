"""Start and stop the Triton server bundled with nvidia-pytriton on a halfv-export repository; a client helper.

The wheel ships `pytriton/tritonserver/` (bin/tritonserver, backends/python, python_backend_stubs/3.X) and its
shared libraries in `site-packages/nvidia_pytriton.libs`. Starting it by hand needs three things, done here:

  * LD_LIBRARY_PATH = <this interpreter's LIBDIR> : <site-packages>/nvidia_pytriton.libs : (previous value).
    The Python backend stub links libpython3.X dynamically. Without the running interpreter's own LIBDIR first,
    the loader picks the system's libpython (e.g. 3.11.2) while the stub's stdlib is the interpreter's (e.g.
    3.11.7), and model init dies inside multiprocessing ('_thread.RLock' object has no attribute
    '_recursion_count'). Without nvidia_pytriton.libs the stub cannot find its bundled libcudart (CPU-only
    machines still need the library file; the server logs NVML/CUDA warnings and carries on).
  * a backend directory = a copy of backends/ with the stub for this Python version placed in backends/python/.
  * PYTHONPATH = this interpreter's site-packages, so the stub imports numpy, onnxruntime, pillow and tokenizers
    (halfv_export itself is copied into the repository by deploy/triton.py), and this interpreter's bin directory
    first on PATH: the stub's embedded Python resolves its prefix from the first `python3` on PATH, so without it
    a venv that is not activated is invisible to the stub (ModuleNotFoundError: numpy / onnxruntime).

The server runs in its own process group (the Python stubs are its children) bound to 127.0.0.1 only, and is
stopped by that group id: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UserError

LOOPBACK = "127.0.0.1"
STUB_FAILED = "Failed to preinitialize Python stub"
# model_lifecycle's "failed to load 'm' version 1: ...", a stub that cannot start, the final "error: ..."
LOAD_ERROR = re.compile(r"failed to load '.*|Failed to preinitialize Python stub.*|^error: .*")


@dataclass
class TritonLayout:
    server: Path  # bin/tritonserver
    backends: Path  # backends/ (python backend without a stub)
    stub: Path  # python_backend_stubs/3.X/triton_python_backend_stub
    libs: Path  # nvidia_pytriton.libs


def bundled_triton() -> TritonLayout:
    """Where the nvidia-pytriton wheel keeps the server, for this interpreter's Python version."""
    try:
        import pytriton
    except ImportError:
        raise UserError("the Triton server comes with nvidia-pytriton: "
                        "pip install -c constraints.txt nvidia-pytriton==0.7.0") from None
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    layout = TritonLayout(root / "bin" / "tritonserver", root / "backends",
                          root / "python_backend_stubs" / version / "triton_python_backend_stub",
                          root.parent.parent / "nvidia_pytriton.libs")
    if not layout.server.is_file():
        raise UserError(f"nvidia-pytriton has no tritonserver binary at {layout.server}")
    if not layout.stub.is_file():
        raise UserError(f"nvidia-pytriton has no Python backend stub for Python {version} ({layout.stub})")
    return layout


def server_env(layout: TritonLayout, base: dict | None = None) -> dict:
    """The environment the server and its stubs need (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in (libdir, str(layout.libs), env.get("LD_LIBRARY_PATH")) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
    sites = [p for p in site.getsitepackages() if os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(sites + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # The stub's embedded interpreter finds its prefix (and so a venv's site-packages) from the first
    # `python3` on PATH; PYTHONPATH alone did not reach it when the venv was not activated (CI runs
    # `.venv/bin/python -m pytest`). Put this interpreter's own bin directory first.
    env["PATH"] = os.pathsep.join(p for p in (os.path.dirname(sys.executable), env.get("PATH")) if p)
    return env


def backend_dir(layout: TritonLayout, dest: Path) -> Path:
    """backends/ with this Python's stub next to libtriton_python.so."""
    shutil.copytree(layout.backends, dest, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(layout.stub, dest / "python" / layout.stub.name)
    return dest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise UserError(f"{what} must be in 1..65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            raise UserError(f"{what} {port} is already in use on {LOOPBACK}") from None


@dataclass
class RunningServer:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    metrics_port: int
    log: Path

    @property
    def url(self) -> str:  # what tritonclient.http takes
        return f"{LOOPBACK}:{self.http_port}"

    def startup_errors(self) -> list[str]:
        """First line of each model-load failure in the log (the rest of the log is tables and CUDA noise)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        found = []
        for line in text.splitlines():
            match = LOAD_ERROR.search(line)
            if match:
                message = match.group(0).split("\\n")[0].strip().rstrip('"')
                if message not in found:
                    found.append(message)
        return found

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/v2/health/ready", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the server's process group, SIGKILL if it outlives the grace period."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # stubs that outlived the server (or a crashed one)
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def triton_server(repository, http_port: int | None = None, grpc_port: int | None = None,
                  metrics_port: int | None = None, timeout: float = 180.0, workdir=None, models=None):
    """Run the bundled tritonserver on `repository` until the block ends; yields a RunningServer once ready.

    `models`: load only these (explicit model control); default: every model in the repository.

    Ports default to free loopback ports. UserError (with the log's last lines) if it is not ready within
    `timeout` seconds or exits early; the process group is stopped in every case.
    """
    layout = bundled_triton()
    ports = []
    for port, what in ((http_port, "--http-port"), (grpc_port, "--grpc-port"), (metrics_port, "--metrics-port")):
        if port is None:
            port = free_port()
        else:
            _check_port(port, what)
        ports.append(port)
    if len(set(ports)) != 3:
        raise UserError(f"http, grpc and metrics ports must differ, got {ports}")
    with contextlib.ExitStack() as stack:
        work = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="halfv-triton-")))
        backends = backend_dir(layout, work / "backends")
        log = work / "tritonserver.log"
        command = [str(layout.server), f"--model-repository={Path(repository).resolve()}",
                   f"--backend-directory={backends}",
                   f"--http-address={LOOPBACK}", f"--http-port={ports[0]}",
                   f"--grpc-address={LOOPBACK}", f"--grpc-port={ports[1]}",
                   f"--metrics-address={LOOPBACK}", f"--metrics-port={ports[2]}",
                   "--exit-timeout-secs=10", "--strict-readiness=true"]
        if models:
            command += ["--model-control-mode=explicit"] + [f"--load-model={name}" for name in models]
        with open(log, "wb") as sink:
            process = subprocess.Popen(command, env=server_env(layout), stdout=sink, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        server = RunningServer(process, *ports, log)
        try:
            deadline = time.monotonic() + timeout
            while not _ready(ports[0]):
                if process.poll() is not None:
                    raise UserError(f"tritonserver exited with code {process.returncode} before it was ready: "
                                    f"{'; '.join(server.startup_errors()) or server.log_tail()}")
                errors = server.startup_errors()
                if any(STUB_FAILED in line for line in errors):  # the server would wait for this stub forever
                    raise UserError(f"tritonserver could not start a Python model: {'; '.join(errors)}")
                if time.monotonic() > deadline:
                    raise UserError(f"tritonserver was not ready within {timeout:.0f} s; "
                                    f"{'; '.join(errors) or 'last lines of its log:' + chr(10) + server.log_tail()}")
                time.sleep(0.5)
            yield server
        finally:
            stop(process)


@contextlib.contextmanager
def serve_graphs(graphs_dir, http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, *, vlm_mode: str = "local", instances: int = 1, threads: int = 0,
                 max_image_pixels: int | None = None, timeout: float = 180.0):
    """A python-backend repository for `graphs_dir` in a temp dir, served until the block ends.

    In local mode only halfv_vlm is loaded: it runs the graphs itself, and loading the four graph models too
    would hold every weight twice.
    """
    from .triton import DEFAULT_MAX_IMAGE_PIXELS, VLM_MODEL, make_repository

    with tempfile.TemporaryDirectory(prefix="halfv-serve-") as work:
        repo = Path(work) / "repository"
        make_repository(graphs_dir, repo, "python", vlm_mode=vlm_mode, instances=instances, threads=threads,
                        max_image_pixels=max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS)
        with triton_server(repo, http_port, grpc_port, metrics_port, timeout, workdir=work,
                           models=[VLM_MODEL] if vlm_mode == "local" else None) as server:
            yield server


# -- client -------------------------------------------------------------------------------------------------
@dataclass
class Reply:
    text: str
    tokens: list
    kept: dict  # visual, ivr, ssr


def ask(url: str, image: np.ndarray, prompt: str, max_new_tokens: int | None = None, timeout: float = 120.0,
        model: str = "halfv_vlm") -> Reply:
    """One request to halfv_vlm over HTTP (tritonclient); raises tritonclient's InferenceServerException."""
    import tritonclient.http as http

    image = np.asarray(image)
    inputs = [http.InferInput("IMAGE", list(image.shape), _triton_dtype(image.dtype)),
              http.InferInput("PROMPT", [1], "BYTES")]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(np.array([prompt.encode("utf-8")], dtype=np.object_))
    if max_new_tokens is not None:
        inputs.append(http.InferInput("MAX_NEW_TOKENS", [1], "INT32"))
        inputs[-1].set_data_from_numpy(np.array([max_new_tokens], dtype=np.int32))
    client = http.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
    try:
        result = client.infer(model, inputs, outputs=[http.InferRequestedOutput(n) for n in ("TEXT", "TOKENS", "KEPT")])
    finally:
        client.close()
    text = result.as_numpy("TEXT").reshape(-1)[0]
    kept = result.as_numpy("KEPT").tolist()
    return Reply(text.decode("utf-8") if isinstance(text, bytes) else str(text),
                 [int(t) for t in result.as_numpy("TOKENS")], dict(zip(("visual", "ivr", "ssr"), kept)))


def _triton_dtype(dtype) -> str:
    """numpy dtype -> KServe-v2 datatype name (lets a client send a wrong dtype on purpose, e.g. in tests)."""
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(np.dtype(dtype))
