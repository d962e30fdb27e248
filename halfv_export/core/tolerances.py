"""How close outputs must be, in one table per comparison: graphs vs the PyTorch reference, engines vs graphs.

Graphs vs reference (`check`, the parity tests), (atol, rtol) for logits and caches by how the graph computes:
- fp32: the same arithmetic in another order.
- fp32-quantized: weight-only int8/int4 graphs against a reference holding the same dequantized weights;
  MatMulNBits sums each product block by block, in another order than the reference's matmul, and over a deep
  model that drift outgrows 1e-4 (docs/architecture.md).
- fp16: half precision keeps about 3 decimal digits and the error grows over the layers.
Kept indices and greedy tokens stay exact in every case (a near-tie flipped by rounding is reported as a
difference, not hidden).
"""

from __future__ import annotations

PARITY = {"fp32": (1e-4, 1e-4), "fp32-quantized": (1e-3, 1e-3), "fp16": (5e-2, 5e-2)}

# TensorRT engines vs the ONNX Runtime graphs they were built from, by engine precision and output kind.
ENGINE = {
    "fp32": {"logits": (1e-3, 1e-3), "present": (1e-3, 1e-3), "other": (1e-3, 1e-3)},
    "fp16": {"logits": (5e-2, 5e-2), "present": (2e-2, 2e-2), "other": (2e-2, 2e-2)},
}
