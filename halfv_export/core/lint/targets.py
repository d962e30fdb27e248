"""The deployment targets: what each TensorRT version's ONNX parser accepts.

One Target per TensorRT version: its default-domain opset range, the ops its parser imports, the tensor
types it has, whether it builds strongly typed networks only, and the quantized types a blocked
DequantizeLinear may produce from. The TopK K limit is the same for every version: core.limits.TOPK_MAX_K.
Imports onnx (for the TensorProto type codes) and core.errors only.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

from ..errors import UserError

# Ops the ONNX parser imports: the operators table of onnx/onnx-tensorrt docs/operators.md for
# TensorRT 10.15, rows marked "Y". NonZero is in it but refused separately (rules.py, check_NonZero).
_PARSER_OPS_10_15 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization
RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape
Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub
Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# Added to the parser after 10.0 (onnx-tensorrt docs/Changelog.md: DeformConv 10.1, window functions
# 10.4, STFT 10.5, the LLM ops of opset 23/24 in 10.15). Left out of trt10 so that a graph that passes
# also parses on JetPack 6's TensorRT 10.3.
_ADDED_AFTER_10_0 = frozenset({"DeformConv", "BlackmanWindow", "HammingWindow", "HannWindow", "STFT",
                               "Attention", "RMSNormalization", "RotaryEmbedding", "TensorScatter"})

# TensorRT data types (operators.md header). float64 is refused although the parser "attempts to cast
# DOUBLE down", because that is a silent precision change; 16-bit and wide unsigned ints do not exist.
_TRT10_DTYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32,
                           TensorProto.INT64, TensorProto.INT8, TensorProto.UINT8, TensorProto.BOOL,
                           TensorProto.FLOAT8E4M3FN, TensorProto.INT4})


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    opset: tuple[int, int]  # inclusive range of the default ONNX domain
    ops: frozenset
    dtypes: frozenset
    strongly_typed: bool
    block_dtypes: frozenset = frozenset()  # quantized types a blocked DequantizeLinear may produce from


TARGETS = {
    # TensorRT 10.0's parser: "operators in the inclusive range of opset 9 to opset 20" (operators.md).
    # Later 10.x parse up to 24, but JetPack 6 ships 10.3: 9..20 is the range every 10.x accepts.
    # Block quantization: INT4 weights (10.0 release notes: INT4 weight-only with block quantization).
    "trt10": Target("trt10", "TensorRT 10.x (JetPack 6)", (9, 20), _PARSER_OPS_10_15 - _ADDED_AFTER_10_0,
                    _TRT10_DTYPES, strongly_typed=False, block_dtypes=frozenset({TensorProto.INT4})),
    # TensorRT 11 (JetPack 7): opset 9..24 as listed for 10.15 and 11.2; strongly typed networks only.
    # Its Quantize/Dequantize layers take blocks for INT4, INT8, FP8 and FP4 (operator docs).
    "trt11": Target("trt11", "TensorRT 11.x (JetPack 7)", (9, 24), _PARSER_OPS_10_15,
                    _TRT10_DTYPES | {TensorProto.FLOAT4E2M1}, strongly_typed=True,
                    block_dtypes=frozenset({TensorProto.INT4, TensorProto.INT8, TensorProto.FLOAT8E4M3FN,
                                            TensorProto.FLOAT4E2M1})),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown lint target {name!r}; known: {', '.join(TARGETS)}") from None
