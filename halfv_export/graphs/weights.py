"""Weights into traced graphs: one external data file that several graphs point into, each tensor once.

The decoder graphs are traced on the meta device (no weight storage, see backbones/checkpoint.py), so
their initializers are placeholders named after module parameters. `bind` turns each placeholder into
an ONNX external-data reference into a shared WeightFile, which writes the tensor (read from the
checkpoint or the in-memory model, converted to the export dtype) the first time any graph asks:

    embed.onnx   --\
    prefill.onnx ---+--> decoder.onnx.data   (one copy of every decoder weight)
    decode.onnx  --/

Linear weights are stored transposed ([in, out], what MatMul reads): the exporter lowers `x @ W.T` as
Transpose(W) -> MatMul, and a Transpose left on a shared initializer would make ONNX Runtime fold a
private copy per session. `bind` rewires Transpose(W) to a stored W^T instead, or, when the export
quantizes (graphs/quantize.py), rewrites each such MatMul to read the quantized W^T and its scales.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch

from .quantize import ACCURACY_LEVEL, QDQ_MIN_OPSET, SUFFIX_Q, SUFFIX_SCALES, Quantization

ALIGN_LARGE = 4096  # page alignment lets ONNX Runtime map a tensor from the file without a copy
ALIGN_SMALL = 64
LARGE_BYTES = 1 << 20
INLINE_LIMIT_BYTES = 1 << 20  # constants the optimizer folds must stay small: weights live in the data file

TORCH_TO_IR = {torch.float32: ir.DataType.FLOAT, torch.float16: ir.DataType.FLOAT16,
               torch.bfloat16: ir.DataType.BFLOAT16, torch.int64: ir.DataType.INT64}
NUMPY_TO_IR = {np.dtype(np.float32): ir.DataType.FLOAT, np.dtype(np.float16): ir.DataType.FLOAT16,
               np.dtype(np.uint8): ir.DataType.UINT8, np.dtype(np.int8): ir.DataType.INT8}
TORCH_TO_NUMPY = {torch.float32: np.float32, torch.float16: np.float16}


class WeightFile:
    """An external data file written tensor by tensor; (key, transposed) -> (offset, length), once each."""

    def __init__(self, folder: Path, name: str, source, dtype, advance=lambda n: None,
                 quantization: Quantization | None = None):
        self.folder, self.name, self.source, self.dtype = Path(folder), name, source, dtype
        self.quantization = quantization
        self.path = self.folder / name
        self._fh = open(self.path, "wb")
        self._placed: dict[tuple[str, bool], tuple[int, int]] = {}
        self._quantized: dict[str, dict] = {}  # key -> what place_quantized returns
        self._advance = advance

    def place(self, key: str, transposed: bool) -> tuple[int, int, tuple]:
        """(offset, length, shape) of the tensor `key` (transposed if asked), writing it on first use."""
        if (key, transposed) in self._placed:
            return self._placed[(key, transposed)]
        tensor = self.source.tensor(key, self.dtype)
        if transposed:
            tensor = tensor.t()
        tensor = tensor.contiguous()
        data = tensor.view(torch.uint8) if tensor.dtype == torch.bfloat16 else tensor
        start, length = self._write(data.numpy())
        self._placed[(key, transposed)] = (start, length, tuple(tensor.shape))
        self._advance(tensor.numel() * tensor.element_size())
        return self._placed[(key, transposed)]

    def place_quantized(self, key: str) -> dict:
        """{"shape": (K, N), "arrays": {suffix: (offset, length, shape, ir dtype)}}: the quantized W^T of
        linear weight `key` and its scales, quantized and written on first use."""
        if key not in self._quantized:
            tensor = self.source.tensor(key, torch.float32)
            arrays = self.quantization.quantize(tensor.t().numpy(), TORCH_TO_NUMPY[self.dtype])
            entry = {}
            for suffix, array in arrays.items():
                dtype = NUMPY_TO_IR[array.dtype]
                shape = tuple(array.shape)
                if suffix == SUFFIX_Q and self.quantization.format == "qdq" and self.quantization.bits == 4:
                    dtype, shape = ir.DataType.INT4, tuple(tensor.t().shape)  # two values per stored byte
                start, length = self._write(array)
                entry[suffix] = (start, length, shape, dtype)
            self._quantized[key] = {"shape": tuple(tensor.t().shape), "arrays": entry}
            self._advance(tensor.numel() * torch.finfo(self.dtype).bits // 8)
        return self._quantized[key]

    @property
    def quantized_names(self) -> set[str]:
        return {quantized_name(key, suffix) for key, entry in self._quantized.items() for suffix in entry["arrays"]}

    def _write(self, array: np.ndarray) -> tuple[int, int]:
        raw = memoryview(np.ascontiguousarray(array)).cast("B")
        align = ALIGN_LARGE if len(raw) >= LARGE_BYTES else ALIGN_SMALL
        offset = -self._fh.tell() % align
        if offset:
            self._fh.write(b"\0" * offset)
        start = self._fh.tell()
        self._fh.write(raw)
        return start, len(raw)

    def quantized_weights(self) -> dict[str, dict]:
        """The manifest's record of each quantized weight: its [K, N] shape, how, and its initializers."""
        return {key: {"shape": list(entry["shape"]), **self.quantization.to_dict(),
                      "tensors": {suffix: quantized_name(key, suffix) for suffix in entry["arrays"]}}
                for key, entry in self._quantized.items()}

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size


def _external(file: WeightFile, key: str, transposed: bool, name: str) -> ir.ExternalTensor:
    offset, length, shape = file.place(key, transposed)
    return ir.ExternalTensor(file.name, offset=offset, length=length, dtype=TORCH_TO_IR[file.dtype],
                             shape=ir.Shape(shape), name=name, base_dir=file.folder)


def _is_matrix_transpose(node: ir.Node) -> bool:
    if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
        return False
    perm = node.attributes.get_ints("perm", None)
    return perm is not None and list(perm) == [1, 0]


def parameter_keys(wrapper: torch.nn.Module, model: torch.nn.Module) -> dict[str, str]:
    """Exported initializer name (the wrapper's attribute path) -> the model's state-dict key."""
    by_id = {}
    for key, tensor in list(model.named_parameters(remove_duplicate=False)) + list(
            model.named_buffers(remove_duplicate=False)):
        by_id.setdefault(id(tensor), key)
    names = {}
    for name, tensor in list(wrapper.named_parameters(remove_duplicate=False)) + list(
            wrapper.named_buffers(remove_duplicate=False)):
        if id(tensor) in by_id:
            names[name] = by_id[id(tensor)]
    return names


def quantized_name(key: str, suffix: str) -> str:
    return f"{key}.T{suffix}"


def _initializer(graph: ir.Graph, name: str, make) -> ir.Value:
    value = graph.initializers.get(name)
    if value is None:
        tensor = make()
        value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
        graph.register_initializer(value)
    return value


def _quantized_inputs(graph: ir.Graph, file: WeightFile, key: str) -> tuple[ir.Value, ir.Value, tuple]:
    entry = file.place_quantized(key)
    values = []
    for suffix in (SUFFIX_Q, SUFFIX_SCALES):
        offset, length, shape, dtype = entry["arrays"][suffix]
        name = quantized_name(key, suffix)
        values.append(_initializer(graph, name, lambda: ir.ExternalTensor(
            file.name, offset=offset, length=length, dtype=dtype, shape=ir.Shape(shape), name=name,
            base_dir=file.folder)))
    return values[0], values[1], entry["shape"]


def _quantized_product(model: ir.Model, file: WeightFile, node: ir.Node, x: ir.Value, key: str) -> ir.Value:
    """x @ W^T from the quantized W^T (initializers of the main graph), inserted before `node`."""
    graph, quant = node.graph, file.quantization
    q, scales, (rows, cols) = _quantized_inputs(model.graph, file, key)
    if quant.format == "qdq":
        dequantize = ir.Node("", "DequantizeLinear", [q, scales], [
            ir.AttrInt64("axis", 0), ir.AttrInt64("block_size", quant.block_size)], name=f"{node.name}/dequantize")
        weight = dequantize.outputs[0]
        weight.name, weight.shape, weight.type = f"{key}.T.dequantized.{node.name}", ir.Shape([rows, cols]), scales.type
        product = ir.Node("", "MatMul", [x, weight], name=f"{node.name}/matmul")
        graph.insert_before(node, [dequantize, product])
    else:
        product = ir.Node("com.microsoft", "MatMulNBits", [x, q, scales], [
            ir.AttrInt64("K", rows), ir.AttrInt64("N", cols), ir.AttrInt64("bits", quant.bits),
            ir.AttrInt64("block_size", quant.block_size), ir.AttrInt64("accuracy_level", ACCURACY_LEVEL)],
            name=f"{node.name}/matmul_nbits")
        graph.insert_before(node, product)
    return product.outputs[0]


def _replace(node: ir.Node, value: ir.Value) -> None:
    """`value` takes over `node`'s only output (its name, type, shape and readers); `node` goes."""
    old = node.outputs[0]
    value.shape, value.type = old.shape, old.type
    ir.convenience.replace_all_uses_with(old, value, replace_graph_outputs=True)
    name = old.name
    node.graph.remove(node, safe=True)
    value.name = name


def _is_linear_gemm(node: ir.Node, weight: ir.Value) -> bool:
    """Gemm(x, W, transB=1, alpha=1[, bias, beta=1]): how the exporter lowers a linear layer on 2-D input."""
    attrs = node.attributes
    return (node.op_type == "Gemm" and node.domain in ("", "ai.onnx") and len(node.inputs) >= 2
            and node.inputs[1] is weight and node.inputs[0] is not weight
            and attrs.get_int("transB", 0) == 1 and attrs.get_int("transA", 0) == 0
            and attrs.get_float("alpha", 1.0) == 1.0 and attrs.get_float("beta", 1.0) == 1.0)


def _quantize_linear(model: ir.Model, node: ir.Node, weight: ir.Value, file: WeightFile, key: str) -> bool:
    """Rewrite the products that read W through `node` (Transpose(W) -> MatMuls, or a linear Gemm) to
    the quantized form. False, with nothing changed, when `node` is neither."""
    if node.op_type == "Gemm":
        if not _is_linear_gemm(node, weight):
            return False
        product = _quantized_product(model, file, node, node.inputs[0], key)
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None:
            add = ir.Node("", "Add", [product, bias], name=f"{node.name}/bias")
            node.graph.insert_before(node, add)
            product = add.outputs[0]
        _replace(node, product)
    else:
        readers = list(node.outputs[0].uses())
        if not readers or any(user.op_type != "MatMul" or index != 1 for user, index in readers):
            return False
        for matmul, _ in readers:
            _replace(matmul, _quantized_product(model, file, matmul, matmul.inputs[0], key))
        node.graph.remove(node, safe=True)
    if file.quantization.format == "nbits":
        model.opset_imports.setdefault("com.microsoft", 1)
    else:  # blocked DequantizeLinear is opset 21; from 20 to 21 the ops the exporter writes only gained types
        model.opset_imports[""] = max(model.opset_imports.get("", 0), QDQ_MIN_OPSET)
    return True


def bind(model: ir.Model, wrapper: torch.nn.Module, hf_model: torch.nn.Module, file: WeightFile) -> None:
    """Point every weight placeholder of a meta-traced graph into `file`; real buffers become inline constants.

    With `file.quantization`, the 2-D weights read through Transpose -> MatMul (the linear layers) are
    stored quantized and their MatMuls rewritten (graphs/quantize.py); every other weight keeps the dtype."""
    graph = model.graph
    keys = parameter_keys(wrapper, hf_model)
    for name, value in list(graph.initializers.items()):
        tensor = getattr(value.const_value, "raw", None)
        if not isinstance(tensor, torch.Tensor):
            continue
        if not tensor.is_meta:  # a buffer with a real value (rotary frequencies): small, kept in the graph
            value.const_value = ir.tensor(tensor.detach().numpy(), name=name)
            continue
        if name not in keys:
            raise RuntimeError(f"initializer {name} has no value and is no parameter of the model")
        key = keys[name]
        for node in list(value.consumers()):
            if file.quantization is not None and tensor.dim() == 2 and (
                    _is_matrix_transpose(node) or node.op_type == "Gemm") \
                    and _quantize_linear(model, node, value, file, key):
                continue
            if not _is_matrix_transpose(node):
                continue
            t_name = f"{key}.T"
            t_value = _initializer(graph, t_name, lambda: _external(file, key, True, t_name))
            ir.convenience.replace_all_uses_with(node.outputs[0], t_value)
            node.graph.remove(node, safe=True)
        if value.consumers():
            value.const_value = _external(file, key, False, name)
        else:
            graph.initializers.pop(name)


def check_quantized(model: ir.Model, role: str) -> None:
    """No dequantized weight may come back as a float constant (a folded DequantizeLinear)."""
    for name in model.graph.initializers:
        if ".T.dequantized." in name:
            raise RuntimeError(f"{role}: the optimiser folded quantized weight {name} back to floats")


def check_weights_external(model: ir.Model, role: str) -> None:
    """After optimisation every large initializer must still be a reference into the data file."""
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is not None and not isinstance(tensor, ir.ExternalTensor) and tensor.nbytes > INLINE_LIMIT_BYTES:
            raise RuntimeError(f"{role}: initializer {name} ({tensor.nbytes} bytes) is not in the weights file")


def external_tensors(model: ir.Model) -> dict[str, dict]:
    """{initializer name: offset, length, dtype, shape} of every reference into a data file: what the
    runtime needs to hand ONNX Runtime one shared in-memory copy (runtime/weights.py)."""
    out = {}
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            out[name] = {"offset": tensor.offset, "length": tensor.length, "dtype": str(tensor.dtype.numpy()),
                         "shape": list(tensor.shape.numpy())}
    return out


def save_graph(model: ir.Model, path: os.PathLike) -> None:
    """Write the graph proto; external references are kept as they are (their data is already on disk)."""
    import onnx

    proto = ir.serde.serialize_model(model)
    onnx.save(proto, os.fspath(path))

