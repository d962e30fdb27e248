"""`halfv-export eval` on a few test questions: valid JSON, a PNG, FLOPs speedups that follow the budgets."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from halfv_export.cli import cli
from halfv_export.backbones import get_entry
from halfv_zoo.eval import budget_profile, make_plan

pytestmark = pytest.mark.zoo

NAME = "shapes-llava"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    result = CliRunner().invoke(cli, ["eval", "--model", NAME, "--methods", "unpruned,halfv,fastv,random",
                                      "--keep", "0.5,0.125", "--samples", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_eval_writes_json_and_png(report):
    data = json.loads((report / "eval.json").read_text())
    assert data["model"] == NAME and data["samples"] == 6
    rows = {(r["method"], r["keep"]): r for r in data["results"]}
    assert set(rows) == {("unpruned", 1.0)} | {(m, k) for m in ("halfv", "fastv", "random") for k in (0.5, 0.125)}
    assert rows["unpruned", 1.0]["flops_speedup"] == 1.0
    for method in ("halfv", "fastv", "random"):
        assert 1.0 < rows[method, 0.5]["flops_speedup"] < rows[method, 0.125]["flops_speedup"]
    for row in data["results"]:
        assert 0.0 <= row["accuracy"] <= 1.0
    assert (report / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_layer_sweep_covers_every_pair_and_marks_the_calibrated_one(tmp_path):
    result = CliRunner().invoke(cli, ["eval", "--model", NAME, "--sweep-layers", "--samples", "4",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "sweep.json").read_text())
    layers = data["profile"]["num_layers"]
    pairs = [(r["ivr_layer"], r["ssr_layer"]) for r in data["results"]]
    assert pairs == [(i, s) for i in range(1, layers - 1) for s in range(i + 1, layers)]
    prof = get_entry(NAME).shipped_profile()
    assert [p for p, r in zip(pairs, data["results"]) if r["calibrated"]] == [(prof.ivr_layer, prof.ssr_layer)]
    # pruning earlier keeps fewer tokens for longer: the speedup falls as the IVR layer moves down
    first_ssr = {r["ivr_layer"]: r["flops_speedup"] for r in data["results"] if r["ssr_layer"] == layers - 1}
    assert list(first_ssr.values()) == sorted(first_ssr.values(), reverse=True)
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_profile_keeps_the_ssr_ratio():
    prof = get_entry("shapes-qwen2.5-vl").shipped_profile()
    variant = budget_profile(prof, prof.ivr_keep / 2)
    assert variant.ivr_keep == prof.ivr_keep / 2
    if prof.ssr_keep is not None:
        assert variant.ssr_keep == pytest.approx(prof.ssr_keep / 2)
    assert make_plan("unpruned", prof, 1.0) is None


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny-llava"], "zoo model"),
    (["--model", NAME, "--methods", "halfv,sparsevlm"], "unknown sparsevlm"),
    (["--model", NAME, "--keep", "0.5,2"], "(0, 1]"),
])
def test_eval_refuses_bad_input(args, message, tmp_path):
    result = CliRunner().invoke(cli, ["eval", *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "x").exists()
