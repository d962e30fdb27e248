"""The ONNX translation of halfv::fps_coverage equals the eager op, ties included, in ONNX Runtime."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from halfv_export.graphs.export import check_graph
from halfv_export.graphs.fps import translation_table
from halfv_export.method.selection import fps_coverage
from tests.zoo.test_fps_real import ZOO, numpy_fps, real_fps_inputs


DIM = 8  # the feature width is a static dim of the exported graph


class FpsOnly(torch.nn.Module):
    """The op alone; k comes from the length of `budget`, so it stays symbolic like in the decoder."""

    def forward(self, features, anchors, budget):
        return fps_coverage(features, anchors, budget.shape[0])


def export_fps(folder, dim: int):
    """The op alone exported for features of width `dim`: (ONNX model, ONNX Runtime session)."""
    args = (torch.nn.functional.normalize(torch.randn(2, 12, dim), dim=-1), torch.tensor([[0, 3, 5], [1, 2, 7]]),
            torch.zeros(6))
    program = torch.onnx.export(FpsOnly().eval(), args, dynamo=True, opset_version=20, verbose=False,
                                input_names=["features", "anchors", "budget"],
                                dynamic_shapes=({0: "batch", 1: "n"}, {0: "batch", 1: "a"}, {0: "k"}),
                                custom_translation_table=translation_table())
    check_graph(program.model, "fps")
    path = folder / "fps.onnx"
    program.save(path)
    onnx.checker.check_model(str(path), full_check=True)
    return onnx.load(str(path)), ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return export_fps(tmp_path_factory.mktemp("fps"), DIM)


def run(sess, features, anchors, k):
    return sess.run(None, {"features": features.numpy(), "anchors": anchors.numpy(),
                           "budget": np.zeros(k, dtype=np.float32)})[0]


def random_case(gen, batch, n, a, k):
    features = torch.nn.functional.normalize(torch.randn(batch, n, DIM, generator=gen), dim=-1)
    anchors = torch.stack([torch.randperm(n, generator=gen)[:a] for _ in range(batch)])
    return features, anchors, k


@pytest.mark.parametrize("batch,n,a,k", [(1, 16, 2, 8), (2, 24, 3, 12), (3, 40, 1, 30), (2, 9, 4, 4), (2, 7, 1, 7)])
def test_translation_equals_eager_op(session, batch, n, a, k):
    _, sess = session
    features, anchors, k = random_case(torch.Generator().manual_seed(n), batch, n, a, k)
    got = run(sess, features, anchors, k)
    assert got.shape == (batch, k)
    np.testing.assert_array_equal(got, fps_coverage(features, anchors, k).numpy())


def test_ties_go_to_the_lowest_index_like_torch_argmax(session):
    """Axis vectors make every distance exactly 0 or 1: each step is a tie among many tokens."""
    _, sess = session
    n, axes = 20, 5
    features = torch.eye(DIM)[torch.arange(n) % axes][None].repeat(2, 1, 1)
    anchors = torch.tensor([[7], [0]])
    got = run(sess, features, anchors, 6)
    expected = fps_coverage(features, anchors, 6).numpy()
    np.testing.assert_array_equal(got, expected)
    # from anchor 7 (axis 2): axes 0, 1, 3, 4 first appear at 0, 1, 3, 4; then all distances are 0 -> index 2
    assert got[0].tolist() == [0, 1, 2, 3, 4, 7]


def test_near_duplicates_pick_the_same_token_as_torch(session):
    """Background-like tokens: one direction plus 1e-6 noise, so their distances to the shape tokens differ by
    ~1e-6 * 1, about the float32 difference between torch and ONNX Runtime matmuls: within COVERAGE_TIE they tie
    and both sides keep the lowest index."""
    _, sess = session
    gen = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(DIM, generator=gen), dim=0)
    shape = torch.nn.functional.normalize(torch.randn(4, DIM, generator=gen), dim=-1)
    noise = 1e-7 * torch.randn(2, 40, DIM, generator=gen)
    features = torch.nn.functional.normalize(torch.cat([shape[None].repeat(2, 1, 1), base + noise], dim=1), dim=-1)
    anchors = torch.tensor([[0, 1], [2, 3]])
    got = run(sess, features, anchors, 12)
    np.testing.assert_array_equal(got, fps_coverage(features, anchors, 12).numpy())
    # after the four shape tokens every background token is the same distance away: lowest indices win
    assert got[0].tolist() == list(range(12))


def test_gaps_beyond_the_tolerance_are_decisions(session):
    """Two tokens 3e-5 apart in distance from the anchors: both sides pick the farther one, as exact fps does
    (rounding distances to a 2^-12 grid, as an earlier version did, would tie them and keep the lower index)."""
    _, sess = session
    angles = torch.tensor([0.0, 70.0, 70.002, 150.0, 150.0015]) * math.pi / 180
    plane = torch.stack([angles.cos(), angles.sin()], dim=-1)
    features = torch.cat([plane, torch.zeros(5, DIM - 2)], dim=-1)[None].repeat(2, 1, 1)
    anchors = torch.tensor([[0], [3]])
    got = run(sess, features, anchors, 3)
    np.testing.assert_array_equal(got, fps_coverage(features, anchors, 3).numpy())
    # from 0 deg: 150.0015 is the farthest (by 1.3e-5 over 150), then 70.002 beats 70 by 3.3e-5
    assert got[0].tolist() == [0, 2, 4]
    # from 150 deg: 0 deg, then 70.002 again (its nearest selected point is 0 deg, 3.3e-5 farther than 70's)
    assert got[1].tolist() == [0, 2, 3]


def test_loop_carries_state_only_and_no_nonzero(session):
    model, _ = session
    ops = [node.op_type for node in model.graph.node]
    assert "NonZero" not in ops
    loops = [node for node in model.graph.node if node.op_type == "Loop"]
    assert len(loops) == 1
    body = next(attr.g for attr in loops[0].attribute if attr.name == "body")
    carried = len(loops[0].input) - 2
    assert len(body.output) == 1 + carried, "no scan outputs"
    assert carried == 2  # the selected mask and the min-distance vector
    topk = [node for node in model.graph.node if node.op_type == "TopK"]
    assert topk and all(next(a.i for a in node.attribute if a.name == "sorted") == 1 for node in topk)


@pytest.mark.slow
@pytest.mark.zoo
@pytest.mark.parametrize("name", ZOO)
def test_translation_equals_float64_fps_on_real_features(name, tmp_path):
    """The trained models' IVR features on test questions: ONNX Runtime keeps what float64 numpy fps keeps."""
    cases = real_fps_inputs(name)
    _, sess = export_fps(tmp_path, cases[0][0].shape[-1])
    for i, (features, anchors, k) in enumerate(cases):
        got = run(sess, features, anchors, k)[0].tolist()
        assert got == numpy_fps(features[0].numpy(), anchors[0].tolist(), k), f"{name} test question {i}"
