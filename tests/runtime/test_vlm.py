"""Image file in, tokens out: the ONNX Runtime pipeline equals the PyTorch reference for each tiny family."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from halfv_export.calibration.data import make_batch, synthetic_image
from halfv_export.cli import cli
from halfv_export.method import PruningPlan, generate
from halfv_export.core.profile import shipped_profile
from halfv_export.runtime.vlm import VlmPipeline
from tests.conftest import TINY, tiny_backbone
from tests.runtime.exported import exported_graphs

PROMPT = "What colour is the largest shape?"


@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow_cases("tiny-llava")
def test_image_to_tokens_equals_reference(name, tmp_path):
    image = synthetic_image(5)
    path = tmp_path / "image.png"
    image.save(path)
    answer = VlmPipeline(exported_graphs(name)).answer(str(path), PROMPT, max_new_tokens=10)
    bb = tiny_backbone(name)
    profile = shipped_profile(name)
    reference, result = generate(bb, bb.prepare(make_batch(bb, image, PROMPT)), PruningPlan.halfv(profile), 10,
                                 eos_token_id=bb.text_config.eos_token_id)
    assert answer.tokens == reference[0].tolist()
    assert answer.stats["kept"]["ivr"] == result.kept_ivr.shape[1]
    assert answer.stats["kv_lengths"] == result.kv_lengths


@pytest.mark.slow
def test_run_command_prints_answer_and_stats(tmp_path):
    path = tmp_path / "image.png"
    synthetic_image(1).save(path)
    result = CliRunner().invoke(cli, ["run", "--graphs", str(exported_graphs("tiny-llava")), "--image", str(path),
                                      "--prompt", PROMPT, "--max-new-tokens", "4", "--stats"])
    assert result.exit_code == 0, result.output
    assert "visual tokens: 16 -> IVR 8 -> SSR 8" in result.stdout
    assert "KV cache after prefill" in result.stdout


@pytest.mark.parametrize("content,message", [(b"", "empty"), (b"not an image", "")])
@pytest.mark.slow
def test_run_refuses_bad_images(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    result = CliRunner().invoke(cli, ["run", "--graphs", str(exported_graphs("tiny-llava")), "--image", str(path),
                                      "--prompt", PROMPT])
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert message in result.stderr


@pytest.mark.slow
def test_run_refuses_an_image_above_the_pixel_limit(tmp_path):
    from PIL import Image

    path = tmp_path / "huge.png"
    Image.new("RGB", (9000, 9000)).save(path)
    result = CliRunner().invoke(cli, ["run", "--graphs", str(exported_graphs("tiny-llava")), "--image", str(path),
                                      "--prompt", PROMPT])
    assert result.exit_code == 2 and "pixel" in result.stderr


def test_vlm_pipeline_imports_no_torch():
    code = ("import sys, halfv_export.runtime.vlm; "
            "bad = [m for m in ('torch', 'transformers', 'halfv_export.method', 'halfv_export.backbones') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_visual_tokens_outside_the_manifest_range_are_refused(tmp_path):
    from halfv_export.core.manifest import Manifest
    from tests.runtime.exported import copy_graphs

    folder = copy_graphs("tiny-qwen2.5-vl", tmp_path)
    manifest = Manifest.load(folder)
    manifest["visual_tokens"]["max"] = 20  # the 112x168 image below gives 24 visual tokens
    manifest.save()
    path = tmp_path / "image.png"
    synthetic_image(2).resize((168, 112)).save(path)
    result = CliRunner().invoke(cli, ["run", "--graphs", str(folder), "--image", str(path), "--prompt", PROMPT])
    assert result.exit_code == 2
    assert "24 visual tokens is outside the range" in result.stderr and result.stderr.count("\n") == 1
