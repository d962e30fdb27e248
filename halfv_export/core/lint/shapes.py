"""Evaluating K: the value of a symbolic dim and of the small integer tensors exporters compute from shapes.

Exporters compute a TopK's K as Shape -> Gather -> Mul/Div/Add... on an input's symbolic size. With the
graph-input dims bound to numbers (the visual-token count at the manifest's max, probes for the others),
ShapeEvaluator computes that cone with numpy; whatever depends on data, loop state or an op it does not
know raises Unresolved. Imports walker (below it in the package), numpy and onnx.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from onnx import helper, numpy_helper

from .walker import Scope, node_attr, shape_of


class Unresolved(Exception):
    """A tensor value that the small evaluator cannot compute (data-dependent, unknown op or dim)."""


_EXPR_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
             ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b}
_EXPR_CALLS = {"max": max, "Max": max, "min": min, "Min": min}


def eval_dim(expr: str, bindings: dict) -> int:
    """Value of a symbolic dim (`visual_tokens`, or an exporter expression like `((V + 3)//4)`)."""
    if expr in bindings:
        return int(bindings[expr])
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise Unresolved(f"dim '{expr}' has no value") from None

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in bindings:
                return int(bindings[node.id])
            raise Unresolved(f"dim '{node.id}' has no value")
        if isinstance(node, ast.BinOp) and type(node.op) in _EXPR_OPS:
            return _EXPR_OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _EXPR_CALLS
                and not node.keywords):
            return _EXPR_CALLS[node.func.id](*(walk(a) for a in node.args))
        raise Unresolved(f"dim '{expr}' is not an integer expression")

    return walk(tree)


def _int_div(a, b):
    """ONNX integer Div truncates toward zero (C semantics); floats divide normally."""
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) ^ (b < 0), -q, q).astype(np.result_type(a, b))
    return a / b


def _axes(node, inputs, index=1):
    """Axes from the attribute (old opsets) or from input `index` (newer opsets)."""
    for attr in node.attribute:
        if attr.name == "axes":
            return list(attr.ints)
    if len(inputs) > index and inputs[index] is not None:
        return [int(v) for v in np.atleast_1d(inputs[index])]
    return None


class ShapeEvaluator:
    """Computes small integer tensors (a TopK's K) from graph-input shapes with the dims bound.

    Exporters compute K as Shape -> Gather -> Mul/Div/Add... on an input's symbolic size; this
    evaluates that cone with numpy. Data inputs, loop state and unknown ops raise Unresolved.
    """

    def __init__(self, scope: Scope, bindings: dict, base_dir: Path | None = None):
        self.scope, self.bindings, self.base_dir = scope, bindings, base_dir
        self.memo: dict = {}

    def value(self, name: str) -> np.ndarray:
        if name not in self.memo:
            self.memo[name] = self._compute(name)
        return self.memo[name]

    def shape(self, name: str) -> list[int]:
        dims = shape_of(self.scope.types.get(name))
        if dims is None:
            if name in self.scope.constants:
                return list(self.value(name).shape)
            raise Unresolved(f"the shape of '{name}' is unknown")
        out = []
        for d in dims:
            if d is None:
                raise Unresolved(f"'{name}' has an unnamed dynamic dim")
            out.append(d if isinstance(d, int) else eval_dim(d, self.bindings))
        return out

    def _compute(self, name: str) -> np.ndarray:
        if name in self.scope.constants:
            tensor = self.scope.constants[name]
            return numpy_helper.to_array(tensor, str(self.base_dir) if self.base_dir else "")
        if name not in self.scope.producers:
            raise Unresolved(f"K depends on the data of '{name}'" if name in self.scope.graph_inputs
                             else f"'{name}' has no producer")
        label, node = self.scope.producers[name]
        if node.domain not in ("", "ai.onnx"):
            raise Unresolved(f"{label} ({node.domain}::{node.op_type}) cannot be evaluated")
        handler = getattr(self, f"_op_{node.op_type}", None)
        if handler is None:
            if node.op_type in _ELEMENTWISE:
                handler = self._elementwise
            else:
                raise Unresolved(f"{label} ({node.op_type}) is not a shape op the lint evaluates")
        if node.op_type == "Shape":
            outputs = [self._op_Shape(node, None)]
        else:
            inputs = [self.value(i) if i else None for i in node.input]
            outputs = handler(node, inputs)
            outputs = outputs if isinstance(outputs, list) else [outputs]
        result = None
        for out_name, value in zip(node.output, outputs):
            self.memo[out_name] = np.asarray(value)
            if out_name == name:
                result = self.memo[out_name]
        if result is None:
            raise Unresolved(f"{label}: output '{name}' is not evaluated")
        return result

    # shape sources
    def _op_Shape(self, node, _inputs):
        shape = np.array(self.shape(node.input[0]), dtype=np.int64)
        rank = len(shape)
        start, end = node_attr(node, "start", 0), node_attr(node, "end", rank)
        return shape[slice(start, end)]

    def _op_Size(self, node, _inputs):
        return np.array(int(np.prod(self.shape(node.input[0]))), dtype=np.int64)

    # plain tensor ops
    def _op_Constant(self, node, _inputs):
        for key in ("value_int", "value_ints", "value_float", "value_floats"):
            value = node_attr(node, key)
            if value is not None:
                return np.array(value)
        raise Unresolved(f"Constant {node.name} has no numeric value")

    def _op_Identity(self, node, inputs):
        return inputs[0]

    def _op_Cast(self, node, inputs):
        return inputs[0].astype(helper.tensor_dtype_to_np_dtype(node_attr(node, "to")))

    def _op_Gather(self, node, inputs):
        return np.take(inputs[0], inputs[1], axis=node_attr(node, "axis", 0))

    def _op_Squeeze(self, node, inputs):
        axes = _axes(node, inputs)
        return np.squeeze(inputs[0], axis=tuple(axes) if axes else None)

    def _op_Unsqueeze(self, node, inputs):
        out = inputs[0]
        rank = out.ndim + len(_axes(node, inputs))
        for axis in sorted(a % rank for a in _axes(node, inputs)):
            out = np.expand_dims(out, axis)
        return out

    def _op_Reshape(self, node, inputs):
        target = [int(v) for v in inputs[1]]
        target = [inputs[0].shape[i] if v == 0 else v for i, v in enumerate(target)]
        return inputs[0].reshape(target)

    def _op_Concat(self, node, inputs):
        return np.concatenate([np.atleast_1d(i) for i in inputs if i is not None], axis=node_attr(node, "axis", 0))

    def _op_Slice(self, node, inputs):
        data = inputs[0]
        if len(inputs) > 1:
            starts, ends = inputs[1], inputs[2]
            axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
            steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
        else:
            starts, ends = node_attr(node, "starts"), node_attr(node, "ends")
            axes, steps = node_attr(node, "axes", list(range(len(starts)))), [1] * len(starts)
        index = [slice(None)] * data.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            index[int(a)] = slice(int(s), int(e), int(st))
        return data[tuple(index)]

    def _op_Div(self, node, inputs):
        return _int_div(inputs[0], inputs[1])

    def _op_Mod(self, node, inputs):
        return np.fmod(inputs[0], inputs[1]) if node_attr(node, "fmod", 0) else np.mod(inputs[0], inputs[1])

    def _op_Where(self, node, inputs):
        return np.where(inputs[0], inputs[1], inputs[2])

    def _op_Max(self, node, inputs):
        return np.maximum.reduce(np.broadcast_arrays(*inputs))

    def _op_Min(self, node, inputs):
        return np.minimum.reduce(np.broadcast_arrays(*inputs))

    def _op_Clip(self, node, inputs):
        low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
        high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
        return np.clip(inputs[0], low, high)

    def _op_ConstantOfShape(self, node, inputs):
        value = node_attr(node, "value")
        fill = numpy_helper.to_array(value) if value is not None else np.zeros(1, dtype=np.float32)
        return np.full([int(v) for v in inputs[0]], fill.reshape(-1)[0], dtype=fill.dtype)

    def _op_Range(self, node, inputs):
        return np.arange(inputs[0], inputs[1], inputs[2])

    def _op_Expand(self, node, inputs):
        return inputs[0] * np.ones([int(v) for v in inputs[1]], dtype=inputs[0].dtype)

    def _reduce(self, fn, node, inputs):
        axes = _axes(node, inputs)
        keep = bool(node_attr(node, "keepdims", 1))
        return fn(inputs[0], axis=tuple(axes) if axes else None, keepdims=keep)

    def _op_ReduceProd(self, node, inputs):
        return self._reduce(np.prod, node, inputs)

    def _op_ReduceSum(self, node, inputs):
        return self._reduce(np.sum, node, inputs)

    def _op_ReduceMax(self, node, inputs):
        return self._reduce(np.max, node, inputs)

    def _op_ReduceMin(self, node, inputs):
        return self._reduce(np.min, node, inputs)

    def _elementwise(self, node, inputs):
        return _ELEMENTWISE[node.op_type](*inputs)


_ELEMENTWISE = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Neg": np.negative, "Abs": np.abs,
    "Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal, "Not": np.logical_not, "And": np.logical_and, "Or": np.logical_or,
    "Floor": np.floor, "Ceil": np.ceil, "Sqrt": np.sqrt,
}
