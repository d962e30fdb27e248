"""Jetson bundles: the trtexec command lines parse, name only real graph inputs, keep min <= opt <= max,
stay within the manifest's visual-token range and TensorRT's TopK limit, and match the profile arithmetic."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess

import onnx
import pytest
from click.testing import CliRunner

from halfv_export.cli import cli
from halfv_export.deploy.jetson import JETSON_TARGETS, make_bundle, precision_flags
from halfv_export.engines import profiles as prof
from halfv_export.core.lint import check_topk_bound
from halfv_export.core.manifest import Manifest
from halfv_export.core.profile import Profile
from tests.runtime.exported import exported_graphs as exported

OPTIONS = dict(max_text=48, max_new_tokens=16)


def trtexec_lines(script: str) -> list[list[str]]:
    return [shlex.split(line) for line in script.splitlines() if line.startswith('"$TRTEXEC"')]


def parse_shapes(arg: str) -> dict:
    out = {}
    for item in arg.split(","):
        name, dims = item.rsplit(":", 1)
        out[name] = tuple(int(d) for d in dims.split("x"))
    return out


def graph_inputs(path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    return {vi.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                      for d in vi.type.tensor_type.shape.dim] for vi in model.graph.input}


@pytest.fixture(scope="module", params=["tiny-qwen2.5-vl", "tiny-llava"])
def graphs(request):
    return exported(request.param)


@pytest.mark.parametrize("target", list(JETSON_TARGETS))
@pytest.mark.slow_cases("tiny-llava")
def test_bundle_commands_match_manifest_and_graphs(graphs, target, tmp_path):
    out = tmp_path / "bundle"
    record = make_bundle(graphs, target, out, **OPTIONS)
    manifest = Manifest.load(out)  # the copies verify against the manifest's sha256
    expected, _ = prof.engine_profiles(manifest, prof.make_ranges(manifest, **OPTIONS))
    commands = trtexec_lines((out / "build_engines.sh").read_text())
    assert len(commands) == len(expected) == 3
    vt = manifest["visual_tokens"]
    for argv in commands:
        assert argv[0] == "$TRTEXEC"
        opts = dict(a[2:].split("=", 1) for a in argv[1:] if "=" in a)
        flags = {a for a in argv[1:] if "=" not in a}
        role = opts["saveEngine"].removeprefix("engines/").removesuffix(".plan")
        assert opts["onnx"] == manifest.graph(role)["file"]
        inputs = graph_inputs(out / opts["onnx"])
        lo, opt, hi = (parse_shapes(opts[k]) for k in ("minShapes", "optShapes", "maxShapes"))
        assert list(lo) == list(opt) == list(hi) == list(inputs)  # every input, nothing else
        for name, dims in inputs.items():
            assert len(lo[name]) == len(opt[name]) == len(hi[name]) == len(dims)
            assert all(a <= b <= c for a, b, c in zip(lo[name], opt[name], hi[name]))
            assert all(lo[name][i] == hi[name][i] == d for i, d in enumerate(dims) if isinstance(d, int))
            assert (lo[name], opt[name], hi[name]) == expected[role][name]
        if role == "prefill":
            n = [s["visual_embeds"][1] for s in (lo, opt, hi)]
            assert vt["min"] <= n[0] <= n[1] <= n[2] <= vt["max"]
            check_topk_bound(Profile.from_dict(manifest["profile"]), n[2])  # raises past 3840
        strongly = JETSON_TARGETS[target].strongly_typed_only or manifest["dtype"] != "fp32"
        assert flags == ({"--stronglyTyped"} if strongly else {"--fp16"}) | {"--skipInference"}
    assert record["build_commands"] == {r: a for r, a in zip(expected, commands)}
    for name in ("README.md", "run.sh", "bundle.json"):
        assert (out / name).is_file()
    assert json.loads((out / "bundle.json").read_text()) == record


def test_scripts_run_with_a_stand_in_trtexec(tmp_path):
    """bash runs both scripts; with TRTEXEC=echo each line prints back exactly the recorded argv."""
    out = tmp_path / "bundle"
    record = make_bundle(exported("tiny-qwen2.5-vl"), "jetson-thor", out, **OPTIONS)
    env = dict(os.environ, TRTEXEC=shutil.which("echo"))
    for script, key in (("build_engines.sh", "build_commands"), ("run.sh", "run_commands")):
        result = subprocess.run(["bash", str(out / script)], env=env, capture_output=True, text=True, check=True)
        assert [line.split(" ") for line in result.stdout.strip().splitlines()] == \
            [argv[1:] for argv in record[key].values()]
    assert (out / "engines").is_dir()


def test_precision_flags():
    orin, thor = JETSON_TARGETS["jetson-orin"], JETSON_TARGETS["jetson-thor"]
    assert precision_flags(orin, "fp32") == ["--fp16"]
    assert precision_flags(orin, "fp16") == ["--stronglyTyped"]
    assert precision_flags(thor, "fp32") == precision_flags(thor, "fp16") == ["--stronglyTyped"]


def test_pixel_range_narrows_the_visual_profile(tmp_path):
    record = make_bundle(exported("tiny-qwen2.5-vl"), "jetson-orin", tmp_path / "b", min_pixels=112 * 112,
                         max_pixels=224 * 224, **OPTIONS)
    visual = record["profiles"]["prefill"]["visual_embeds"]
    assert (visual["min"][1], visual["opt"][1], visual["max"][1]) == (16, (16 + 64) // 2, 64)


def test_bundle_refused_when_lint_fails(tmp_path):
    graphs = shutil.copytree(exported("tiny-qwen2.5-vl"), tmp_path / "graphs")
    manifest = Manifest.load(graphs)
    manifest["visual_tokens"]["max"] = 40000  # K of the IVR TopK would pass 3840
    manifest.save()
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["bundle", "--graphs", str(graphs), "--target", "jetson-orin", "--out", str(out)])
    assert result.exit_code == 2
    assert "do not pass the trt10 lint" in result.output and "exceeds TensorRT's TopK limit 3840" in result.output
    assert not out.exists()


@pytest.mark.slow
def test_cli_bundle(tmp_path):
    out = tmp_path / "thor"
    result = CliRunner().invoke(cli, ["bundle", "--graphs", str(exported("tiny-llava")), "--target", "jetson-thor",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "jetson-thor (JetPack 7, TensorRT 11)" in result.output and "--stronglyTyped" in result.output
    assert Manifest.load(out)["model"] == "tiny-llava"
