"""Walking a model: nodes of the main graph and every subgraph, local functions expanded in place, and the
scope of every tensor (producer, constant value, type) gathered from value infos, initializers and
Constant nodes. Node labels are paths (`/halfv/ivr/fps/Loop/body/...`) so a finding names the HalfV step
it belongs to. Imports onnx and core.errors only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import onnx
from onnx import helper

from ..errors import UserError


def node_label(node: onnx.NodeProto, index: int, prefix: str = "") -> str:
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
            call = node_label(node, index)
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
                inner.name = node_label(inner, inner_index, call)
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


@dataclass
class Scope:
    """Every tensor of a model (main graph and subgraphs): producers, constants, types."""

    producers: dict = field(default_factory=dict)  # tensor -> (label, node)
    constants: dict = field(default_factory=dict)  # tensor -> TensorProto (initializers, Constant)
    types: dict = field(default_factory=dict)  # tensor -> onnx.TypeProto
    graph_inputs: set = field(default_factory=set)  # data inputs (main graph and subgraph inputs)


def walk_nodes(graph: onnx.GraphProto, prefix: str = ""):
    """Yield (label, node) over a graph and all its subgraphs, depth first."""
    for index, node in enumerate(graph.node):
        label = node_label(node, index, prefix)
        yield label, node
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                yield from walk_nodes(sub, f"{label}/{attr.name}")


def all_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                yield from all_graphs(sub)


def build_scope(model: onnx.ModelProto) -> Scope:
    scope = Scope()
    for graph in all_graphs(model.graph):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type"):
                scope.types.setdefault(vi.name, vi.type)
        for init in graph.initializer:
            scope.constants[init.name] = init
        initializer_names = {i.name for i in graph.initializer}
        scope.graph_inputs.update(vi.name for vi in graph.input if vi.name not in initializer_names)
    for label, node in walk_nodes(model.graph):
        for out in node.output:
            if out:
                scope.producers[out] = (label, node)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    scope.constants[node.output[0]] = attr.t
    return scope


def shape_of(type_proto) -> list | None:
    if type_proto is None or not type_proto.HasField("tensor_type"):
        return None
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def node_attr(node, name, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default
