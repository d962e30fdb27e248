"""The bundled tritonserver serving a tiny model: concurrent requests equal the local pipeline one by one,
bad requests get clear errors while the server keeps serving, start failures and stops are clean."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from halfv_export.deploy.serve import _ready, ask, free_port, serve_graphs, triton_server
from halfv_export.core.errors import UserError
from halfv_export.runtime.vlm import VlmPipeline, as_image_array
from tests.conftest import TINY_IMAGES
from tests.runtime.exported import exported_graphs

pytestmark = pytest.mark.triton

MODEL = "tiny-qwen2.5-vl"
MAX_PIXELS = 40_000  # above both tiny sizes (112x168 = 18,816), below the refused 256x256
THREADS, PER_THREAD = 8, 4


@pytest.fixture(scope="module")
def server():
    with serve_graphs(exported_graphs(MODEL), threads=1, max_image_pixels=MAX_PIXELS, timeout=240) as running:
        yield running
    assert running.process.poll() is not None  # stopped with the block


@pytest.fixture(scope="module")
def local():
    return VlmPipeline(exported_graphs(MODEL), threads=1)


def request_case(i: int):
    """Different image (size and pixels), prompt and length per request."""
    size = TINY_IMAGES[MODEL][i % 2]
    image = np.random.default_rng(100 + i).integers(0, 256, (*size, 3), dtype=np.uint8)
    return image, f"Question {i}: what is in the {['left', 'right', 'middle'][i % 3]} part?", 3 + i % 4


def raw_infer(url, inputs):
    client = http.InferenceServerClient(url, network_timeout=60)
    try:
        return client.infer("halfv_vlm", inputs)
    finally:
        client.close()


def good_inputs():
    image, prompt, _ = request_case(0)
    items = [http.InferInput("IMAGE", list(image.shape), "UINT8"), http.InferInput("PROMPT", [1], "BYTES")]
    items[0].set_data_from_numpy(image)
    items[1].set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    return items


def test_concurrent_requests_equal_local_pipeline(server, local):
    cases = [request_case(i) for i in range(THREADS * PER_THREAD)]

    def client(thread: int):
        return [(i, ask(server.url, *cases[i], timeout=120)) for i in range(thread, len(cases), THREADS)]

    with ThreadPoolExecutor(THREADS) as pool:
        replies = dict(pair for batch in pool.map(client, range(THREADS), timeout=300) for pair in batch)
    assert sorted(replies) == list(range(len(cases)))
    for i, (image, prompt, new_tokens) in enumerate(cases):
        answer = local.answer(as_image_array(image), prompt, new_tokens)
        assert replies[i].tokens == answer.tokens, i
        assert replies[i].text == answer.text, i
        assert replies[i].kept["visual"] == answer.stats["kept"]["visual"], i
    assert len({tuple(r.tokens) for r in replies.values()}) > 1  # the cases really differ


def test_local_mode_loads_only_halfv_vlm(server):
    client = http.InferenceServerClient(server.url)
    try:
        index = {m["name"]: m.get("state") for m in client.get_model_repository_index()}
    finally:
        client.close()
    assert index == {"halfv_vlm": "READY", "vision": None, "embed": None, "prefill": None, "decode": None}


def test_bad_requests_get_clear_errors_and_server_keeps_serving(server):
    image, prompt, _ = request_case(0)
    prompt_only = good_inputs()[1:]
    with pytest.raises(InferenceServerException, match="(?i)input"):  # missing IMAGE
        raw_infer(server.url, prompt_only)
    with pytest.raises(InferenceServerException, match="(?i)FP32.*UINT8|UINT8.*FP32"):
        ask(server.url, image.astype(np.float32), prompt)
    with pytest.raises(InferenceServerException, match=f"above this server's limit of {MAX_PIXELS}"):
        ask(server.url, np.zeros((256, 256, 3), np.uint8), prompt)
    with pytest.raises(InferenceServerException, match="(?i)shape"):  # 4 channels: config dims [-1, -1, 3]
        ask(server.url, np.zeros((16, 16, 4), np.uint8), prompt)
    with pytest.raises(InferenceServerException, match=r"MAX_NEW_TOKENS must be in \[1, "):
        ask(server.url, image, prompt, max_new_tokens=0)
    with pytest.raises(InferenceServerException, match="prompt is empty"):
        ask(server.url, image, "")
    reply = ask(server.url, image, prompt, max_new_tokens=3)  # still serving
    assert len(reply.tokens) >= 1 and reply.kept["visual"] == 16
    assert raw_infer(server.url, good_inputs()).as_numpy("TOKENS").size >= 1  # default MAX_NEW_TOKENS


def test_start_failures_are_clear_errors(tmp_path):
    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
                                        'input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }\n')
    # no model.py: the stub never starts and the server would wait forever
    with pytest.raises(UserError, match="could not start a Python model: .*model file not found"):
        with triton_server(tmp_path / "repo", timeout=120):
            pass
    (model / "1" / "model.py").write_text("class TritonPythonModel:\n    def initialize(self, args):\n"
                                          "        import halfv_missing_dependency\n")
    with pytest.raises(UserError, match="exited with code 1 before it was ready: failed to load 'broken' "
                                        ".*No module named 'halfv_missing_dependency'"):
        with triton_server(tmp_path / "repo", timeout=120):
            pass
    busy = free_port()
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", busy))
        sock.listen()
        with pytest.raises(UserError, match=f"--http-port {busy} is already in use"):
            with triton_server(tmp_path / "repo", http_port=busy):
                pass


@pytest.mark.slow
def test_serve_command_stops_on_sigterm():
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "halfv_export.cli", "serve", "--graphs", str(exported_graphs(MODEL)),
               "--http-port", str(port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
               "--threads", "1", "--timeout", "240"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        line = process.stdout.readline()  # blocks until the server is ready (or the command failed)
        assert f"serving halfv_vlm at http://127.0.0.1:{port}" in line, process.stderr.read()
        image, prompt, _ = request_case(1)
        assert ask(f"127.0.0.1:{port}", image, prompt, max_new_tokens=2).kept["visual"] == 24
        process.terminate()
        assert process.wait(timeout=60) == 0
        assert "stopped" in process.stderr.read()
        deadline = time.monotonic() + 10
        while _ready(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _ready(port)
    finally:  # SIGTERM first: the command stops its server's process group on the way out
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait(timeout=30)
