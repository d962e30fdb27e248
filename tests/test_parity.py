"""`halfv-export check`: passes on exported tiny graphs of every family, names a planted difference
(exit 1), refuses damaged or foreign folders (exit 2), and writes valid JSON / JUnit reports."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

from halfv_export.cli import cli
from halfv_export.graphs.export import DECODER_DATA
from halfv_export.core.manifest import DATA_FILES, Manifest
from tests.conftest import TINY
from tests.runtime.exported import copy_graphs, exported_graphs, reseal

QWEN = "tiny-qwen2.5-vl"


def run_check(folder, tmp_path, *extra):
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    result = CliRunner().invoke(cli, ["check", "--graphs", str(folder), "--report", str(report),
                                      "--junit", str(junit), "--threads", "1", *extra])
    return result, report, junit


def load_junit(path):
    root = ET.parse(path).getroot()
    cases = root.findall("./testsuite/testcase")
    return root, cases


@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow_cases("tiny-llava")
def test_check_passes_on_exported_graphs(name, tmp_path):
    result, report_path, junit_path = run_check(exported_graphs(name), tmp_path)
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output

    report = json.loads(report_path.read_text())
    assert report["passed"] and report["first_difference"] is None and report["model"] == name
    comparisons = report["comparisons"]
    prefill = [c for c in comparisons if c["kind"] == "prefill"]
    generate = [c for c in comparisons if c["kind"] == "generate"]
    shapes = {c["case"]: c["shape"] for c in prefill if c["output"] == "logits"}
    assert len({case.split("N=")[1].split()[0] for case in shapes}) >= 2, "two visual-token counts"
    assert {shape[0] for shape in shapes.values()} == {1, 2}, "batch 1 and 2"
    outputs = {c["output"] for c in prefill}
    assert {"logits", "kept_ivr", "present.0.key", "present.5.value"} <= outputs
    for c in prefill:
        assert c["verdict"] == "pass" and c["shape"] == c["reference_shape"]
        assert c["max_abs_diff"] <= (0.0 if c["output"].startswith("kept_") else 1e-4)
    tokens = [c for c in generate if c["output"] == "tokens[16]"]
    assert len(tokens) == 3 and all(c["shape"][1] == 16 and c["verdict"] == "pass" for c in tokens)
    assert any("text only" in c["case"] for c in tokens)

    root, cases = load_junit(junit_path)
    assert len(cases) == len(comparisons) and root.get("failures") == "0"
    assert not root.findall(".//failure")


def test_perturbed_weight_fails_and_names_the_difference(tmp_path):
    """lm_head scaled by 1.05 in the graphs' shared weights file: every logits comparison must fail, while
    kept indices (lm_head plays no part in selection) and greedy tokens (argmax is scale-free) still agree."""
    folder = copy_graphs(QWEN, tmp_path)
    shared = Manifest.load(folder)[DATA_FILES][DECODER_DATA]["tensors"]
    entry = next(t for name, t in shared.items() if name.endswith(("lm_head.weight", "lm_head.weight.T")))
    data = np.memmap(folder / DECODER_DATA, dtype=np.float32, mode="r+", offset=entry["offset"],
                     shape=tuple(entry["shape"]))
    data *= np.float32(1.05)
    data.flush()
    del data
    reseal(folder, DECODER_DATA)

    result, report_path, junit_path = run_check(folder, tmp_path)
    assert result.exit_code == 1, result.output
    assert "first difference: prefill [B=1 P=5 N=16 T=7] logits: max abs diff" in result.output
    report = json.loads(report_path.read_text())
    failed = [c for c in report["comparisons"] if c["verdict"] == "fail"]
    assert not report["passed"] and report["first_difference"].startswith("prefill [B=1 P=5 N=16 T=7] logits")
    assert {c["output"] for c in failed} == {"logits"} and len(failed) == 4
    assert all(c["max_abs_diff"] > 1e-3 for c in failed)
    root, cases = load_junit(junit_path)
    assert root.get("failures") == "4" and len(root.findall(".//failure")) == 4


def test_flipped_byte_is_refused_by_sha256(tmp_path):
    folder = copy_graphs(QWEN, tmp_path)
    data = bytearray((folder / "prefill.onnx").read_bytes())
    data[len(data) // 3] ^= 0x01
    (folder / "prefill.onnx").write_bytes(bytes(data))
    result, report_path, _ = run_check(folder, tmp_path)
    assert result.exit_code == 2
    assert "prefill.onnx does not match its sha256" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not report_path.exists()


def test_unloadable_graph_with_matching_sha256_is_a_user_error(tmp_path):
    folder = copy_graphs(QWEN, tmp_path)
    (folder / "decode.onnx").write_bytes(b"not an onnx model")
    reseal(folder, "decode.onnx")
    result, _, _ = run_check(folder, tmp_path)
    assert result.exit_code == 2 and "ONNX Runtime cannot load" in result.output


@pytest.mark.parametrize("edit,message", [
    ({"model": "qwen2.5-vl-13b"}, "unknown model 'qwen2.5-vl-13b'"),
    ({"model": "tiny-llava", "backbone": "qwen2_5_vl"}, "folder from another model"),
])
def test_manifest_of_unknown_or_other_model_is_refused(tmp_path, edit, message):
    folder = copy_graphs(QWEN, tmp_path)
    manifest = Manifest.load(folder, verify=False)
    manifest.update(edit)
    manifest.save()
    result, report_path, _ = run_check(folder, tmp_path)
    assert result.exit_code == 2, result.output
    assert message in result.output and not report_path.exists()


@pytest.mark.slow
def test_graph_of_another_model_is_refused(tmp_path):
    """tiny-llava's folder with tiny-qwen2.5-vl's prefill.onnx (resealed): same sizes, but M-RoPE positions."""
    folder = copy_graphs("tiny-llava", tmp_path)
    (folder / "prefill.onnx").write_bytes((exported_graphs(QWEN) / "prefill.onnx").read_bytes())
    reseal(folder, "prefill.onnx")
    result, _, _ = run_check(folder, tmp_path)
    assert result.exit_code == 2, result.output
    assert "position_ids rank 3 differs from tiny-llava's 2: graph from another model" in result.output


@pytest.mark.slow
def test_check_trt_backend_without_tensorrt_is_one_line(tmp_path):
    from halfv_export.engines.builder import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is importable here: the engine comparison runs in tests/engines")
    result = CliRunner().invoke(cli, ["check", "--graphs", str(exported_graphs("tiny-llava")), "--backend", "trt",
                                      "--engines", str(tmp_path / "engines")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: TensorRT is not importable") and result.stderr.count("\n") == 1


def test_greedy_tokens_may_part_only_at_a_near_tie_of_the_reference():
    from halfv_export.parity import token_comparison

    ref = np.array([[5, 6, 7, 8], [1, 2, 3, 4]])
    logits = np.zeros((2, 4, 10), dtype=np.float32)
    for row in range(2):
        for step in range(4):
            logits[row, step, ref[row, step]] = 1.0
    logits[1, 2, 9] = 1.0 - 0.01  # row 1, step 2: token 9 is 0.01 below the reference's pick
    assert token_comparison("c", ref.copy(), ref, logits, 0.05).passed
    ours = ref.copy()
    ours[1, 2:] = [9, 0]  # parts at the near-tie, anything may follow
    near = token_comparison("c", ours, ref, logits, 0.05)
    assert near.passed and "near-tie" in near.detail
    assert not token_comparison("c", ours, ref, logits, 1e-4).passed  # 0.01 is no tie at fp32's tolerance
    ours[0, 1] = 3  # row 0 parts where the reference had a clear winner
    far = token_comparison("c", ours, ref, logits, 0.05)
    assert not far.passed and "row 0 first differs at step 1" in far.detail
