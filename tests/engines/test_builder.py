"""Engine builder: the missing-TensorRT path (every machine without it), version settings, and a real
build + TensorRT-vs-ORT parity where TensorRT and a GPU exist."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from halfv_export.cli import cli
from halfv_export.engines.builder import BUILD_NAME, build_engines, build_settings, tensorrt_available
from halfv_export.engines.compare import compare_trt
from halfv_export.core.errors import UserError
from tests.runtime.exported import exported_graphs as exported

HAVE_TRT = tensorrt_available()
HAVE_GPU = shutil.which("nvidia-smi") is not None


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is importable here: the missing-TensorRT path cannot be shown")
def test_engine_without_tensorrt_is_one_line_exit_2(tmp_path):
    out = tmp_path / "engines"
    result = CliRunner().invoke(cli, ["engine", "--graphs", str(exported("tiny-qwen2.5-vl")), "--out", str(out)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TensorRT is not importable here: ")
    assert not out.exists()


@pytest.mark.slow
def test_engine_refuses_bad_input_before_tensorrt(tmp_path):
    result = CliRunner().invoke(cli, ["engine", "--graphs", str(exported("tiny-llava")), "--max-pixels", "100000",
                                      "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "apply to Qwen2.5-VL only" in result.output


@pytest.mark.parametrize("version, expected", [
    ("10.3.0.30", {"target": "trt10", "strongly_typed": False, "fp16": True}),
    ("11.4.0.106", {"target": "trt11", "strongly_typed": True, "fp16": False}),
])
def test_build_settings(version, expected):
    assert build_settings(version) == expected


def test_old_tensorrt_refused():
    with pytest.raises(UserError, match="too old"):
        build_settings("8.6.1")


@pytest.mark.skipif(not (HAVE_TRT and HAVE_GPU), reason="needs `import tensorrt` and an NVIDIA GPU")
def test_build_and_compare_with_onnx_runtime(tmp_path):
    graphs = exported("tiny-qwen2.5-vl")
    cache = tmp_path / "timing.cache"
    record = build_engines(graphs, tmp_path / "engines", max_text=32, max_new_tokens=8, timing_cache=cache)
    assert set(record["engines"]) == {"embed", "prefill", "decode"}
    assert json.loads((tmp_path / "engines" / BUILD_NAME).read_text()) == record
    assert cache.is_file() and record["timing_cache"]["loaded_from"] is None
    report = compare_trt(graphs, tmp_path / "engines")
    assert report["passed"], json.dumps(report, indent=1)[:4000]
    again = build_engines(graphs, tmp_path / "engines2", max_text=32, max_new_tokens=8, timing_cache=cache)
    assert again["timing_cache"]["loaded_from"] == str(cache)
