"""Triton repositories: configs parse into tritonclient's ModelConfig and match the manifest; the python-backend
repository, loaded by the real tritonserver, answers with halfv_vlm calling the graph models through BLS."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from halfv_export.cli import cli
from halfv_export.deploy.serve import ask, triton_server
from halfv_export.deploy.triton import VLM_MODEL, make_repository
from halfv_export.core.errors import UserError
from halfv_export.core.manifest import ROLES, Manifest, sha256_file
from halfv_export.runtime.vlm import VlmPipeline, as_image_array
from tests.conftest import TINY, TINY_IMAGES
from tests.runtime.exported import copy_graphs, exported_graphs, reseal

NUMPY_TO_TRITON = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def read_config(folder) -> mc.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


def assert_matches(config: mc.ModelConfig, entry: dict) -> None:
    for tensors, expected in ((config.input, entry["inputs"]), (config.output, entry["outputs"])):
        assert [t.name for t in tensors] == [e["name"] for e in expected]
        for t, e in zip(tensors, expected):
            assert mc.DataType.Name(t.data_type) == NUMPY_TO_TRITON[e["dtype"]], t.name
            assert len(t.dims) == len(e["shape"]), t.name
            for dim, want in zip(t.dims, e["shape"]):
                assert dim == (want if isinstance(want, int) else -1), t.name


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt", "python"])
@pytest.mark.slow_cases("tiny-llava")
def test_configs_parse_and_match_manifest(name, backend, tmp_path):
    graphs = exported_graphs(name)
    manifest = Manifest.load(graphs)
    repo = tmp_path / "repo"
    record = make_repository(graphs, repo, backend)
    for role in ROLES:
        config = read_config(repo / role)
        assert config.name == role and config.max_batch_size == 0
        assert_matches(config, manifest.graph(role))
        kind = record["models"][role]
        group = config.instance_group[0]
        if kind == "tensorrt":
            assert (config.platform, group.kind) == ("tensorrt_plan", mc.ModelInstanceGroup.KIND_GPU)
            assert not (repo / role / "1" / "model.onnx").exists()  # the plan comes from `engine`
        else:
            assert group.kind == mc.ModelInstanceGroup.KIND_CPU
            assert sha256_file(repo / role / "1" / "model.onnx") == manifest.graph(role)["sha256"][manifest.graph(role)["file"]]
            assert (config.platform == "onnxruntime_onnx") == (kind == "onnxruntime")
            assert (repo / role / "1" / "model.py").is_file() == (kind == "python")
    if backend == "tensorrt":  # the graphs `halfv-export engine` builds are served from plans
        assert {r for r in ROLES if record["models"][r] == "tensorrt"} >= {"embed", "prefill", "decode"}
        assert "model.plan" in (repo / "README.md").read_text()
    vlm = read_config(repo / VLM_MODEL)
    assert vlm.backend == "python" and vlm.max_batch_size == 0
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims), t.optional) for t in vlm.input] == [
        ("IMAGE", "TYPE_UINT8", [-1, -1, 3], False), ("PROMPT", "TYPE_STRING", [1], False),
        ("MAX_NEW_TOKENS", "TYPE_INT32", [1], True)]
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in vlm.output] == [
        ("TEXT", "TYPE_STRING", [1]), ("TOKENS", "TYPE_INT64", [-1]), ("KEPT", "TYPE_INT64", [3])]
    assert vlm.parameters["mode"].string_value == ("local" if backend == "python" else "bls")
    code = repo / VLM_MODEL / "1"
    assert (code / "halfv_export" / "runtime" / "vlm.py").is_file()
    assert not list(code.glob("halfv_export/**/method")) and not (code / "halfv_export" / "backbones").exists()
    assert (code / "graphs" / "vision.onnx").exists() == (backend == "python")


def test_copied_runtime_imports_no_torch(tmp_path):
    """The halfv_export copy the backend stub imports must not need torch (a Triton image may lack it)."""
    import subprocess
    import sys

    repo = tmp_path / "repo"
    make_repository(exported_graphs("tiny-qwen2.5-vl"), repo, "onnxruntime")
    code = repo / VLM_MODEL / "1"
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import halfv_export.runtime.vlm as v; "
             "assert v.__file__.startswith(sys.argv[1]), v.__file__; "
             "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", probe, str(code)], check=True, timeout=120)


def test_refusals_write_nothing(tmp_path):
    graphs = exported_graphs("tiny-qwen2.5-vl")
    out = tmp_path / "repo"
    with pytest.raises(UserError, match="in-process only with --backend python"):
        make_repository(graphs, out, "onnxruntime", vlm_mode="local")
    with pytest.raises(UserError, match="--engines goes with --backend tensorrt"):
        make_repository(graphs, out, "python", engines_dir=tmp_path)
    with pytest.raises(UserError, match="backend must be one of"):
        make_repository(graphs, out, "tensorflow")
    with pytest.raises(UserError, match="not a halfv-export engines folder"):
        make_repository(graphs, out, "tensorrt", engines_dir=tmp_path)
    with pytest.raises(UserError, match="must not be inside the graphs folder"):
        make_repository(graphs, graphs / "repo", "python")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not a halfv-export Triton repository"):
        make_repository(graphs, precious, "python")
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    damaged = copy_graphs("tiny-qwen2.5-vl", tmp_path / "damaged")
    with open(damaged / "decode.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(UserError, match="sha256"):
        make_repository(damaged, out, "python")
    reseal(damaged, "decode.onnx")  # consistent again: generation succeeds
    make_repository(damaged, out, "python")
    assert not (graphs / "repo").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp leftovers
    assert (out / VLM_MODEL / "config.pbtxt").is_file()
    make_repository(graphs, out, "onnxruntime")  # a repository of ours is replaced as a whole
    assert read_config(out / "vision").platform == "onnxruntime_onnx" and not (out / "vision" / "1" / "model.py").exists()


def test_triton_command(tmp_path):
    graphs = exported_graphs("tiny-qwen2.5-vl")
    out = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["triton", "--graphs", str(graphs), "--out", str(out), "--backend", "tensorrt"])
    assert result.exit_code == 0, result.output
    assert "halfv_vlm (python (bls))" in result.output and "README.md" in result.output
    assert read_config(out / "prefill").platform == "tensorrt_plan"
    result = CliRunner().invoke(cli, ["triton", "--graphs", str(tmp_path / "missing"), "--out", str(out)])
    assert result.exit_code == 2 and "graphs folder not found" in result.output


@pytest.fixture(scope="module")
def bls_server(tmp_path_factory):
    """The python-backend repository with halfv_vlm in BLS mode: the graph models run the graphs."""
    repo = tmp_path_factory.mktemp("triton") / "repo"
    make_repository(exported_graphs("tiny-qwen2.5-vl"), repo, "python", vlm_mode="bls", threads=1)
    with triton_server(repo, timeout=240) as server:
        yield server


@pytest.mark.triton
@pytest.mark.parametrize("size", TINY_IMAGES["tiny-qwen2.5-vl"])
def test_served_bls_repository_equals_local_pipeline(bls_server, size):
    rng = np.random.default_rng(sum(size))
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    prompt = f"Describe the {size[1]}-wide picture."
    reply = ask(bls_server.url, image, prompt, max_new_tokens=6)
    local = VlmPipeline(exported_graphs("tiny-qwen2.5-vl"), threads=1).answer(as_image_array(image), prompt, 6)
    assert reply.tokens == local.tokens
    assert reply.text == local.text
    kept = local.stats["kept"]
    assert reply.kept == {"visual": kept["visual"], "ivr": kept["ivr"], "ssr": kept["ssr"]}
    assert kept["visual"] > kept["ivr"] > kept["ssr"]  # HalfV pruned inside the served prefill


@pytest.mark.triton
def test_graph_model_answers_directly(bls_server):
    """The embed model is servable on its own, with the manifest's I/O names."""
    import tritonclient.http as http

    ids = np.array([[1, 5, 9]], dtype=np.int64)
    request = http.InferInput("input_ids", list(ids.shape), "INT64")
    request.set_data_from_numpy(ids)
    client = http.InferenceServerClient(bls_server.url)
    try:
        embeds = client.infer("embed", [request]).as_numpy("embeds")
    finally:
        client.close()
    local = VlmPipeline(exported_graphs("tiny-qwen2.5-vl"), threads=1).decoder.embed(ids)
    np.testing.assert_array_equal(embeds, local)
