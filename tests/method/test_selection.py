"""Selection primitives against brute-force definitions on hand-built features."""

from __future__ import annotations

import math

import torch

from halfv_export.method.selection import COVERAGE_TIE, fps_coverage, oneshot_coverage, sorted_topk


def circle_features(angles_deg):
    """Unit vectors in the plane: 1 - cos similarity is then 1 - cos(angle difference)."""
    rad = torch.tensor(angles_deg, dtype=torch.float32) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=-1)[None]


def brute_force_fps(features, anchors, k):
    """Greedy fps in Python floats: the lowest index within COVERAGE_TIE of the farthest distance."""
    f = features[0].double()
    selected = list(anchors)
    while len(selected) < k:
        dist = {u: min(1 - float(f[u] @ f[v]) for v in selected) for u in range(f.shape[0]) if u not in selected}
        best = max(dist.values())
        selected.append(min(u for u, d in dist.items() if d >= best - COVERAGE_TIE))
    return sorted(selected)


def test_fps_picks_farthest_points_greedily():
    feats = circle_features([0, 10, 20, 90, 100, 180, 185, 270])
    kept = fps_coverage(feats, torch.tensor([[0]]), 4)
    # from 0 deg: farthest is 180 (idx 5); then 90 and 270 tie at 90 deg from both -> lowest index (3)
    # then 270 (idx 7): its nearest selected point is 90 deg away, 100 is only 10 deg from 90 -> [0, 3, 5, 7]
    assert kept.tolist() == [[0, 3, 5, 7]]
    assert kept.tolist() == [brute_force_fps(feats, [0], 4)]


def test_fps_ties_only_within_the_tolerance():
    """Candidates closer than COVERAGE_TIE tie (lowest index); anything farther apart is a real decision."""
    # 1 - cos from the anchor at 0 deg: 70 deg -> 0.657980; +2e-5 deg -> +3.3e-7 (within the tolerance);
    # +0.004 deg -> +6.6e-5 (far beyond it: a real decision)
    tie = circle_features([0, 70.0, 70.00002, 35])
    assert fps_coverage(tie, torch.tensor([[0]]), 2).tolist() == [[0, 1]]
    farther = circle_features([0, 70.0, 70.004, 35])
    assert fps_coverage(farther, torch.tensor([[0]]), 2).tolist() == [[0, 2]]
    # after 0 and the farther point, 35 deg is the farthest left
    assert fps_coverage(farther, torch.tensor([[0]]), 3).tolist() == [[0, 2, 3]]
    for feats in (tie, farther):
        for k in (2, 3, 4):
            assert fps_coverage(feats, torch.tensor([[0]]), k).tolist() == [brute_force_fps(feats, [0], k)]


def test_fps_matches_brute_force_on_random_sets():
    gen = torch.Generator().manual_seed(3)
    for n, a, k in [(12, 1, 5), (30, 3, 10), (25, 2, 25)]:
        feats = torch.nn.functional.normalize(torch.randn(2, n, 8, generator=gen), dim=-1)
        anchors = torch.stack([torch.randperm(n, generator=gen)[:a] for _ in range(2)])
        kept = fps_coverage(feats, anchors, k)
        for row in range(2):
            assert kept[row].tolist() == brute_force_fps(feats[row:row + 1], anchors[row].tolist(), k)


def test_oneshot_keeps_anchors_and_least_similar():
    feats = circle_features([0, 5, 90, 175, 180, 60])
    kept = oneshot_coverage(feats, torch.tensor([[0]]), 3)
    # distances to anchor 0: 5 deg, 90, 175, 180, 60 -> two largest are idx 4 (180) and 3 (175)
    assert kept.tolist() == [[0, 3, 4]]


def test_sorted_topk_returns_ascending_indices():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2]])
    assert sorted_topk(scores, 2).tolist() == [[1, 3]]
