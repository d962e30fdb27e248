"""The calibration pass end to end: `calibrate()` on the tiny models and the `halfv-export calibrate` command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

import halfv_export.calibration.run as run_module
from halfv_export.calibration.data import synthetic_image, synthetic_samples
from halfv_export.calibration.run import calibrate, write_outputs
from halfv_export.calibration.stages import Stages
from halfv_export.cli import cli
from halfv_export.core.errors import UserError
from halfv_export.core.profile import Profile, shipped_profile
from tests.conftest import TINY, tiny_backbone

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- calibrate() ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llava_profile():
    return calibrate(tiny_backbone("tiny-llava"), "tiny-llava", synthetic_samples(3), k=16, source="test")


def test_profile_records_curves_layers_and_provenance(tiny_llava_profile):
    prof, shipped = tiny_llava_profile, shipped_profile("tiny-llava")
    cal = prof.calibration
    assert (prof.backbone, prof.num_layers, prof.model, prof.source) == ("llava", 6, "tiny-llava", "calibrated")
    assert (prof.ivr_keep, prof.anchor_share) == (shipped.ivr_keep, shipped.anchor_share)
    assert len(cal["tme"]["visual"]) == len(cal["tme"]["text"]) == len(cal["tme"]["visual_smoothed"]) == 7
    assert cal["tme"]["k"] == 16
    assert cal["samples"] == {"count": 3, "source": "test", "visual_tokens": [16, 16, 16]}
    assert cal["versions"]["transformers"] and cal["versions"]["torch"]
    assert cal["probe"]["layers"] == list(range(prof.ssr_layer, 5))
    assert len(cal["probe"]["kl"]) == len(cal["probe"]["layers"])
    Profile.from_dict(json.loads(json.dumps(prof.to_dict())))  # JSON-clean and valid


@pytest.fixture
def pinned_stages(monkeypatch):
    real = run_module.choose_stages

    def pinned(curve, layers):
        return Stages(1, 2, real(curve, layers).smoothed)
    monkeypatch.setattr(run_module, "choose_stages", pinned)


@pytest.mark.usefixtures("pinned_stages")
@pytest.mark.slow
def test_probe_drives_the_mode_and_topk_gets_an_ssr_keep():
    # Pinned stages (1, 2): the probe measures layers 2..4. Random tiny weights otherwise put the TME
    # trough at the last layer, where there is nothing to probe.
    bb = tiny_backbone("tiny-llava")
    lenient = calibrate(bb, "tiny-llava", synthetic_samples(2), kl_threshold=1.0)
    kls = lenient.calibration["probe"]["kl"]
    assert lenient.calibration["probe"]["layers"] == [2, 3, 4] and all(v > 0 for v in kls)
    assert lenient.ssr_mode == "freeze" and lenient.ssr_keep is None
    strict = calibrate(bb, "tiny-llava", synthetic_samples(2), kl_threshold=min(kls) / 2)
    assert strict.calibration["probe"]["kl"] == pytest.approx(kls)
    # The shipped tiny-llava profile freezes, so topk borrows Qwen's 5% (within ivr_keep).
    assert strict.ssr_mode == "topk" and strict.ssr_keep == 0.05
    assert "ssr_keep 0.05" in strict.calibration["ratios_from"]


def test_bad_arguments():
    bb = tiny_backbone("tiny-llava")
    with pytest.raises(UserError, match="at least one sample"):
        calibrate(bb, "tiny-llava", [])
    with pytest.raises(UserError, match="--k"):
        calibrate(bb, "tiny-llava", synthetic_samples(1), k=0)


def test_outputs_are_written_together_or_not_at_all(tiny_llava_profile, tmp_path, monkeypatch):
    png = write_outputs(tiny_llava_profile, tmp_path / "out" / "p.json")
    assert png == tmp_path / "out" / "p.png" and png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as img:
        assert img.width > 400 and img.height > 400
    assert Profile.load(tmp_path / "out" / "p.json") == tiny_llava_profile
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.json", "p.png"]

    def broken(profile, path):
        raise RuntimeError("plot failed")
    monkeypatch.setattr(run_module, "plot_profile", broken)
    with pytest.raises(RuntimeError):
        write_outputs(tiny_llava_profile, tmp_path / "fail" / "p.json")
    assert list((tmp_path / "fail").iterdir()) == []
    with pytest.raises(UserError, match="must name the profile JSON"):
        write_outputs(tiny_llava_profile, tmp_path / "p.png")


# -- the command ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    runner = CliRunner()
    out = {}
    for name in TINY:
        path = root / name / "profile.json"
        out[name] = (path, runner.invoke(cli, ["calibrate", "--model", name, "--samples", "2", "--k", "16",
                                               "--out", str(path)]))
    return out


@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow
def test_cli_writes_a_valid_profile_and_plot(cli_runs, name):
    path, result = cli_runs[name]
    assert result.exit_code == 0, result.output
    prof = Profile.load(path)
    prof.check_backbone(tiny_backbone(name).family, 6, name)
    assert prof.source == "calibrated" and prof.calibration["samples"]["count"] == 2
    assert prof.calibration["samples"]["source"] == "synthetic (seed 0)"
    assert path.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir()) == ["profile.json", "profile.png"]
    assert f"ivr_layer {prof.ivr_layer}, ssr_layer {prof.ssr_layer}, ssr_mode {prof.ssr_mode}" in result.stdout
    assert result.stdout.strip().splitlines()[-2:] == [f"profile: {path}", f"plot: {path.with_suffix('.png')}"]
    assert "calibrate: TME curves 2/2" in result.stderr


def test_cli_default_output_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["calibrate", "--model", "tiny-llava", "--samples", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "calibration-out").iterdir()) == ["tiny-llava.json", "tiny-llava.png"]


def data_folder(root, lines):
    root.mkdir()
    for i in range(2):
        synthetic_image(10 + i).save(root / f"img{i}.png")
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_cli_with_a_data_folder(tmp_path):
    folder = data_folder(tmp_path / "data", [json.dumps({"image": f"img{i}.png", "prompt": f"prompt {i}"})
                                             for i in range(2)])
    out = tmp_path / "out" / "p.json"
    result = CliRunner().invoke(cli, ["calibrate", "--model", "tiny-llava-next", "--data", str(folder),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    samples = Profile.load(out).calibration["samples"]
    assert samples["count"] == 2 and samples["source"] == f"folder {folder}"


@pytest.mark.parametrize("lines,remove,match", [
    (['{"image": "img0.png", "prompt": "a"}', '{"image": "img1.png" "prompt": "b"}'], None,
     "prompts.jsonl line 2: not valid JSON"),
    (['{"image": "img0.png", "prompt": "a"}', '{"image": "gone.png", "prompt": "b"}'], None,
     "prompts.jsonl line 2: image 'gone.png' not found"),
    (['{"image": "img0.png", "prompt": "a"}'], "prompts.jsonl", "prompts.jsonl not found"),
])
def test_cli_with_a_broken_data_folder(tmp_path, lines, remove, match):
    folder = data_folder(tmp_path / "data", lines)
    if remove:
        (folder / remove).unlink()
    out = tmp_path / "out" / "p.json"
    result = CliRunner().invoke(cli, ["calibrate", "--model", "tiny-qwen2.5-vl", "--data", str(folder),
                                      "--out", str(out)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: ") and match in result.output
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.mark.parametrize("args,match", [
    (["--samples", "0"], "--samples"),
    (["--samples", "-3"], "--samples"),
    (["--k", "0"], "--k"),
    (["--kl-threshold", "0"], "--kl-threshold"),
    (["--out", "x.png"], "must name the profile JSON"),
])
def test_cli_rejects_bad_options(tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["calibrate", "--model", "tiny-llava", *args])
    assert result.exit_code == 2
    assert match in result.output
    assert list(tmp_path.iterdir()) == []
