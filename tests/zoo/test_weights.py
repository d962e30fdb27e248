"""The committed zoo weights load through the registry and reach their recorded test accuracy."""

from __future__ import annotations

import json

import pytest

from halfv_export.backbones import load_backbone
from halfv_export.zoo.card import SUBSET
from halfv_export.zoo.eval import accuracy, eval_questions, reference_answers
from halfv_export.zoo.models import weights_dir

ZOO = ["shapes-qwen2.5-vl", "shapes-llava"]


@pytest.mark.parametrize("name", ZOO)
def test_committed_weights_reach_the_recorded_accuracy(name):
    folder = weights_dir(name)
    recorded = json.loads((folder / "accuracy.json").read_text())
    assert (folder / "MODEL_CARD.md").is_file()
    bb = load_backbone(name)  # no path: the registry finds the committed folder
    assert bb.model.name_or_path == str(folder)
    samples = eval_questions(SUBSET)
    measured = accuracy(samples, reference_answers(bb, name, samples, None))
    assert abs(measured - recorded["subset_accuracy"]) <= 0.01
