"""TensorRT lint: planted violations built with onnx.helper are each caught with the right node and
message; the graphs our exporter writes pass; the HalfV TopK bound refuses the exact limit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

from halfv_export.cli import cli
from halfv_export.core.errors import UserError
from halfv_export.core.limits import largest_within_topk
from halfv_export.core.lint import (TARGETS, TOPK_MAX_K, check_topk_bound, eval_dim, lint_graphs,
                                      lint_manifest, lint_model)
from halfv_export.core.manifest import MANIFEST_NAME, Manifest, sha256_file
from halfv_export.core.profile import keep_count, shipped_profile
from tests.conftest import TINY
from tests.runtime.exported import exported_graphs

VIS = h.make_tensor_value_info("visual_embeds", T.FLOAT, ["batch", "visual_tokens", 8])


# -- planted graphs ---------------------------------------------------------------------------------
def model(nodes, inputs=(VIS,), outputs=(), initializers=(), opset=20, functions=()):
    graph = h.make_graph(list(nodes), "planted", list(inputs), list(outputs), list(initializers))
    imports = [h.make_opsetid("", opset)] + [h.make_opsetid(f.domain, 1) for f in functions]
    return h.make_model(graph, opset_imports=imports, functions=list(functions), ir_version=10)


def out(name, dtype=T.FLOAT, shape=None):
    return h.make_tensor_value_info(name, dtype, shape)


def const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.array(values, dtype=dtype), name)


def scores_nodes():
    """visual_embeds [B, V, 8] -> scores [B, V]."""
    return [h.make_node("ReduceSum", ["visual_embeds", "axes_last"], ["scores"], name="/halfv/ivr/scores",
                        keepdims=0)]


def topk_model(k_nodes, k_name, inits=(), **topk_attrs):
    """scores -> TopK(K) -> kept indices, with K from `k_nodes`."""
    nodes = scores_nodes() + list(k_nodes) + [
        h.make_node("TopK", ["scores", k_name], ["values", "kept_ivr"], name="/halfv/ivr/topk", axis=-1,
                    **topk_attrs)]
    return model(nodes, outputs=[out("kept_ivr", T.INT64, ["batch", None])],
                 initializers=[const("axes_last", [-1])] + list(inits))


def shape_k_nodes(num: int, den: int):
    """K = (V * num + num) // den computed from visual_embeds' shape (the exporter's pattern)."""
    return [
        h.make_node("Shape", ["visual_embeds"], ["vshape"], name="/halfv/ivr/k/shape"),
        h.make_node("Gather", ["vshape", "one"], ["v"], name="/halfv/ivr/k/gather", axis=0),
        h.make_node("Mul", ["v", "num"], ["vn"], name="/halfv/ivr/k/mul"),
        h.make_node("Add", ["vn", "num"], ["vn1"], name="/halfv/ivr/k/add"),
        h.make_node("Div", ["vn1", "den"], ["k0"], name="/halfv/ivr/k/div"),
        h.make_node("Unsqueeze", ["k0", "zero"], ["k"], name="/halfv/ivr/k/unsqueeze"),
    ], [const("one", 1), const("num", num), const("den", den), const("zero", [0])]


def write_folder(path, graphs: dict, visual_tokens=(4, 64, 256), dtype="fp32"):
    """A graphs folder (ONNX files + manifest with sha256) the way export writes one."""
    path.mkdir(parents=True, exist_ok=True)
    entries = {}
    for role, m in graphs.items():
        file = f"{role}.onnx"
        onnx.save(m, str(path / file))
        entries[role] = {"file": file, "data": None, "sha256": {file: sha256_file(path / file)},
                         "inputs": [], "outputs": []}
    manifest = {"schema_version": 1, "kind": "graphs", "model": "planted", "backbone": "qwen2_5_vl",
                "profile": None, "opset": 20, "dtype": dtype, "config": {"num_layers": 1},
                "visual_tokens": dict(zip(("min", "opt", "max"), visual_tokens)), "graphs": entries}
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    return path


def lines(findings, severity="ERROR"):
    return [f.line() for f in findings if f.severity == severity]


# -- TopK -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", list(TARGETS))
def test_constant_k_above_limit(target):
    m = topk_model([], "k", inits=[const("k", [TOPK_MAX_K + 160])])
    errors = lines(lint_model(m, target, "prefill.onnx", {"min": 1, "opt": 8, "max": 16}))
    assert errors == [f"ERROR /halfv/ivr/topk: constant K = {TOPK_MAX_K + 160} exceeds TensorRT's TopK "
                      f"limit {TOPK_MAX_K} [prefill.onnx]"]


def test_constant_k_at_limit_passes():
    m = topk_model([], "k", inits=[const("k", [TOPK_MAX_K])])
    assert lines(lint_model(m, "trt10", "prefill.onnx", {"min": 1, "opt": 8, "max": 16})) == []


def test_shape_derived_k_checked_at_manifest_max():
    nodes, inits = shape_k_nodes(1, 2)
    m = topk_model(nodes, "k", inits=inits)
    fits = max(n for n in range(1, 20000) if (n + 1) // 2 <= TOPK_MAX_K)  # the graph's own formula
    errors = lines(lint_model(m, "trt10", "prefill.onnx", {"min": 4, "opt": 64, "max": 10000}))
    assert errors == [f"ERROR /halfv/ivr/topk: K = {(10000 + 1) // 2} at 10000 visual tokens (manifest max) "
                      f"exceeds TensorRT's TopK limit {TOPK_MAX_K}; K <= {TOPK_MAX_K} holds up to {fits} "
                      f"visual tokens [prefill.onnx]"]
    # the same graph is fine when the manifest range stays below the limit
    assert lines(lint_model(m, "trt10", "prefill.onnx", {"min": 4, "opt": 64, "max": fits})) == []


def test_shape_k_without_range_is_a_warning():
    nodes, inits = shape_k_nodes(1, 4)
    findings = lint_model(topk_model(nodes, "k", inits=inits), "trt10", "prefill.onnx", None)
    assert lines(findings) == []
    assert any("no visual_tokens range" in w for w in lines(findings, "WARNING"))


def test_data_dependent_k_is_a_warning():
    nodes = scores_nodes() + [
        h.make_node("ReduceMax", ["scores"], ["smax"], name="/x/max", keepdims=1),
        h.make_node("Cast", ["smax"], ["kf"], name="/x/cast", to=T.INT64),
        h.make_node("Reshape", ["kf", "shape1"], ["k"], name="/x/reshape"),
        h.make_node("TopK", ["scores", "k"], ["v", "i"], name="/x/topk")]
    m = model(nodes, outputs=[out("i", T.INT64)], initializers=[const("axes_last", [-1]), const("shape1", [1])])
    findings = lint_model(m, "trt10", "g.onnx", {"min": 1, "opt": 2, "max": 3})
    assert lines(findings) == []
    assert any(w.startswith("WARNING /x/topk: cannot evaluate K") for w in lines(findings, "WARNING"))


def test_unsorted_topk():
    m = topk_model([], "k", inits=[const("k", [2])], sorted=0)
    assert lines(lint_model(m, "trt11", "p.onnx", None)) == [
        "ERROR /halfv/ivr/topk: TopK needs sorted=1 in TensorRT (sorted=0 is rejected) [p.onnx]"]


def test_dim_expressions_from_the_exporter():
    assert eval_dim("((1//(((visual_tokens//4)) + 1))) + ((visual_tokens//4))", {"visual_tokens": 100}) == \
        keep_count(100, 0.25)
    assert eval_dim("Max(1, s0 - 3)", {"s0": 2}) == 1


# -- other planted violations -----------------------------------------------------------------------
def test_nonzero():
    nodes = scores_nodes() + [h.make_node("NonZero", ["scores"], ["nz"], name="/halfv/ivr/nonzero")]
    m = model(nodes, outputs=[out("nz", T.INT64)], initializers=[const("axes_last", [-1])])
    errors = lines(lint_model(m, "trt10", "prefill.onnx", None))
    assert len(errors) == 1 and errors[0].startswith("ERROR /halfv/ivr/nonzero: NonZero has a data-dependent")


def if_model(else_len: int):
    def branch(name, n):
        c = h.make_node("Constant", [], [f"{name}_out"], name=f"{name}_const",
                        value=numpy_helper.from_array(np.zeros((1, n), np.float32)))
        return h.make_graph([c], name, [], [out(f"{name}_out", T.FLOAT, [1, n])])
    cond_in = h.make_tensor_value_info("cond", T.BOOL, [])
    node = h.make_node("If", ["cond"], ["y"], name="/halfv/ssr/if", then_branch=branch("then", 4),
                       else_branch=branch("else", else_len))
    return model([node], inputs=[cond_in], outputs=[out("y", T.FLOAT, None)])


def test_if_with_unequal_branch_shapes():
    errors = lines(lint_model(if_model(8), "trt10", "prefill.onnx", None))
    assert errors == ["ERROR /halfv/ssr/if: If output 0: branch shapes differ ([1, 4] vs [1, 8]); TensorRT "
                      "needs equal shapes: choose the branch at export (static Slice/Gather/Concat) [prefill.onnx]"]
    assert lines(lint_model(if_model(4), "trt10", "prefill.onnx", None)) == []


def loop_model(scan: bool):
    """Loop over a run-time trip count carrying x; with scan=True it also emits a scan output."""
    body_nodes = [h.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
                  h.make_node("Add", ["x_in", "x_in"], ["x_out"], name="body_add")]
    outputs = [out("cond_out", T.BOOL, []), out("x_out", T.FLOAT, [4])]
    if scan:
        body_nodes.append(h.make_node("Identity", ["x_in"], ["scan_out"], name="body_scan"))
        outputs.append(out("scan_out", T.FLOAT, [4]))
    body = h.make_graph(body_nodes, "body", [h.make_tensor_value_info("i", T.INT64, []),
                                             h.make_tensor_value_info("cond_in", T.BOOL, []),
                                             h.make_tensor_value_info("x_in", T.FLOAT, [4])], outputs)
    trip = h.make_tensor_value_info("trip", T.INT64, [])
    x0 = h.make_tensor_value_info("x0", T.FLOAT, [4])
    loop_outs = ["x_final"] + (["scanned"] if scan else [])
    node = h.make_node("Loop", ["trip", "", "x0"], loop_outs, name="/halfv/ivr/fps/loop", body=body)
    return model([node], inputs=[trip, x0], outputs=[out(n, T.FLOAT, None) for n in loop_outs])


def test_loop_with_scan_output():
    errors = lines(lint_model(loop_model(scan=True), "trt10", "prefill.onnx", None))
    assert len(errors) == 1
    assert errors[0].startswith("ERROR /halfv/ivr/fps/loop: Loop has 1 scan output(s) whose length follows a "
                                "run-time trip count")
    assert lines(lint_model(loop_model(scan=False), "trt10", "prefill.onnx", None)) == []


def test_op_outside_target_list():
    nodes = [h.make_node("Unique", ["x"], ["u"], name="/model/unique")]
    m = model(nodes, inputs=[h.make_tensor_value_info("x", T.FLOAT, [4])], outputs=[out("u", T.FLOAT, None)])
    for target in TARGETS:
        assert lines(lint_model(m, target, "g.onnx", None)) == [
            f"ERROR /model/unique: op Unique is not supported by the {TARGETS[target].label} ONNX parser "
            f"(onnx-tensorrt operators table) [g.onnx]"]


def test_foreign_domain_op():
    nodes = [h.make_node("FusedMatMul", ["x", "x"], ["y"], name="/model/fused", domain="com.microsoft")]
    m = model(nodes, inputs=[h.make_tensor_value_info("x", T.FLOAT, [4, 4])], outputs=[out("y")])
    m.opset_import.append(h.make_opsetid("com.microsoft", 1))
    errors = lines(lint_model(m, "trt10", "g.onnx", None))
    assert errors and errors[0].startswith("ERROR /model/fused: op com.microsoft::FusedMatMul is not an ONNX op")


def rmsnorm_model(opset):
    x = h.make_tensor_value_info("x", T.FLOAT, [2, 8])
    node = h.make_node("RMSNormalization", ["x", "scale"], ["y"], name="/model/norm", axis=-1)
    return model([node], inputs=[x], outputs=[out("y", T.FLOAT, [2, 8])],
                 initializers=[numpy_helper.from_array(np.ones(8, np.float32), "scale")], opset=opset)


def test_opset_out_of_range_and_newer_ops():
    m = rmsnorm_model(23)
    errors = lines(lint_model(m, "trt10", "prefill.onnx", None))
    assert "ERROR prefill.onnx: opset 23 is outside 9..20, the range the TensorRT 10.x (JetPack 6) ONNX " \
           "parser accepts" in errors
    assert any(e.startswith("ERROR /model/norm: op RMSNormalization is not supported") for e in errors)
    assert lines(lint_model(m, "trt11", "prefill.onnx", None)) == []
    relu = model([h.make_node("Relu", ["x"], ["y"], name="r")], inputs=[h.make_tensor_value_info("x", T.FLOAT, [2])],
                 outputs=[out("y", T.FLOAT, [2])], opset=25)
    assert lines(lint_model(relu, "trt11", "g.onnx", None)) == [
        "ERROR g.onnx: opset 25 is outside 9..24, the range the TensorRT 11.x (JetPack 7) ONNX parser accepts"]


def test_float64_tensor():
    nodes = [h.make_node("Cast", ["x"], ["xd"], name="/model/to_double", to=T.DOUBLE),
             h.make_node("Cast", ["xd"], ["y"], name="/model/back", to=T.FLOAT)]
    m = model(nodes, inputs=[h.make_tensor_value_info("x", T.FLOAT, [2])], outputs=[out("y", T.FLOAT, [2])])
    errors = lines(lint_model(m, "trt10", "g.onnx", None))
    assert errors == ["ERROR /model/to_double: tensor 'xd' is float64, a type TensorRT does not have [g.onnx]"]


def matmul_model(a_type, b_type):
    a = h.make_tensor_value_info("a", a_type, [2, 4])
    b = h.make_tensor_value_info("b", b_type, [4, 2])
    return model([h.make_node("MatMul", ["a", "b"], ["c"], name="/model/mm")], inputs=[a, b],
                 outputs=[out("c", a_type, [2, 2])])


def test_strong_typing():
    mixed = lines(lint_model(matmul_model(T.FLOAT16, T.FLOAT), "trt11", "g.onnx", None))
    assert any(e.startswith("ERROR /model/mm: MatMul mixes float16 and float32 inputs under type T: a strongly "
                            "typed network cannot insert the cast") for e in mixed)
    fp32 = lint_model(matmul_model(T.FLOAT, T.FLOAT), "trt11", "g.onnx", None)
    assert lines(fp32) == []
    assert any("TensorRT 11 is strongly typed" in w for w in lines(fp32, "WARNING"))
    assert lines(lint_model(matmul_model(T.FLOAT, T.FLOAT), "trt10", "g.onnx", None), "WARNING") == []
    assert lines(lint_model(matmul_model(T.FLOAT16, T.FLOAT16), "trt11", "g.onnx", None), "WARNING") == []
    # a graph declared fp16 whose products are fp32 relied on the builder flag TensorRT 11 dropped
    claimed = lines(lint_model(matmul_model(T.FLOAT, T.FLOAT), "trt11", "g.onnx", None, dtype="fp16"))
    assert claimed == ["ERROR g.onnx: the manifest says fp16 but every matrix product is float32: a strongly "
                       "typed build keeps them fp32 (the half precision relied on a builder flag TensorRT 11 no "
                       "longer has)"]
    assert lines(lint_model(matmul_model(T.FLOAT, T.FLOAT), "trt10", "g.onnx", None, dtype="fp16")) == []


def test_local_function_bodies_are_linted_under_the_call_name():
    fn = h.make_function("halfv", "fps", ["x"], ["y"],
                         [h.make_node("NonZero", ["x"], ["y"], name="select")], [h.make_opsetid("", 20)])
    call = h.make_node("fps", ["scores"], ["kept"], name="/halfv/ivr/fps", domain="halfv")
    m = model(scores_nodes() + [call], outputs=[out("kept", T.INT64)], initializers=[const("axes_last", [-1])],
              functions=[fn])
    errors = lines(lint_model(m, "trt10", "prefill.onnx", None))
    assert len(errors) == 1 and errors[0].startswith("ERROR /halfv/ivr/fps/select: NonZero")


# -- the HalfV bound export calls -------------------------------------------------------------------
def test_check_topk_bound_names_the_exact_limit():
    qwen = shipped_profile("qwen2.5-vl-7b")
    limit = max(n for n in range(1, 20000) if qwen.ivr_count(n) <= TOPK_MAX_K)
    assert check_topk_bound(qwen, limit)["ivr_keep"] == qwen.ivr_count(limit)
    with pytest.raises(UserError, match=f"keep the visual-token max <= {limit} "
                                        fr"\(Qwen2.5-VL: max pixels <= {limit * 784}\)"):
        check_topk_bound(qwen, 16384)
    assert check_topk_bound(None, 10**6) == {}
    assert check_topk_bound(shipped_profile("llava-1.5-7b"), 576)["ivr_keep"] == 288


def test_largest_within_topk_is_the_boundary_of_a_growing_k():
    """The one search export and lint share: the exact largest n, or None when low already exceeds."""
    assert largest_within_topk(lambda n: (n + 1) // 2, 20000) == max(
        n for n in range(20001) if (n + 1) // 2 <= TOPK_MAX_K)
    assert largest_within_topk(lambda n: keep_count(n, 0.25), 16384) == 15363  # Qwen2.5-VL-7B at keep 0.25
    assert largest_within_topk(lambda n: n, 100, 5) == 100  # everything fits: the upper end
    assert largest_within_topk(lambda n: n + TOPK_MAX_K, 100, 1) is None


# -- folders and the CLI ----------------------------------------------------------------------------
def test_cli_exit_codes(tmp_path):
    nodes, inits = shape_k_nodes(1, 2)
    bad = write_folder(tmp_path / "bad", {"prefill": topk_model(nodes, "k", inits=inits)}, (4, 64, 10000))
    good = write_folder(tmp_path / "good", {"prefill": topk_model(nodes, "k", inits=inits)}, (4, 64, 1000))
    runner = CliRunner()
    result = runner.invoke(cli, ["lint", "--graphs", str(bad), "--target", "trt10"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0].startswith("ERROR /halfv/ivr/topk: K = 5000 at 10000 visual tokens")
    assert result.output.splitlines()[-1] == "lint trt10: 1 graph(s), 1 error(s), 0 warning(s): FAIL"
    result = runner.invoke(cli, ["lint", "--graphs", str(good), "--target", "trt11"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("0 error(s), 0 warning(s): PASS")
    result = runner.invoke(cli, ["lint", "--graphs", str(tmp_path / "missing"), "--target", "trt10"])
    assert result.exit_code == 2 and "graphs folder not found" in result.output
    (good / "prefill.onnx").write_bytes(b"not onnx")  # sha256 mismatch is refused before linting
    result = runner.invoke(cli, ["lint", "--graphs", str(good), "--target", "trt10"])
    assert result.exit_code == 2 and "does not match its sha256" in result.output


def test_lint_graphs_reads_every_graph(tmp_path):
    folder = write_folder(tmp_path / "g", {"prefill": if_model(8), "decode": loop_model(scan=True)})
    report = lint_graphs(folder, "trt10")
    assert report.graphs == ["prefill.onnx", "decode.onnx"]
    assert {f.graph for f in report.errors} == {"prefill.onnx", "decode.onnx"}
    assert not report.ok


# -- the graphs our exporter writes -----------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.slow_cases("tiny-llava")
def test_exported_graphs_pass(name, target):
    report = lint_graphs(exported_graphs(name), target)
    assert report.ok, "\n".join(f.line() for f in report.errors)
    assert report.graphs == ["vision.onnx", "embed.onnx", "prefill.onnx", "decode.onnx"]
    assert not [w for w in report.warnings if "K" in w.message]  # every K was evaluated, none unchecked


def test_exported_k_checked_at_a_larger_manifest_max(tmp_path):
    """The same exported graphs fail once the manifest promises more visual tokens than TopK takes."""
    graphs = shutil.copytree(exported_graphs("tiny-qwen2.5-vl"), tmp_path / "g")
    manifest = Manifest.load(graphs)
    profile = shipped_profile("tiny-qwen2.5-vl")
    fits = max(n for n in range(1, 20000) if profile.ivr_count(n) <= TOPK_MAX_K)
    assert lint_manifest(manifest, "trt10").ok and manifest["visual_tokens"]["max"] <= fits
    manifest["visual_tokens"]["max"] = fits + 1
    errors = lint_manifest(manifest, "trt10").errors
    assert errors and all(e.node.startswith("/halfv/") for e in errors)
    assert any(f"K = {profile.ivr_count(fits + 1)} at {fits + 1} visual tokens" in e.message
               and f"holds up to {fits} visual tokens" in e.message for e in errors)
