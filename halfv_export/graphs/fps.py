"""ONNX translation of the `halfv::fps_coverage` custom op (exact HalfV coverage, greedy FPS).

The eager op (method/selection.py) and this function are the two sides of one boundary: the exporter
maps the op to this onnxscript function through `custom_translation_table`, then the function is
inlined into the graph (graphs/export.py).

    features [B,N,D] --MatMul(features^T)--(1 - sim)--> pair [B,N,N]   (all distances, once)
    pair --Gather(anchor rows)--ReduceMin-------------> dist [B,N]
    anchors  [B,A]   --Equal(range N)--ReduceMax------> selected [B,N]
                       (anchors' own dist set to NEG)
    Loop (trip count K - A; carries selected, dist; NO scan outputs, as TensorRT requires):
        near = dist >= ReduceMax(dist) - COVERAGE_TIE        (the candidates that tie with the farthest)
        u    = ArgMax(Where(near, N - index, 0))             (the lowest index among them: a unique maximum,
                                                              so no backend's ArgMax tie order matters)
        row  = pair[u]                     (a Gather: no per-step matrix-vector product)
        selected |= (range N == u)
        dist = Where(selected, NEG, Min(dist, row))
    kept = TopK(selected * N - index, K, sorted)  -> the K selected indices in ascending order
                                                    (no NonZero: TensorRT has no dynamic-shape NonZero)

Why the whole distance matrix up front: a per-step `features . features[u]` reads all N x D features
K - A times (memory-bound; it made fps 12-25% slower than the oracle in `bench`), while one GEMM plus a
row Gather per step costs N x N floats. That is 1/heads of what every attention layer of the same
prefill already holds for its scores, so it does not change the graph's peak memory class.
"""

from __future__ import annotations

import onnxscript
from onnxscript import opset18 as op
from onnxscript.onnx_types import FLOAT, INT64

from ..method.selection import COVERAGE_TIE

# Stands for the eager op's -inf on already selected tokens. Cosine distances lie in [0, 2], so any
# value below 0 gives the same ArgMax; a finite one keeps fp16 builders (TensorRT) free of inf.
NEG = -4.0


@onnxscript.script()
def fps_coverage_onnx(features: FLOAT, anchors: INT64, k: INT64) -> INT64:
    n_1d = op.Shape(features, start=1, end=2)
    a_1d = op.Shape(anchors, start=1, end=2)
    batch_1d = op.Shape(features, start=0, end=1)
    index = op.Range(op.Constant(value_int=0), op.Squeeze(n_1d), op.Constant(value_int=1))  # [N]
    index_row = op.Unsqueeze(index, op.Constant(value_ints=[0]))  # [1, N]
    neg = op.Constant(value_float=NEG)
    one = op.Constant(value_float=1.0)
    tie = op.Constant(value_float=COVERAGE_TIE)
    zero = op.Constant(value_float=0.0)
    # candidates score N - i (> 0, a unique maximum at the lowest index), the rest 0
    lowest_first = op.Sub(op.Cast(n_1d, to=1), op.Cast(index_row, to=1))  # [1, N]

    # all pairwise distances once; every token's distance to its nearest anchor; anchors first
    pair = op.Sub(one, op.MatMul(features, op.Transpose(features, perm=[0, 2, 1])))  # [B, N, N]
    anchor_rows = op.Expand(op.Unsqueeze(anchors, op.Constant(value_ints=[2])),
                            op.Concat(batch_1d, a_1d, n_1d, axis=0))
    dist0 = op.ReduceMin(op.GatherElements(pair, anchor_rows, axis=1), op.Constant(value_ints=[1]),
                         keepdims=0)  # [B, N]
    hits = op.Equal(op.Unsqueeze(anchors, op.Constant(value_ints=[2])),
                    op.Unsqueeze(index_row, op.Constant(value_ints=[0])))  # [B, A, N]
    selected = op.Cast(op.ReduceMax(op.Cast(hits, to=1), op.Constant(value_ints=[1]), keepdims=0), to=9)
    dist = op.Where(selected, neg, dist0)

    trips = op.Squeeze(op.Sub(op.Reshape(k, op.Constant(value_ints=[1])), a_1d))
    for _ in range(trips):
        best = op.ReduceMax(dist, op.Constant(value_ints=[1]), keepdims=1)  # [B, 1]
        near = op.GreaterOrEqual(dist, op.Sub(best, tie))
        u = op.ArgMax(op.Where(near, lowest_first, zero), axis=1, keepdims=1)  # [B, 1]
        u_row = op.Expand(op.Unsqueeze(u, op.Constant(value_ints=[2])),
                          op.Concat(batch_1d, op.Constant(value_ints=[1]), n_1d, axis=0))
        row = op.Squeeze(op.GatherElements(pair, u_row, axis=1), op.Constant(value_ints=[1]))  # [B, N]
        selected = op.Or(selected, op.Equal(index_row, u))
        dist = op.Where(selected, neg, op.Min(dist, row))

    # selected rows score N - i > 0, the rest -i <= 0: TopK(K) lists the selected ones by index
    n_float = op.Cast(n_1d, to=1)
    score = op.Sub(op.Mul(op.Cast(selected, to=1), n_float), op.Cast(index_row, to=1))
    _, kept = op.TopK(score, op.Reshape(k, op.Constant(value_ints=[1])), axis=1, largest=1, sorted=1)
    return kept


def translation_table() -> dict:
    """custom_translation_table entry for torch.onnx.export."""
    import torch  # the halfv:: op is registered by the method.selection import at the top

    return {torch.ops.halfv.fps_coverage.default: fps_coverage_onnx}
