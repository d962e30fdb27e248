"""Give the pruning nodes findable names: /halfv/ivr/<scope>/<Op>_<n> and /halfv/ssr/<scope>/<Op>_<n>.

How a node is traced to the selection code: the dynamo exporter stores each ONNX node's PyTorch stack
trace in `metadata_props["pkg.torch.onnx.stack_trace"]` (nodes inlined from an onnxscript function,
such as the FPS Loop, inherit it from their call site). torch.export keeps only frames named
`forward` in that trace, plus "stack-trace anchors": the functions registered below (the mechanism
`torch.fx.traceback.annotate_fn` uses). Registering the reference's pruning functions as anchors
makes their frames appear, and `method/decoder.py` runs each pruning step in a function of its own
(`ivr_step`, `ssr_topk_step`). Wrapping the steps in ad-hoc nn.Modules does not work (modules that
are not registered under the exported root leave no trace in nn_module_stack), and
`fx.traceback.annotate` metadata is dropped by the exporter's decomposition pass.

  stage  <- the outermost of ivr_step / ssr_topk_step in the trace; SSR freeze: nodes whose innermost
            anchor is frozen_span_layer_step itself (the span split, mask and merge, not the attention)
  scope  <- the innermost anchored function (e.g. anchor_relevance, sorted_topk), or the custom op
            (fps_coverage) for nodes its ONNX translation produced
"""

from __future__ import annotations

import re

import onnx_ir as ir

from ..method import decoder, layers, selection

STACK_KEY = "pkg.torch.onnx.stack_trace"
FX_KEY = "pkg.torch.onnx.fx_node"
FRAME = re.compile(r'File "[^"]*", line \d+, in (\w+)')

STAGES = {"ivr_step": "ivr", "ssr_topk_step": "ssr"}
FREEZE = "frozen_span_layer_step"
ANCHORS = (decoder.ivr_step, decoder.ssr_topk_step, decoder.select_ivr, decoder.keep_visual_rows,
           selection.anchor_relevance, selection.last_token_attention, selection.sorted_topk,
           selection.normalized_features, selection.oneshot_coverage, selection._distance_to_anchors,
           layers.frozen_span_layer_step, layers.attention, layers.causal_mask)
CUSTOM_OPS = {"halfv.fps_coverage": "fps_coverage"}


def register_anchors() -> None:
    """Make torch.export keep the frames of the reference's pruning functions (call before exporting)."""
    from torch.fx.proxy import _register_stack_trace_anchor

    for fn in ANCHORS:
        _register_stack_trace_anchor(fn)


def classify(node: ir.Node) -> tuple[str, str] | None:
    """(stage, scope) of a node that belongs to a pruning step, else None."""
    frames = [f for f in FRAME.findall(node.metadata_props.get(STACK_KEY, "")) if f != "forward"]
    fx = node.metadata_props.get(FX_KEY, "")
    custom = next((name for target, name in CUSTOM_OPS.items() if target in fx), None)
    stage = next((STAGES[f] for f in frames if f in STAGES), None)
    if stage is None and frames and frames[-1] == FREEZE:
        return "ssr", "freeze"
    if stage is None:
        return None
    return stage, custom or frames[-1]


def _nodes_with_subgraphs(graph: ir.Graph):
    """Nodes of a graph in order, each followed by the nodes of its subgraphs (Loop bodies)."""
    for node in graph:
        yield node, None
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                for inner, _ in _nodes_with_subgraphs(attr.value):
                    yield inner, node


def name_pruning_nodes(model: ir.Model) -> dict:
    """Rename the pruning nodes in place (graph order, so names are deterministic); counts per stage."""
    counters: dict = {}
    renamed = {"ivr": 0, "ssr": 0}
    parents: dict = {}
    for node, parent in _nodes_with_subgraphs(model.graph):
        found = classify(node)
        if found is None and parent is not None and parent in parents:
            found = parents[parent]  # Loop bodies belong to their Loop
        if found is None:
            continue
        parents[node] = found
        stage, scope = found
        inner = f"{parents[parent][1]}/loop" if parent is not None and parent in parents else scope
        key = (stage, inner, node.op_type)
        counters[key] = counters.get(key, -1) + 1
        node.name = f"/halfv/{stage}/{inner}/{node.op_type}_{counters[key]}"
        renamed[stage] += 1
    return renamed
