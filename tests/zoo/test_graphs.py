"""The exported graphs of a trained zoo model answer test questions exactly as the PyTorch reference does.

Both shipped profiles calibrate to freeze SSR on the current weights (median layer-skip KL below 1e-3), so the
trained Qwen is also exported with its profile switched to top-k (the paper's Qwen mode, keeping the profile's
ssr_keep): the top-k branch stays checked on a trained model."""

from __future__ import annotations

import dataclasses

import pytest

from halfv_export.backbones import get_entry, load_backbone
from halfv_export.graphs.export import export_graphs
from halfv_export.core.plan import PruningPlan
from halfv_zoo.eval import evaluate_graphs

pytestmark = pytest.mark.zoo


@pytest.mark.parametrize("name,ssr_mode", [("shapes-llava", None), ("shapes-qwen2.5-vl", None),
                                           ("shapes-qwen2.5-vl", "topk")])
@pytest.mark.slow
def test_graphs_answer_like_the_reference(name, ssr_mode, tmp_path):
    bb = load_backbone(name)
    profile = get_entry(name).shipped_profile()
    if ssr_mode is not None:
        profile = dataclasses.replace(profile, ssr_mode=ssr_mode)
    export_graphs(bb, name, tmp_path / name, PruningPlan.halfv(profile), profile)
    assert (tmp_path / name / "tokenizer.json").is_file()  # the word tokenizer travels with the graphs
    row = evaluate_graphs(bb, name, tmp_path / name, 12)["results"][0]
    assert row["agreement_with_reference"] == 1.0
    assert row["accuracy"] == row["reference_accuracy"]
