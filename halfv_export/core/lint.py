"""TensorRT lint: would each graph of a graphs folder get through a TensorRT version's ONNX parser?

TensorRT cannot run here (no GPU, no TensorRT libraries on PyPI), so this checks on the CPU, with onnx
only, the rules that make a parse or a build fail or make an engine misbehave:

  opset        default-domain opset inside the target's range
  ops          every op in the target's parser allowlist (local functions are expanded first, as the
               parser does since TensorRT 9); ops of other domains need plugins we do not ship
  dtypes       only tensor types TensorRT has (no float64, string, complex, int16, uint16/32/64)
  TopK         sorted=1, axis within the last 4 dims, and K <= 3840 at the LARGEST visual-token count
               of the manifest's range; a K computed from shapes is evaluated from its expression
  If           both branches give outputs of equal shape (unless the condition is a build-time constant)
  Loop         no scan outputs of dynamic length; loop-carried shapes fixed
  NonZero      refused: its output shape is data-dependent (needs an output allocator, no static
               memory plan, no CUDA graphs); select with TopK and a shape-derived K instead
  DQ blocks   weight-only quantization (export --weights-format qdq): a blocked DequantizeLinear reads a
               2-D initializer with constant scales and no non-zero zero point; TensorRT 10 blocks INT4
               only, TensorRT 11 INT4 and INT8. Blocked DQ exists from opset 21: on trt10 (documented
               range 9..20, but INT4 block quantization parsed since 10.0) opset 21 is a WARNING
               for a graph that needs it. MatMulNBits (the ONNX Runtime form) is a contrib op: ERROR.
  typing       trt11 is strongly typed only. Decision: inputs of one op that mix float precisions
               under one type constraint are an ERROR (a weakly typed builder would insert the cast,
               a strongly typed one cannot); a graph whose matrix products are all float32 gets a
               WARNING on trt11 (there is no --fp16 flag left: the engine runs fp32; export with
               --dtype fp16 to get half precision), or an ERROR when the manifest claims fp16, and
               an INFO on trt10 (build with --fp16).

One finding per line, `SEVERITY <node>: <message> [<graph file>]`; any ERROR fails the lint.
"""

from __future__ import annotations

import ast
import copy
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import UserError
from .manifest import Manifest
from .profile import Profile

# TensorRT's ITopKLayer takes K up to 3840 (onnx-tensorrt docs/operators.md writes "less than 3840";
# the TensorRT API docs and the design card say at most 3840: we use <= 3840).
TOPK_MAX_K = 3840
VISUAL_INPUT = "visual_embeds"  # prefill input whose axis 1 is the visual-token count
VISUAL_AXIS = 1

# -- target data ------------------------------------------------------------------------------------
# Ops the ONNX parser imports: the operators table of onnx/onnx-tensorrt docs/operators.md for
# TensorRT 10.15, rows marked "Y". NonZero is in it but refused separately (see module docstring).
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
_FLOAT_DTYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})
_MATMUL_OPS = ("MatMul", "Gemm", "Conv", "Attention", "Einsum")


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


# -- findings ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    severity: str  # "ERROR" | "WARNING" | "INFO"
    node: str  # node name (a path for nodes in subgraphs / expanded functions), or the graph file
    message: str
    graph: str = ""

    def line(self) -> str:
        where = f" [{self.graph}]" if self.graph and self.graph != self.node else ""
        return f"{self.severity} {self.node}: {self.message}{where}"


@dataclass
class LintReport:
    target: str
    graphs: list = field(default_factory=list)
    findings: list = field(default_factory=list)

    @property
    def errors(self) -> list:
        return [f for f in self.findings if f.severity == "ERROR"]

    @property
    def warnings(self) -> list:
        return [f for f in self.findings if f.severity == "WARNING"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        return (f"lint {self.target}: {len(self.graphs)} graph(s), {len(self.errors)} error(s), "
                f"{len(self.warnings)} warning(s): {verdict}")


# -- the HalfV TopK bound (export calls this before writing anything) ------------------------------
def halfv_topk_sizes(profile: Profile, n: int) -> dict:
    """K of every TopK the HalfV graphs hold at n visual tokens (anchors, coverage/sort, SSR)."""
    sizes = {"ivr_keep": profile.ivr_count(n), "ivr_anchors": profile.anchor_count(n)}
    if profile.ssr_mode == "topk":
        sizes["ssr_keep"] = profile.ssr_count(n)
    return sizes


def max_visual_tokens_for_topk(profile: Profile, upper: int) -> int:
    """The largest n <= upper whose TopKs all stay within TOPK_MAX_K (keep counts grow with n)."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if max(halfv_topk_sizes(profile, mid).values()) <= TOPK_MAX_K:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_topk_bound(profile: Profile | None, max_visual_tokens: int) -> dict:
    """Refuse a profile whose TopK K exceeds TensorRT's limit at the largest visual-token count.

    Returns the K of each TopK at that count. Raises UserError naming the exact largest count that fits.
    """
    if profile is None:
        return {}
    sizes = halfv_topk_sizes(profile, max_visual_tokens)
    stage, k = max(sizes.items(), key=lambda item: item[1])
    if k <= TOPK_MAX_K:
        return sizes
    limit = max_visual_tokens_for_topk(profile, max_visual_tokens)
    hint = f" (Qwen2.5-VL: max pixels <= {limit * 28 * 28})" if profile.backbone == "qwen2_5_vl" else ""
    where = {"ivr_keep": f"the IVR step (keep {profile.ivr_keep})", "ivr_anchors": "the IVR anchors",
             "ssr_keep": f"the SSR step (keep {profile.ssr_keep})"}[stage]
    raise UserError(
        f"TensorRT TopK takes K <= {TOPK_MAX_K}, but {max_visual_tokens} visual tokens give K = {k} at "
        f"{where}: keep the visual-token max <= {limit}{hint}")


# -- function expansion -----------------------------------------------------------------------------
def _node_label(node: onnx.NodeProto, index: int, prefix: str = "") -> str:
    name = node.name or f"{node.op_type}#{index}"
    if not prefix:
        return name
    return prefix + (name if name.startswith("/") else "/" + name)


def _rename_graph(graph: onnx.GraphProto, rename) -> None:
    """Rename every tensor reference in a subgraph, in place (subgraph names are function-local)."""
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        vi.name = rename(vi.name)
    for init in graph.initializer:
        init.name = rename(init.name)
    for node in graph.node:
        _rename_node(node, rename)


def _rename_node(node: onnx.NodeProto, rename) -> None:
    node.input[:] = [rename(n) if n else n for n in node.input]
    node.output[:] = [rename(n) if n else n for n in node.output]
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            _rename_graph(attr.g, rename)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for g in attr.graphs:
                _rename_graph(g, rename)


def expand_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model with local-function calls replaced by their bodies (recursively).

    Unlike onnx.inliner, expanded nodes keep the call site in their name (`/halfv/ivr/fps/Loop`), so a
    finding inside a function still points at the HalfV step it belongs to.
    """
    functions = {(f.domain, f.name): f for f in model.functions}
    if not functions:
        return model
    out = copy.deepcopy(model)
    counter = [0]

    def expand(nodes, depth=0):
        result = []
        for index, node in enumerate(nodes):
            fn = functions.get((node.domain, node.op_type))
            if fn is None:
                result.append(node)
                continue
            if depth > 16:
                raise UserError(f"local function {node.op_type} recurses")
            counter[0] += 1
            call = _node_label(node, index)
            mapping = dict(zip(fn.input, node.input))
            mapping.update(zip(fn.output, node.output))
            tag = f"{call}#{counter[0]}/"

            def rename(name, mapping=mapping, tag=tag):
                return mapping.get(name, tag + name)

            call_attrs = {a.name: a for a in node.attribute}
            defaults = {a.name: a for a in fn.attribute_proto}
            body = []
            for inner_index, inner in enumerate(fn.node):
                inner = copy.deepcopy(inner)
                _rename_node(inner, rename)
                inner.name = _node_label(inner, inner_index, call)
                attrs = []
                for attr in inner.attribute:
                    if attr.ref_attr_name:  # attribute forwarded from the call site
                        source = call_attrs.get(attr.ref_attr_name) or defaults.get(attr.ref_attr_name)
                        if source is None:
                            continue
                        forwarded = copy.deepcopy(source)
                        forwarded.name = attr.name
                        attr = forwarded
                    attrs.append(attr)
                del inner.attribute[:]
                inner.attribute.extend(attrs)
                body.append(inner)
            result.extend(expand(body, depth + 1))
        return result

    expanded = expand(list(out.graph.node))
    del out.graph.node[:]
    out.graph.node.extend(expanded)
    del out.functions[:]
    return out


# -- walking graphs ---------------------------------------------------------------------------------
@dataclass
class _Scope:
    """Every tensor of a model (main graph and subgraphs): producers, constants, types."""

    producers: dict = field(default_factory=dict)  # tensor -> (label, node)
    constants: dict = field(default_factory=dict)  # tensor -> TensorProto (initializers, Constant)
    types: dict = field(default_factory=dict)  # tensor -> onnx.TypeProto
    graph_inputs: set = field(default_factory=set)  # data inputs (main graph and subgraph inputs)


def _walk(graph: onnx.GraphProto, prefix: str = ""):
    """Yield (label, node) over a graph and all its subgraphs, depth first."""
    for index, node in enumerate(graph.node):
        label = _node_label(node, index, prefix)
        yield label, node
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                yield from _walk(sub, f"{label}/{attr.name}")


def _all_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                yield from _all_graphs(sub)


def _build_scope(model: onnx.ModelProto) -> _Scope:
    scope = _Scope()
    for graph in _all_graphs(model.graph):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type"):
                scope.types.setdefault(vi.name, vi.type)
        for init in graph.initializer:
            scope.constants[init.name] = init
        initializer_names = {i.name for i in graph.initializer}
        scope.graph_inputs.update(vi.name for vi in graph.input if vi.name not in initializer_names)
    for label, node in _walk(model.graph):
        for out in node.output:
            if out:
                scope.producers[out] = (label, node)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    scope.constants[node.output[0]] = attr.t
    return scope


def _shape_of(type_proto) -> list | None:
    if type_proto is None or not type_proto.HasField("tensor_type"):
        return None
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def _dtype_name(dtype: int) -> str:
    name = helper.tensor_dtype_to_string(dtype).replace("TensorProto.", "").lower()
    return {"float": "float32", "double": "float64"}.get(name, name)


# -- evaluating K -----------------------------------------------------------------------------------
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


def _attr(node, name, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


class ShapeEvaluator:
    """Computes small integer tensors (a TopK's K) from graph-input shapes with the dims bound.

    Exporters compute K as Shape -> Gather -> Mul/Div/Add... on an input's symbolic size; this
    evaluates that cone with numpy. Data inputs, loop state and unknown ops raise Unresolved.
    """

    def __init__(self, scope: _Scope, bindings: dict, base_dir: Path | None = None):
        self.scope, self.bindings, self.base_dir = scope, bindings, base_dir
        self.memo: dict = {}

    def value(self, name: str) -> np.ndarray:
        if name not in self.memo:
            self.memo[name] = self._compute(name)
        return self.memo[name]

    def shape(self, name: str) -> list[int]:
        dims = _shape_of(self.scope.types.get(name))
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
        start, end = _attr(node, "start", 0), _attr(node, "end", rank)
        return shape[slice(start, end)]

    def _op_Size(self, node, _inputs):
        return np.array(int(np.prod(self.shape(node.input[0]))), dtype=np.int64)

    # plain tensor ops
    def _op_Constant(self, node, _inputs):
        for key in ("value_int", "value_ints", "value_float", "value_floats"):
            value = _attr(node, key)
            if value is not None:
                return np.array(value)
        raise Unresolved(f"Constant {node.name} has no numeric value")

    def _op_Identity(self, node, inputs):
        return inputs[0]

    def _op_Cast(self, node, inputs):
        return inputs[0].astype(helper.tensor_dtype_to_np_dtype(_attr(node, "to")))

    def _op_Gather(self, node, inputs):
        return np.take(inputs[0], inputs[1], axis=_attr(node, "axis", 0))

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
        return np.concatenate([np.atleast_1d(i) for i in inputs if i is not None], axis=_attr(node, "axis", 0))

    def _op_Slice(self, node, inputs):
        data = inputs[0]
        if len(inputs) > 1:
            starts, ends = inputs[1], inputs[2]
            axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
            steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
        else:
            starts, ends = _attr(node, "starts"), _attr(node, "ends")
            axes, steps = _attr(node, "axes", list(range(len(starts)))), [1] * len(starts)
        index = [slice(None)] * data.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            index[int(a)] = slice(int(s), int(e), int(st))
        return data[tuple(index)]

    def _op_Div(self, node, inputs):
        return _int_div(inputs[0], inputs[1])

    def _op_Mod(self, node, inputs):
        return np.fmod(inputs[0], inputs[1]) if _attr(node, "fmod", 0) else np.mod(inputs[0], inputs[1])

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
        value = _attr(node, "value")
        fill = numpy_helper.to_array(value) if value is not None else np.zeros(1, dtype=np.float32)
        return np.full([int(v) for v in inputs[0]], fill.reshape(-1)[0], dtype=fill.dtype)

    def _op_Range(self, node, inputs):
        return np.arange(inputs[0], inputs[1], inputs[2])

    def _op_Expand(self, node, inputs):
        return inputs[0] * np.ones([int(v) for v in inputs[1]], dtype=inputs[0].dtype)

    def _reduce(self, fn, node, inputs):
        axes = _axes(node, inputs)
        keep = bool(_attr(node, "keepdims", 1))
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


BLOCKED_DQ_OPSET = 21  # DequantizeLinear's block_size attribute (and the INT4 type) are opset 21


def _has_nonzero(tensor: onnx.TensorProto, base_dir: Path | None) -> bool:
    """Whether a (zero-point) tensor holds a non-zero value; an unreadable one counts as non-zero."""
    try:
        return bool(np.any(numpy_helper.to_array(tensor, base_dir=str(base_dir or "")) != 0))
    except Exception:  # external data missing or a type numpy cannot hold
        return True


# -- the rules --------------------------------------------------------------------------------------
class _GraphLint:
    """Lints one model for one target; findings accumulate in self.findings."""

    def __init__(self, model: onnx.ModelProto, target: Target, graph: str, visual_range: dict | None,
                 dtype: str | None, base_dir: Path | None):
        self.target, self.graph, self.base_dir, self.dtype = target, graph, base_dir, dtype
        self.visual_range = visual_range
        self.findings: list[Finding] = []
        self.model = expand_functions(model)
        try:
            self.model = onnx.shape_inference.infer_shapes(self.model, data_prop=True)
        except Exception as exc:  # a graph onnx cannot infer still gets the structural checks
            self.add("WARNING", graph, f"onnx shape inference failed ({str(exc).splitlines()[0]}); "
                                       f"dtype and shape checks are partial")
        self.scope = _build_scope(self.model)
        self.opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), None)
        self.visual_dims = self._visual_dims()

    def add(self, severity, node, message):
        self.findings.append(Finding(severity, node, message, self.graph))

    def _visual_dims(self) -> set:
        dims = set()
        for vi in self.model.graph.input:
            shape = _shape_of(vi.type)
            if vi.name == VISUAL_INPUT and shape and len(shape) > VISUAL_AXIS and isinstance(shape[VISUAL_AXIS], str):
                dims.add(shape[VISUAL_AXIS])
        return dims

    def run(self) -> list[Finding]:
        self.check_opset()
        for label, node in _walk(self.model.graph):
            self.check_op(label, node)
        self.check_dtypes()
        self.check_precision()
        return self.findings

    # opset and ops
    def _blocked_dq(self) -> bool:
        return any(n.op_type == "DequantizeLinear" and _attr(n, "block_size", 0) for _, n in _walk(self.model.graph))

    def check_opset(self):
        lo, hi = self.target.opset
        if self.opset is None:
            self.add("ERROR", self.graph, "no default-domain opset import")
        elif self.opset == BLOCKED_DQ_OPSET and hi < BLOCKED_DQ_OPSET and self._blocked_dq() \
                and TensorProto.INT4 in self.target.block_dtypes:
            self.add("WARNING", self.graph, f"opset {self.opset} is past the {lo}..{hi} the {self.target.label} "
                                            f"parser documents; blocked DequantizeLinear (INT4 weight-only, parsed "
                                            f"since TensorRT 10.0) only exists from opset {BLOCKED_DQ_OPSET}: "
                                            f"verify the parse on your TensorRT version")
        elif not lo <= self.opset <= hi:
            self.add("ERROR", self.graph, f"opset {self.opset} is outside {lo}..{hi}, the range the "
                                          f"{self.target.label} ONNX parser accepts")

    def check_op(self, label, node):
        if node.domain not in ("", "ai.onnx"):
            hint = ("; export with --weights-format qdq for TensorRT"
                    if node.op_type == "MatMulNBits" else "")
            self.add("ERROR", label, f"op {node.domain}::{node.op_type} is not an ONNX op and no plugin "
                                     f"for it ships with {self.target.label}{hint}")
            return
        if node.op_type not in self.target.ops:
            self.add("ERROR", label, f"op {node.op_type} is not supported by the {self.target.label} ONNX "
                                     f"parser (onnx-tensorrt operators table)")
            return
        check = getattr(self, f"check_{node.op_type}", None)
        if check is not None:
            check(label, node)

    def check_NonZero(self, label, node):
        self.add("ERROR", label, "NonZero has a data-dependent output shape (needs an output allocator, "
                                 "no static memory plan or CUDA graph); select with TopK and a shape-derived K")

    def check_TopK(self, label, node):
        if _attr(node, "sorted", 1) != 1:
            self.add("ERROR", label, "TopK needs sorted=1 in TensorRT (sorted=0 is rejected)")
        rank = len(_shape_of(self.scope.types.get(node.input[0])) or []) or None
        axis = _attr(node, "axis", -1)
        if rank and (axis % rank) < rank - 4:
            self.add("ERROR", label, f"TopK axis {axis} of a rank-{rank} input is not among the last 4 dims")
        if len(node.input) < 2 or not node.input[1]:  # TopK-1: K is the attribute k
            self._check_k(label, _attr(node, "k"), "attribute k")
            return
        k_name = node.input[1]
        if k_name in self.scope.constants:
            k = int(np.asarray(ShapeEvaluator(self.scope, {}, self.base_dir).value(k_name)).reshape(-1)[0])
            self._check_k(label, k, "constant K")
            return
        self._check_shape_k(label, k_name)

    def _check_k(self, label, k, what):
        if k is not None and k > TOPK_MAX_K:
            self.add("ERROR", label, f"{what} = {k} exceeds TensorRT's TopK limit {TOPK_MAX_K}")

    def _k_at(self, k_name, n, probe):
        """K with the visual dims at n and every other input dim at `probe`."""
        bindings = {}
        for vi in self.model.graph.input:
            for d in _shape_of(vi.type) or []:
                if isinstance(d, str):
                    bindings[d] = n if d in self.visual_dims else probe
        value = ShapeEvaluator(self.scope, bindings, self.base_dir).value(k_name)
        return int(np.asarray(value).reshape(-1)[0])

    def _check_shape_k(self, label, k_name):
        if not self.visual_range:
            self.add("WARNING", label, "K is computed at run time and the manifest gives no visual_tokens "
                                       "range: cannot check K <= 3840")
            return
        n_max = int(self.visual_range["max"])
        try:
            # Two probe values for the dims the manifest does not bound (batch, text lengths): a K that
            # changes with them is not bounded by the visual-token range.
            k, k_other = self._k_at(k_name, n_max, 1), self._k_at(k_name, n_max, 7)
        except Unresolved as exc:
            self.add("WARNING", label, f"cannot evaluate K from its shape expression ({exc}): "
                                       f"K <= {TOPK_MAX_K} unchecked")
            return
        except Exception as exc:  # malformed arithmetic in the K cone
            self.add("WARNING", label, f"evaluating K failed ({type(exc).__name__}: {exc}): "
                                       f"K <= {TOPK_MAX_K} unchecked")
            return
        if k != k_other:
            self.add("WARNING", label, f"K depends on dims other than the visual-token count ({k} vs "
                                       f"{k_other}); K <= {TOPK_MAX_K} unchecked")
            return
        if k <= TOPK_MAX_K:
            return
        n_min = int(self.visual_range.get("min", 1))
        counts = list(range(n_min, n_max + 1))
        # Largest visual count whose K fits (K grows with the count).
        fits = bisect_right(counts, 0, key=lambda n: 0 if self._k_at(k_name, n, 1) <= TOPK_MAX_K else 1)
        limit = f"K <= {TOPK_MAX_K} holds up to {counts[fits - 1]} visual tokens" if fits else \
            f"K exceeds {TOPK_MAX_K} even at the manifest min ({n_min})"
        self.add("ERROR", label, f"K = {k} at {n_max} visual tokens (manifest max) exceeds TensorRT's TopK "
                                 f"limit {TOPK_MAX_K}; {limit}")

    def _is_constant(self, name) -> bool:
        return name in self.scope.constants

    def check_If(self, label, node):
        if self._is_constant(node.input[0]):
            return  # a build-time constant condition: TensorRT keeps one branch
        then_g, else_g = _attr(node, "then_branch"), _attr(node, "else_branch")
        for i, (a, b) in enumerate(zip(then_g.output, else_g.output)):
            if a.name == b.name:
                self.add("ERROR", label, f"If output {i}: both branches name it '{a.name}' (TensorRT needs "
                                         f"distinct names)")
            sa, sb = _shape_of(self.scope.types.get(a.name, a.type)), _shape_of(self.scope.types.get(b.name, b.type))
            if sa is None or sb is None:
                self.add("WARNING", label, f"If output {i}: branch shapes unknown, cannot check they are equal")
            elif len(sa) != len(sb) or any(x != y or x is None for x, y in zip(sa, sb)):
                self.add("ERROR", label, f"If output {i}: branch shapes differ ({_fmt(sa)} vs {_fmt(sb)}); "
                                         f"TensorRT needs equal shapes: choose the branch at export "
                                         f"(static Slice/Gather/Concat)")

    def check_Loop(self, label, node):
        body = _attr(node, "body")
        carried = max(len(node.input) - 2, 0)
        scans = len(body.output) - 1 - carried
        trip = node.input[0] if node.input else ""
        cond = node.input[1] if len(node.input) > 1 else ""
        if scans > 0:
            if not trip or not self._is_constant(trip):
                self.add("ERROR", label, f"Loop has {scans} scan output(s) whose length follows a run-time "
                                         f"trip count: TensorRT needs a fixed scan-output length (carry state, "
                                         f"no scan outputs)")
            elif cond and not self._is_constant(cond):
                self.add("ERROR", label, f"Loop has {scans} scan output(s) and a run-time exit condition: "
                                         f"their length is dynamic")
        for i in range(carried):
            sin = _shape_of(self.scope.types.get(body.input[2 + i].name, body.input[2 + i].type))
            sout = _shape_of(self.scope.types.get(body.output[1 + i].name, body.output[1 + i].type))
            if sin is not None and sout is not None and sin != sout and all(
                    isinstance(d, int) for d in sin + sout):
                self.add("ERROR", label, f"Loop-carried '{body.input[2 + i].name}' changes shape "
                                         f"({_fmt(sin)} -> {_fmt(sout)}); TensorRT needs it fixed")

    def check_CumSum(self, label, node):
        if len(node.input) > 1 and not self._is_constant(node.input[1]):
            self.add("ERROR", label, "CumSum axis must be a build-time constant in TensorRT")

    def check_ScatterND(self, label, node):
        if _attr(node, "reduction", b"none") not in (b"none", "none"):
            self.add("ERROR", label, "ScatterND with a reduction is not supported by TensorRT")

    def check_DequantizeLinear(self, label, node):
        block = _attr(node, "block_size", 0)
        if not block:
            return  # per-tensor / per-axis: the parser's ordinary Q/DQ rules
        data = self.scope.constants.get(node.input[0])
        if data is None:
            self.add("ERROR", label, "blocked DequantizeLinear of a run-time tensor: TensorRT blocks weights only")
            return
        if data.data_type not in self.target.block_dtypes:
            allowed = ", ".join(_dtype_name(t) for t in sorted(self.target.block_dtypes)) or "none"
            self.add("ERROR", label, f"blocked DequantizeLinear of {_dtype_name(data.data_type)}: "
                                     f"{self.target.label} blocks {allowed}")
        if len(data.dims) != 2:
            self.add("ERROR", label, f"blocked DequantizeLinear of a rank-{len(data.dims)} weight: TensorRT "
                                     f"takes 2-D weights")
        if len(node.input) < 2 or node.input[1] not in self.scope.constants:
            self.add("ERROR", label, "blocked DequantizeLinear scales must be build-time constants")
        if len(node.input) > 2 and node.input[2]:
            zero = self.scope.constants.get(node.input[2])
            if zero is None or _has_nonzero(zero, self.base_dir):
                self.add("ERROR", label, "DequantizeLinear zero point must be zero: TensorRT quantization is "
                                         "symmetric")

    def check_Attention(self, label, node):
        if any(node.input[4:6]) or any(node.output[1:]):
            self.add("ERROR", label, "Attention: past_key/past_value inputs and present/qk outputs are not "
                                     "supported by TensorRT's parser")

    # dtypes and precision
    def _tensor_sites(self):
        """(tensor name, dtype, where) for every typed tensor: I/O, initializers, inferred values."""
        producers = self.scope.producers
        for name, tp in self.scope.types.items():
            where = producers[name][0] if name in producers else self.graph
            yield name, tp.tensor_type.elem_type, where
        for name, tensor in self.scope.constants.items():
            where = producers[name][0] if name in producers else self.graph
            yield name, tensor.data_type, where
        for label, node in _walk(self.model.graph):
            if node.op_type in ("Cast", "CastLike") or node.op_type == "EyeLike":
                to = _attr(node, "to") or _attr(node, "dtype")
                if to:
                    yield node.output[0], to, label
            if node.op_type == "ConstantOfShape":
                value = _attr(node, "value")
                if value is not None:
                    yield node.output[0], value.data_type, label

    def check_dtypes(self):
        seen = set()
        for name, dtype, where in self._tensor_sites():
            if not dtype or dtype in self.target.dtypes or (where, dtype) in seen:
                continue
            seen.add((where, dtype))
            self.add("ERROR", where, f"tensor '{name}' is {_dtype_name(dtype)}, a type TensorRT does not have")

    def _elem_type(self, name):
        if name in self.scope.types:
            return self.scope.types[name].tensor_type.elem_type
        if name in self.scope.constants:
            return self.scope.constants[name].data_type
        return None

    def check_precision(self):
        matmul_types = {}
        for label, node in _walk(self.model.graph):
            if node.domain not in ("", "ai.onnx"):
                continue
            self._check_type_constraints(label, node)
            if node.op_type in _MATMUL_OPS and node.input:
                dtype = self._elem_type(node.input[0])
                if dtype in _FLOAT_DTYPES:
                    matmul_types[dtype] = matmul_types.get(dtype, 0) + 1
        if not matmul_types:
            return
        counts = ", ".join(f"{_dtype_name(t)} x{n}" for t, n in sorted(matmul_types.items()))
        self.add("INFO", self.graph, f"matrix-product precision: {counts}")
        if set(matmul_types) == {TensorProto.FLOAT}:
            if self.target.strongly_typed and self.dtype == "fp16":
                self.add("ERROR", self.graph, "the manifest says fp16 but every matrix product is float32: a "
                                              "strongly typed build keeps them fp32 (the half precision relied "
                                              "on a builder flag TensorRT 11 no longer has)")
            elif self.target.strongly_typed:
                self.add("WARNING", self.graph, "every matrix product is float32 and TensorRT 11 is strongly "
                                                "typed (no --fp16 flag): the engine runs fp32; export with "
                                                "--dtype fp16 for half precision")
            else:
                self.add("INFO", self.graph, "float32 graph: build with --fp16 (weak typing) for fp16 kernels")

    def _check_type_constraints(self, label, node):
        if self.opset is None:
            return
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain)
        except Exception:
            return
        formals = list(schema.inputs)
        if not formals:
            return
        by_param: dict = {}
        for i, name in enumerate(node.input):
            if not name:
                continue
            formal = formals[min(i, len(formals) - 1)]
            dtype = self._elem_type(name)
            if dtype in _FLOAT_DTYPES:
                by_param.setdefault(formal.type_str, set()).add(dtype)
        for param, dtypes in by_param.items():
            if len(dtypes) > 1:
                names = " and ".join(sorted(_dtype_name(d) for d in dtypes))
                why = ("a strongly typed network cannot insert the cast" if self.target.strongly_typed
                       else "this is not valid ONNX")
                self.add("ERROR", label, f"{node.op_type} mixes {names} inputs under type {param}: {why}; "
                                         f"add an explicit Cast")


def _fmt(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# -- entry points -----------------------------------------------------------------------------------
def lint_model(model: onnx.ModelProto, target: str | Target, graph: str = "model.onnx",
               visual_tokens: dict | None = None, dtype: str | None = None,
               base_dir: Path | None = None) -> list[Finding]:
    """Findings for one model. visual_tokens: the manifest's {min, opt, max} range (bounds K)."""
    target = target if isinstance(target, Target) else get_target(target)
    return _GraphLint(model, target, graph, visual_tokens, dtype, base_dir).run()


def load_graph(path: Path) -> onnx.ModelProto:
    """The graph structure without its external weights (lint never needs the big tensors)."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise UserError(f"graph file not found: {path}") from None
    except Exception as exc:
        raise UserError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None


def lint_manifest(manifest: Manifest, target: str) -> LintReport:
    tgt = get_target(target)
    report = LintReport(target=tgt.name)
    graphs = manifest.get("graphs") or {}
    if not graphs:
        raise UserError(f"{manifest.folder}: manifest lists no graphs")
    for role, entry in graphs.items():
        path = manifest.folder / entry["file"]
        report.graphs.append(entry["file"])
        model = load_graph(path)
        report.findings.extend(lint_model(model, tgt, entry["file"], manifest.get("visual_tokens"),
                                          manifest.get("dtype"), path.parent))
    return report


def lint_graphs(graphs_dir, target: str) -> LintReport:
    """Lint every graph of a graphs folder (manifest verified first) for `target` (trt10 | trt11)."""
    get_target(target)
    return lint_manifest(Manifest.load(graphs_dir), target)
