"""How nodes are traced to the pruning steps from the stack traces the exporter records."""

from __future__ import annotations

import onnx_ir as ir

from halfv_export.graphs.naming import STACK_KEY, classify, name_pruning_nodes


def frame(func, file="/pkg/halfv_export/method/decoder.py", line=1):
    return f'File "{file}", line {line}, in {func}\n    code()'


def node(op, *funcs, fx=""):
    props = {STACK_KEY: "\n  ".join(frame(f, line=i + 1) for i, f in enumerate(funcs))}
    if fx:
        props["pkg.torch.onnx.fx_node"] = fx
    return ir.Node("", op, inputs=[], metadata_props=props)


def test_stage_from_the_step_and_scope_from_the_innermost_function():
    assert classify(node("MatMul", "forward", "ivr_step", "select_ivr", "anchor_relevance", "forward")) == \
        ("ivr", "anchor_relevance")
    assert classify(node("TopK", "forward", "ssr_topk_step", "sorted_topk")) == ("ssr", "sorted_topk")
    assert classify(node("GatherElements", "forward", "ssr_topk_step")) == ("ssr", "ssr_topk_step")


def test_custom_op_nodes_are_named_after_the_op():
    fx = "%fps_coverage : [num_users=1] = call_function[target=torch.ops.halfv.fps_coverage.default](args = ())"
    assert classify(node("Loop", "forward", "ivr_step", "select_ivr", fx=fx)) == ("ivr", "fps_coverage")


def test_freeze_is_the_span_split_and_merge_not_the_layer_math():
    assert classify(node("Concat", "forward", "frozen_span_layer_step")) == ("ssr", "freeze")
    assert classify(node("MatMul", "forward", "frozen_span_layer_step", "attention")) is None
    assert classify(node("MatMul", "forward", "layer_step", "attention")) is None
    assert classify(node("Add")) is None


def test_names_are_deterministic_and_unique():
    def build():
        nodes = [node("MatMul", "forward", "ivr_step", "anchor_relevance"),
                 node("MatMul", "forward", "ivr_step", "anchor_relevance"),
                 node("Add", "forward", "layer_step"),
                 node("TopK", "forward", "ssr_topk_step", "sorted_topk")]
        graph = ir.Graph(inputs=[], outputs=[], nodes=nodes, opset_imports={"": 20})
        return ir.Model(graph, ir_version=10)

    first, second = build(), build()
    assert name_pruning_nodes(first) == {"ivr": 2, "ssr": 1}
    name_pruning_nodes(second)
    names = [n.name for n in first.graph]
    assert names == [n.name for n in second.graph]
    assert names[:2] == ["/halfv/ivr/anchor_relevance/MatMul_0", "/halfv/ivr/anchor_relevance/MatMul_1"]
    assert names[3] == "/halfv/ssr/sorted_topk/TopK_0"
    assert not (names[2] or "").startswith("/halfv")
