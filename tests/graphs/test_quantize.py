"""Weight-only int8/int4 graphs: ONNX Runtime's quantizer numbers in two graph forms, parity against the
reference holding the same dequantized weights, lint per TensorRT target, answers through `run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from halfv_export.cli import cli
from halfv_export.core.manifest import DECODER_ROLES, ROLES
from halfv_export.graphs.export import DECODER_DATA, export_graphs
from halfv_export.core.lint import lint_graphs
from halfv_export.graphs.quantize import SUFFIX_SCALES, DequantizedWeights, Quantization, dequantize
from halfv_export.core.manifest import DATA_FILES, Manifest
from halfv_export.core.plan import PruningPlan
from halfv_export.parity import check_graphs
from halfv_export.core.profile import shipped_profile
from halfv_export.runtime.vlm import VlmPipeline
from tests.conftest import TINY_IMAGES, tiny_backbone
from tests.runtime.exported import exported_graphs




def _export(name, folder, bits, fmt, block=32, roles=DECODER_ROLES):
    profile = shipped_profile(name)
    out = folder / f"{name}-int{bits}-{fmt}-{block}"
    export_graphs(tiny_backbone(name), name, out, PruningPlan.halfv(profile), profile, roles=roles,
                  quantization=Quantization(bits, block, fmt))
    return out


@pytest.fixture(scope="module")
def int4_qwen(tmp_path_factory):
    """tiny-qwen2.5-vl, int4 MatMulNBits, every graph (vision too, for `run`)."""
    return _export("tiny-qwen2.5-vl", tmp_path_factory.mktemp("int4"), 4, "nbits", roles=ROLES)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("block", [32, 128])
def test_both_forms_hold_the_same_rounded_weights(bits, block):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((256, 48)).astype(np.float32)
    out = {}
    for fmt in ("nbits", "qdq"):
        arrays = Quantization(bits, block, fmt).quantize(weight, np.float32)
        entry = {"bits": bits, "block_size": block, "format": fmt, "shape": [256, 48]}
        out[fmt] = dequantize(entry, {k: np.frombuffer(v.tobytes(), dtype=v.dtype) for k, v in arrays.items()})
        scales = arrays[SUFFIX_SCALES] if fmt == "qdq" else arrays[SUFFIX_SCALES].T  # [blocks, N]
        step = np.repeat(scales, block, axis=0)
        error = np.abs(out[fmt] - weight) / np.abs(step)
        assert error.max() <= 1 + 1e-5  # a step at most (the clipped end of the symmetric range)
        assert np.mean(error <= 0.5 + 1e-5) > 0.99  # round to nearest everywhere else
    np.testing.assert_array_equal(out["nbits"], out["qdq"])


@pytest.mark.parametrize("name,bits,fmt", [
    ("tiny-qwen2.5-vl", 4, "nbits"),
    pytest.param("tiny-llava", 8, "nbits", marks=pytest.mark.slow),
    pytest.param("tiny-qwen2.5-vl", 8, "qdq", marks=pytest.mark.slow),
    pytest.param("tiny-llava", 4, "qdq", marks=pytest.mark.slow)])
@pytest.mark.slow
def test_quantized_graphs_pass_check_against_the_dequantized_reference(name, bits, fmt, tmp_path, int4_qwen):
    folder = int4_qwen if (name, bits, fmt) == ("tiny-qwen2.5-vl", 4, "nbits") else _export(name, tmp_path, bits, fmt)
    manifest = Manifest.load(folder)
    record = manifest["quantization"]
    assert (record["bits"], record["format"], record["block_size"]) == (bits, fmt, 32)
    layers = tiny_backbone(name).num_layers
    assert len(record["weights"]) == 7 * layers + 1  # q, k, v, o, gate, up, down per layer, and lm_head
    ops = {n.op_type for role in ("prefill", "decode") for n in onnx.load(manifest.path(role),
                                                                            load_external_data=False).graph.node}
    assert ("MatMulNBits" in ops) == (fmt == "nbits") and ("DequantizeLinear" in ops) == (fmt == "qdq")
    full = Manifest.load(exported_graphs(name))
    assert manifest[DATA_FILES][DECODER_DATA]["bytes"] < full[DATA_FILES][DECODER_DATA]["bytes"]
    report = check_graphs(folder)
    assert report.passed, report.first_failure().describe()
    assert max(c.max_abs_diff or 0 for c in report.comparisons if c.output == "logits") < 1e-4
    assert {c.case for c in report.comparisons if c.output == "kept_ivr"}  # kept indices compared exactly



@pytest.mark.slow
def test_the_reference_really_uses_the_dequantized_weights(tmp_path, int4_qwen):
    """Against the float reference the int4 graphs differ: check's tight agreement comes from the
    dequantized weights, not from a loose tolerance."""
    folder = Path(shutil.copytree(int4_qwen, tmp_path / "copy"))
    manifest = Manifest.load(folder)
    source = DequantizedWeights(None, manifest)
    key = next(iter(manifest["quantization"]["weights"]))
    original = tiny_backbone("tiny-qwen2.5-vl").model.state_dict()[key].numpy()
    restored = source.dequantized(key)
    assert restored.shape == original.shape
    assert 0 < np.abs(restored - original).max() < 0.5 * np.abs(original).max()
    manifest["quantization"] = None  # the same graphs judged against the float reference
    manifest.save()
    assert not check_graphs(folder).passed


@pytest.mark.slow
def test_quantized_graphs_answer_through_run(tmp_path, int4_qwen):
    name, folder = "tiny-qwen2.5-vl", int4_qwen
    from PIL import Image

    image = tmp_path / "image.png"
    Image.new("RGB", TINY_IMAGES[name][0], (200, 40, 40)).save(image)
    result = CliRunner().invoke(cli, ["run", "--graphs", str(folder), "--image", str(image), "--prompt", "color?",
                                      "--max-new-tokens", "4", "--stats"])
    assert result.exit_code == 0, result.output
    assert "visual tokens: 16 -> IVR" in result.output
    pipeline = VlmPipeline(folder)
    assert pipeline.decoder.manifest["quantization"]["bits"] == 4


@pytest.mark.slow
def test_lint_per_target(tmp_path, int4_qwen):
    int4_qdq = _export("tiny-qwen2.5-vl", tmp_path, 4, "qdq")
    int8_qdq = _export("tiny-qwen2.5-vl", tmp_path, 8, "qdq", roles=("prefill",))
    nbits = int4_qwen
    for target in ("trt10", "trt11"):
        assert lint_graphs(int4_qdq, target).ok, target
    assert lint_graphs(int8_qdq, "trt11").ok
    trt10 = lint_graphs(int8_qdq, "trt10")
    assert not trt10.ok and all("blocked DequantizeLinear of int8" in f.message for f in trt10.errors)
    assert any("opset 21" in f.message for f in lint_graphs(int4_qdq, "trt10").warnings)
    errors = lint_graphs(nbits, "trt11").errors
    assert errors and all("MatMulNBits" in f.message and "--weights-format qdq" in f.message for f in errors)
    # the TensorRT graphs keep the asked opset where no weight is quantized
    assert onnx.load(int4_qdq / "embed.onnx", load_external_data=False).opset_import[0].version == 20


@pytest.mark.slow
def test_export_cli_quantizes_and_refuses_a_quantized_checkpoint(tmp_path):
    runner = CliRunner()
    out = tmp_path / "graphs"
    result = runner.invoke(cli, ["export", "--model", "tiny-llava", "--weights", "int4", "--block-size", "64",
                                 "--roles", "embed,prefill", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    assert set(manifest["graphs"]) == {"embed", "prefill"}
    assert manifest["quantization"]["block_size"] == 64
    checkpoint = tmp_path / "awq"
    tiny_backbone("tiny-llava").model.save_pretrained(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (checkpoint / "config.json").write_text(json.dumps(config))
    result = runner.invoke(cli, ["export", "--model", "tiny-llava", "--model-path", str(checkpoint), "--weights",
                                 "int4", "--out", str(tmp_path / "twice")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {checkpoint} holds already quantized weights (awq): halfv-export reads float checkpoints "
        f"(export --weights int8/int4 quantizes them)"]
    assert not (tmp_path / "twice").exists()
    shutil.rmtree(checkpoint)


@pytest.mark.slow
def test_short_check_for_full_size_models(tmp_path, int4_qwen):
    """--max-batch 1 --new-tokens 2: what scripts/full-scale.sh runs at 7B, on the tiny model."""
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["check", "--graphs", str(int4_qwen), "--max-batch", "1", "--new-tokens", "2",
                                      "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["dtype"] == "fp32-quantized" and report["tolerances"] == {"atol": 1e-3, "rtol": 1e-3}
    assert {c["case"].split()[0] for c in report["comparisons"]} == {"B=1"}
    visual = {c["case"].split()[2] for c in report["comparisons"] if c["kind"] == "prefill"}
    assert len(visual) == 2  # two visual-token counts


@pytest.mark.slow
def test_one_shot_run_answers_like_the_resident_pipeline(tmp_path, int4_qwen):
    from PIL import Image

    image = Image.new("RGB", TINY_IMAGES["tiny-qwen2.5-vl"][1], (30, 160, 60))
    resident = VlmPipeline(int4_qwen).answer(image, "what?", 5)
    one_shot = VlmPipeline(int4_qwen, one_shot=True)
    assert one_shot._vision is None and one_shot._decoder is None  # nothing loaded before the request
    assert one_shot.answer(image, "what?", 5).tokens == resident.tokens
