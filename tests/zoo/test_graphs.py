"""The exported graphs of a trained zoo model answer test questions exactly as the PyTorch reference does."""

from __future__ import annotations

import pytest

from halfv_export.backbones import load_backbone
from halfv_export.graphs.export import export_graphs
from halfv_export.method.plan import PruningPlan
from halfv_export.profile import shipped_profile
from halfv_export.zoo.eval import evaluate_graphs


@pytest.mark.parametrize("name", ["shapes-llava", "shapes-qwen2.5-vl"])
def test_graphs_answer_like_the_reference(name, tmp_path):
    bb = load_backbone(name)
    profile = shipped_profile(name)
    export_graphs(bb, name, tmp_path / name, PruningPlan.halfv(profile), profile)
    assert (tmp_path / name / "tokenizer.json").is_file()  # the word tokenizer travels with the graphs
    row = evaluate_graphs(bb, name, tmp_path / name, 12)["results"][0]
    assert row["agreement_with_reference"] == 1.0
    assert row["accuracy"] == row["reference_accuracy"]
