"""The rules: what makes a graph fail a TensorRT version's ONNX parse or build, checked node by node.

TensorRT cannot run here (no GPU, no TensorRT libraries on PyPI), so these check on the CPU, with onnx
only, the rules that make a parse or a build fail or make an engine misbehave:

  opset        default-domain opset inside the target's range
  ops          every op in the target's parser allowlist (local functions are expanded first, as the
               parser does since TensorRT 9); ops of other domains need plugins we do not ship
  dtypes       only tensor types TensorRT has (no float64, string, complex, int16, uint16/32/64)
  TopK         sorted=1, axis within the last 4 dims, and K <= core.limits.TOPK_MAX_K at the LARGEST
               visual-token count of the manifest's range; a K computed from shapes is evaluated from
               its expression (shapes.py)
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

Each rule is a method of _GraphLint: `check_<Op>` runs on every node of that op type (the rule table is
the set of those methods); check_opset, check_dtypes and check_precision run once per graph. Imports
targets, report, walker and shapes (all below it in the package), core.limits, numpy and onnx.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..limits import TOPK_MAX_K, largest_within_topk
from .report import Finding
from .shapes import ShapeEvaluator, Unresolved
from .targets import Target, get_target
from .walker import build_scope, expand_functions, node_attr, shape_of, walk_nodes

VISUAL_INPUT = "visual_embeds"  # prefill input whose axis 1 is the visual-token count
VISUAL_AXIS = 1
_FLOAT_DTYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})
_MATMUL_OPS = ("MatMul", "Gemm", "Conv", "Attention", "Einsum")

BLOCKED_DQ_OPSET = 21  # DequantizeLinear's block_size attribute (and the INT4 type) are opset 21


def _has_nonzero(tensor: onnx.TensorProto, base_dir: Path | None) -> bool:
    """Whether a (zero-point) tensor holds a non-zero value; an unreadable one counts as non-zero."""
    try:
        return bool(np.any(numpy_helper.to_array(tensor, base_dir=str(base_dir or "")) != 0))
    except Exception:  # external data missing or a type numpy cannot hold
        return True


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
        self.scope = build_scope(self.model)
        self.opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), None)
        self.visual_dims = self._visual_dims()

    def add(self, severity, node, message):
        self.findings.append(Finding(severity, node, message, self.graph))

    def _visual_dims(self) -> set:
        dims = set()
        for vi in self.model.graph.input:
            shape = shape_of(vi.type)
            if vi.name == VISUAL_INPUT and shape and len(shape) > VISUAL_AXIS and isinstance(shape[VISUAL_AXIS], str):
                dims.add(shape[VISUAL_AXIS])
        return dims

    def run(self) -> list[Finding]:
        self.check_opset()
        for label, node in walk_nodes(self.model.graph):
            self.check_op(label, node)
        self.check_dtypes()
        self.check_precision()
        return self.findings

    # opset and ops
    def _blocked_dq(self) -> bool:
        return any(n.op_type == "DequantizeLinear" and node_attr(n, "block_size", 0)
                   for _, n in walk_nodes(self.model.graph))

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
        if node_attr(node, "sorted", 1) != 1:
            self.add("ERROR", label, "TopK needs sorted=1 in TensorRT (sorted=0 is rejected)")
        rank = len(shape_of(self.scope.types.get(node.input[0])) or []) or None
        axis = node_attr(node, "axis", -1)
        if rank and (axis % rank) < rank - 4:
            self.add("ERROR", label, f"TopK axis {axis} of a rank-{rank} input is not among the last 4 dims")
        if len(node.input) < 2 or not node.input[1]:  # TopK-1: K is the attribute k
            self._check_k(label, node_attr(node, "k"), "attribute k")
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
            for d in shape_of(vi.type) or []:
                if isinstance(d, str):
                    bindings[d] = n if d in self.visual_dims else probe
        value = ShapeEvaluator(self.scope, bindings, self.base_dir).value(k_name)
        return int(np.asarray(value).reshape(-1)[0])

    def _check_shape_k(self, label, k_name):
        if not self.visual_range:
            self.add("WARNING", label, "K is computed at run time and the manifest gives no visual_tokens "
                                       f"range: cannot check K <= {TOPK_MAX_K}")
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
        fits = largest_within_topk(lambda n: self._k_at(k_name, n, 1), n_max, n_min)
        limit = f"K <= {TOPK_MAX_K} holds up to {fits} visual tokens" if fits is not None else \
            f"K exceeds {TOPK_MAX_K} even at the manifest min ({n_min})"
        self.add("ERROR", label, f"K = {k} at {n_max} visual tokens (manifest max) exceeds TensorRT's TopK "
                                 f"limit {TOPK_MAX_K}; {limit}")

    def _is_constant(self, name) -> bool:
        return name in self.scope.constants

    def check_If(self, label, node):
        if self._is_constant(node.input[0]):
            return  # a build-time constant condition: TensorRT keeps one branch
        then_g, else_g = node_attr(node, "then_branch"), node_attr(node, "else_branch")
        for i, (a, b) in enumerate(zip(then_g.output, else_g.output)):
            if a.name == b.name:
                self.add("ERROR", label, f"If output {i}: both branches name it '{a.name}' (TensorRT needs "
                                         f"distinct names)")
            sa, sb = shape_of(self.scope.types.get(a.name, a.type)), shape_of(self.scope.types.get(b.name, b.type))
            if sa is None or sb is None:
                self.add("WARNING", label, f"If output {i}: branch shapes unknown, cannot check they are equal")
            elif len(sa) != len(sb) or any(x != y or x is None for x, y in zip(sa, sb)):
                self.add("ERROR", label, f"If output {i}: branch shapes differ ({_fmt(sa)} vs {_fmt(sb)}); "
                                         f"TensorRT needs equal shapes: choose the branch at export "
                                         f"(static Slice/Gather/Concat)")

    def check_Loop(self, label, node):
        body = node_attr(node, "body")
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
            sin = shape_of(self.scope.types.get(body.input[2 + i].name, body.input[2 + i].type))
            sout = shape_of(self.scope.types.get(body.output[1 + i].name, body.output[1 + i].type))
            if sin is not None and sout is not None and sin != sout and all(
                    isinstance(d, int) for d in sin + sout):
                self.add("ERROR", label, f"Loop-carried '{body.input[2 + i].name}' changes shape "
                                         f"({_fmt(sin)} -> {_fmt(sout)}); TensorRT needs it fixed")

    def check_CumSum(self, label, node):
        if len(node.input) > 1 and not self._is_constant(node.input[1]):
            self.add("ERROR", label, "CumSum axis must be a build-time constant in TensorRT")

    def check_ScatterND(self, label, node):
        if node_attr(node, "reduction", b"none") not in (b"none", "none"):
            self.add("ERROR", label, "ScatterND with a reduction is not supported by TensorRT")

    def check_DequantizeLinear(self, label, node):
        block = node_attr(node, "block_size", 0)
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
        for label, node in walk_nodes(self.model.graph):
            if node.op_type in ("Cast", "CastLike") or node.op_type == "EyeLike":
                to = node_attr(node, "to") or node_attr(node, "dtype")
                if to:
                    yield node.output[0], to, label
            if node.op_type == "ConstantOfShape":
                value = node_attr(node, "value")
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
        for label, node in walk_nodes(self.model.graph):
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


def _dtype_name(dtype: int) -> str:
    name = helper.tensor_dtype_to_string(dtype).replace("TensorProto.", "").lower()
    return {"float": "float32", "double": "float64"}.get(name, name)


def lint_model(model: onnx.ModelProto, target: str | Target, graph: str = "model.onnx",
               visual_tokens: dict | None = None, dtype: str | None = None,
               base_dir: Path | None = None) -> list[Finding]:
    """Findings for one model. visual_tokens: the manifest's {min, opt, max} range (bounds K)."""
    target = target if isinstance(target, Target) else get_target(target)
    return _GraphLint(model, target, graph, visual_tokens, dtype, base_dir).run()
