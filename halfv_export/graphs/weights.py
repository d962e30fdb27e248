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
private copy per session. `bind` rewires Transpose(W) to a stored W^T instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx_ir as ir
import torch

ALIGN_LARGE = 4096  # page alignment lets ONNX Runtime map a tensor from the file without a copy
ALIGN_SMALL = 64
LARGE_BYTES = 1 << 20
INLINE_LIMIT_BYTES = 1 << 20  # constants the optimizer folds must stay small: weights live in the data file

TORCH_TO_IR = {torch.float32: ir.DataType.FLOAT, torch.float16: ir.DataType.FLOAT16,
               torch.bfloat16: ir.DataType.BFLOAT16, torch.int64: ir.DataType.INT64}


class WeightFile:
    """An external data file written tensor by tensor; (key, transposed) -> (offset, length), once each."""

    def __init__(self, folder: Path, name: str, source, dtype, advance=lambda n: None):
        self.folder, self.name, self.source, self.dtype = Path(folder), name, source, dtype
        self.path = self.folder / name
        self._fh = open(self.path, "wb")
        self._placed: dict[tuple[str, bool], tuple[int, int]] = {}
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
        raw = memoryview(data.numpy()).cast("B")
        align = ALIGN_LARGE if len(raw) >= LARGE_BYTES else ALIGN_SMALL
        offset = -self._fh.tell() % align
        if offset:
            self._fh.write(b"\0" * offset)
        start = self._fh.tell()
        self._fh.write(raw)
        self._placed[(key, transposed)] = (start, len(raw), tuple(tensor.shape))
        self._advance(len(raw))
        return self._placed[(key, transposed)]

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


def bind(model: ir.Model, wrapper: torch.nn.Module, hf_model: torch.nn.Module, file: WeightFile) -> None:
    """Point every weight placeholder of a meta-traced graph into `file`; real buffers become inline constants."""
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
            if not _is_matrix_transpose(node):
                continue
            t_name = f"{key}.T"
            t_value = graph.initializers.get(t_name)
            if t_value is None:
                external = _external(file, key, True, t_name)
                t_value = ir.Value(name=t_name, shape=external.shape, type=ir.TensorType(external.dtype),
                                   const_value=external)
                graph.register_initializer(t_value)
            ir.convenience.replace_all_uses_with(node.outputs[0], t_value)
            graph.remove(node, safe=True)
        if value.consumers():
            value.const_value = _external(file, key, False, name)
        else:
            graph.initializers.pop(name)


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

