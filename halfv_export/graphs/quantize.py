"""Weight-only int8/int4 quantization of the decoder's linear layers, tensor by tensor as they are written.

The numbers come from ONNX Runtime's quantization tools (`DefaultWeightOnlyQuantizer`, round to nearest,
symmetric, one scale per block of `block_size` input rows of each output column). Two graph forms:

    nbits  x -> MatMulNBits(q, scales)                    com.microsoft: ONNX Runtime (CPU, CUDA)
    qdq    x -> MatMul(x, DequantizeLinear(q, scales))     opset 21 blocked DequantizeLinear: TensorRT

Both hold the same quantized values (the qdq form is the nbits form's values laid out as [K, N]), so a
model exported in both forms answers alike. Why ONNX Runtime gets MatMulNBits and not the portable QDQ
form: it would fuse every DequantizeLinear -> MatMul into MatMulNBits while each session loads, laying the
codes out again each time; the nbits form is that result, written once (docs/architecture.md).

Symmetric because TensorRT takes no zero points for weight-only blocks. Embeddings, norms, biases and
the pruning subgraphs (scores, fps, TopK, Gather) stay in the export dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

BITS = {"int8": 8, "int4": 4}
FORMATS = ("nbits", "qdq")
BLOCK_SIZES = (32, 64, 128)
QDQ_MIN_OPSET = 21  # DequantizeLinear's block_size attribute and the INT4 type arrived in opset 21: the
# qdq form's quantized graphs (prefill, decode) are raised to it; the other graphs keep the asked opset
ACCURACY_LEVEL = 1  # MatMulNBits computes in fp32 (1): graphs agree with the dequantized reference
SUFFIX_Q, SUFFIX_SCALES = ".q", ".scales"


@dataclass(frozen=True)
class Quantization:
    """What `export --weights` asked for: bits per weight, rows per scale, graph form."""

    bits: int
    block_size: int = 32
    format: str = "nbits"

    def __post_init__(self):
        from ..core.errors import UserError

        if self.bits not in BITS.values() or self.block_size not in BLOCK_SIZES or self.format not in FORMATS:
            raise UserError(f"weight quantization must be {sorted(BITS.values())} bits, block size in {BLOCK_SIZES}, "
                            f"format in {FORMATS}; got {self.bits}, {self.block_size}, {self.format!r}")

    def to_dict(self) -> dict:
        return {"bits": self.bits, "block_size": self.block_size, "format": self.format,
                "method": "rtn", "symmetric": True, "accuracy_level": ACCURACY_LEVEL}

    def quantize(self, weight: np.ndarray, scale_dtype) -> dict[str, np.ndarray]:
        """[K, N] float weight (what MatMul reads) -> {suffix: array} to store, in this form's layout."""
        DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer, QuantFormat = _ort_quantizer()
        config = DefaultWeightOnlyQuantConfig(block_size=self.block_size, is_symmetric=True,
                                              quant_format=QuantFormat.QOperator, bits=self.bits)
        packed, scales, _ = DefaultWeightOnlyQuantizer(config).qbits_block_quant(
            np.ascontiguousarray(weight, dtype=np.float32))
        scales = scales.astype(scale_dtype)
        if self.format == "nbits":
            return {SUFFIX_Q: packed, SUFFIX_SCALES: scales}
        values = nbits_values(packed, self.bits, weight.shape[0])  # [N, K] signed
        if self.bits == 8:
            q = np.ascontiguousarray(values.T.astype(np.int8))
        else:
            q = pack_int4(values.T)
        return {SUFFIX_Q: q, SUFFIX_SCALES: np.ascontiguousarray(scales.T)}


def _ort_quantizer():
    """ONNX Runtime's weight-only quantizer classes. Importing its module calls logging.basicConfig(INFO),
    which would print every library's INFO lines from then on: the root logger is put back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer)
        from onnxruntime.quantization.quant_utils import QuantFormat
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer, QuantFormat


def nbits_values(packed: np.ndarray, bits: int, rows: int) -> np.ndarray:
    """MatMulNBits' packed [N, blocks, blob] unsigned codes -> signed values [N, rows] (symmetric zero
    point 2^(bits-1), the contrib op's default when no zero points are given)."""
    n = packed.shape[0]
    codes = (_nibbles(packed) if bits == 4 else packed).reshape(n, -1)
    return codes[:, :rows].astype(np.int16) - (1 << (bits - 1))


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """Each byte's low then high 4 bits, as a trailing axis of 2 (unsigned)."""
    return np.stack([packed & 0x0F, packed >> 4], axis=-1)


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Signed values in [-8, 7] -> ONNX INT4 bytes: row-major, two per byte, the first in the low nibble."""
    flat = (values.reshape(-1).astype(np.int16) & 0x0F).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return flat[0::2] | (flat[1::2] << 4)


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    codes = _nibbles(packed).reshape(-1)[:count].astype(np.int16)
    return np.where(codes > 7, codes - 16, codes)


def dequantize(entry: dict, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The float [K, N] weight a quantized MatMul computes with (the reference's weights for `check`).

    `entry`: the manifest's record of one weight (bits, block_size, format, shape [K, N]); `arrays`:
    its stored tensors by suffix, as read from the data file."""
    bits, block, (rows, cols) = int(entry["bits"]), int(entry["block_size"]), entry["shape"]
    scales = arrays[SUFFIX_SCALES].astype(np.float32)
    if entry["format"] == "nbits":
        values = nbits_values(arrays[SUFFIX_Q].reshape(cols, -1), bits, rows).T  # [K, N]
        scales = scales.reshape(cols, -1).T  # stored [N, blocks]
    else:
        scales = scales.reshape(-1, cols)  # stored [blocks, N]
        if bits == 8:
            values = arrays[SUFFIX_Q].reshape(rows, cols).astype(np.int16)
        else:
            values = unpack_int4(arrays[SUFFIX_Q].reshape(-1), rows * cols).reshape(rows, cols)
    return values.astype(np.float32) * np.repeat(scales, block, axis=0)[:rows]


class DequantizedWeights:
    """A weight source (backbones/checkpoint.py: `tensor(key, dtype)`) that answers the linear weights a
    quantized graphs folder holds with their dequantized values, read from its data file, and every
    other tensor from `base`: the reference `check` compares a quantized folder with."""

    def __init__(self, base, manifest):
        from ..core.manifest import DATA_FILES

        self.base, self.folder = base, manifest.folder
        self.record = (manifest.get("quantization") or {}).get("weights") or {}
        self._where = {}
        for file, entry in (manifest.get(DATA_FILES) or {}).items():
            for name, info in (entry.get("tensors") or {}).items():
                stored = "uint8" if info["dtype"] == "int4" else info["dtype"]  # int4: two per byte
                self._where[name] = (file, int(info["offset"]), int(info["length"]), np.dtype(stored))

    def __contains__(self, key: str) -> bool:
        return key in self.record

    def dequantized(self, key: str) -> np.ndarray:
        """W (the module's [out, in] weight) as the graphs compute with it."""
        entry = self.record[key]
        arrays = {}
        for suffix, name in entry["tensors"].items():
            file, offset, length, dtype = self._where[name]
            with open(self.folder / file, "rb") as fh:
                fh.seek(offset)
                arrays[suffix] = np.frombuffer(fh.read(length), dtype=dtype)
        return dequantize(entry, arrays).T

    def tensor(self, key: str, dtype):
        import torch

        if key in self.record:
            return torch.from_numpy(np.ascontiguousarray(self.dequantized(key))).to(dtype)
        return self.base.tensor(key, dtype)

