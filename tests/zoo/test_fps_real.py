"""fps coverage on real image features: the trained zoo models' IVR inputs on test questions, against a plain
float64 numpy farthest-point sampling with the same tie rule."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from halfv_export.backbones import get_entry, load_backbone
from halfv_export.method.decoder import prefill
from halfv_export.core.plan import PruningPlan
from halfv_export.method.selection import COVERAGE_TIE, anchor_relevance, fps_coverage, normalized_features
from halfv_zoo.eval import eval_questions, prepare_questions

pytestmark = pytest.mark.zoo

QUESTIONS = 24
ZOO = ("shapes-llava", "shapes-qwen2.5-vl")


@functools.lru_cache(maxsize=None)
def real_fps_inputs(name: str, count: int = QUESTIONS) -> list:
    """(features [1, N, D] float32, anchors [1, A], k) that select_ivr hands to fps on the first `count` test
    questions, at the shipped profile's IVR layer: the unpruned layers before it are the pruned prefill's."""
    bb = load_backbone(name)
    plan = PruningPlan.halfv(get_entry(name).shipped_profile())
    layer = plan.prune_layer
    out = []
    for q in prepare_questions(bb, name, eval_questions(count)):
        hidden = prefill(bb, q, None, collect_hidden=True).hidden  # hidden[l]: the input of layer l
        start, n = q.visual_start, q.visual_count
        with torch.no_grad():
            relevance = anchor_relevance(bb.layers[layer - 1], hidden[layer - 1], start, n, bb.head_dim)
            anchors = torch.topk(relevance, plan.anchor_count(n), dim=-1).indices
            features = normalized_features(bb.final_norm, hidden[layer], start, n)
        out.append((features, anchors, plan.kept_count(n)))
    return out


def numpy_fps(features: np.ndarray, anchors, k: int) -> list[int]:
    """Greedy farthest-point sampling in float64: next = lowest index within COVERAGE_TIE of the farthest."""
    f = features.astype(np.float64)
    pair = 1.0 - f @ f.T
    selected = np.zeros(len(f), dtype=bool)
    selected[list(anchors)] = True
    dist = pair[list(anchors)].min(axis=0)
    while selected.sum() < k:
        masked = np.where(selected, -np.inf, dist)
        u = int(np.flatnonzero(masked >= masked.max() - COVERAGE_TIE)[0])
        selected[u] = True
        dist = np.minimum(dist, pair[u])
    return np.flatnonzero(selected).tolist()


@pytest.mark.parametrize("name", ZOO)
def test_fps_equals_float64_numpy_fps_on_real_features(name):
    cases = real_fps_inputs(name)
    assert len(cases) >= 20
    for i, (features, anchors, k) in enumerate(cases):
        expected = numpy_fps(features[0].numpy(), anchors[0].tolist(), k)
        assert fps_coverage(features, anchors, k)[0].tolist() == expected, f"{name} test question {i}"
