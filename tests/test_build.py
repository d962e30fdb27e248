"""`halfv-export build` chains calibrate/export/check/engine/bench and prints one summary table."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from halfv_export.cli import cli


@pytest.mark.slow
def test_build_tiny_model_end_to_end(tmp_path):
    result = CliRunner().invoke(cli, ["build", "--model", "tiny-llava", "--out-root", str(tmp_path),
                                      "--bench-tokens", "32"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "IVR 2, SSR 4 (freeze)" in out
    assert "parity (ORT)  PASS" in out
    assert "TensorRT is not importable" in out or "built" in out
    assert "kept tokens   N=32 -> IVR 16 -> SSR 16" in out
    for name in ("vision.onnx", "embed.onnx", "prefill.onnx", "decode.onnx"):
        assert name in out and (tmp_path / "graphs" / "tiny-llava" / name).is_file()
    report = json.loads((tmp_path / "graphs" / "tiny-llava.parity.json").read_text())
    assert report["passed"]
    assert json.loads((tmp_path / "bench-out" / "tiny-llava" / "bench.json").read_text())["prefill"]


def test_build_unknown_model_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["build", "--model", "gpt-vision", "--out-root", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown model 'gpt-vision'") and result.stderr.count("\n") == 1


@pytest.mark.slow
def test_build_calibrates_when_no_shipped_profile_fits(tmp_path):
    """A 4-layer checkpoint of the tiny LLaVA architecture: the shipped 6-layer profile is refused, so build calibrates."""
    from halfv_export.backbones.registry import build_random, get_entry

    entry = get_entry("tiny-llava")
    config = entry.make_config()
    config.text_config.num_hidden_layers = 4
    build_random(entry, config=config).model.save_pretrained(tmp_path / "ckpt")
    result = CliRunner().invoke(cli, ["build", "--model", "tiny-llava", "--model-path", str(tmp_path / "ckpt"),
                                      "--out-root", str(tmp_path), "--bench-tokens", ""])
    assert result.exit_code == 0, result.output
    assert "4 layers; profile: calibrated" in result.stdout
    assert "parity (ORT)  PASS" in result.stdout
    assert (tmp_path / "calibration-out" / "tiny-llava.json").is_file()
    assert (tmp_path / "calibration-out" / "tiny-llava.png").is_file()
