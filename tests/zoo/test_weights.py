"""The committed zoo weights load through the registry, reach their recorded accuracy, and use the image.

The issue's target is >= 90% unpruned test accuracy for both models (README "Trained shapes models" for the
measured figures). The recorded accuracy is re-measured on a fixed subset, with a clear margin over the best
answer a model blind to the image can give (the most common answer of each question kind).
"""

from __future__ import annotations

import json

import pytest

from halfv_export.backbones import load_backbone
from halfv_zoo.card import SUBSET
from halfv_zoo.eval import accuracy, eval_questions, reference_answers
from halfv_zoo.models import weights_dir

pytestmark = pytest.mark.zoo

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
    assert measured >= blind_accuracy(samples) + 0.15


TARGET = 0.90  # the unpruned test accuracy target, on the 300 test questions zoo card records


@pytest.mark.parametrize("name", ZOO)
def test_committed_weights_meet_the_accuracy_target(name):
    recorded = json.loads((weights_dir(name) / "accuracy.json").read_text())
    assert recorded["samples"] >= 300 and recorded["split"] == "test"
    assert recorded["accuracy"] >= TARGET


def blind_accuracy(samples) -> float:
    """Accuracy of answering each question kind with its most common answer: all the text alone tells."""
    from collections import Counter

    by_kind = {}
    for s in samples:
        by_kind.setdefault(s.question.kind, Counter())[s.question.answer] += 1
    return sum(c.most_common(1)[0][1] for c in by_kind.values()) / len(samples)
