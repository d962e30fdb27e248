"""Exported decoder graphs against the PyTorch reference in ONNX Runtime, for the three tiny families.

Each (family, coverage) is exported once per session (fps: all three graphs; oneshot and the
unpruned baseline: the prefill graph only, the other two do not depend on the plan).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from halfv_export.cli import cli
from halfv_export.core.errors import UserError
from halfv_export.graphs import export as export_module
from halfv_export.core.tolerances import PARITY
from halfv_export.graphs.export import export_graphs
from halfv_export.core.manifest import Manifest
from halfv_export.method import PruningPlan, decode_step_tensors, prefill, prefill_tensors
from halfv_export.core.profile import PROFILES_DIR, shipped_profile
from tests.conftest import TINY, TINY_IMAGES, tiny_backbone
from tests.runtime.exported import exported_graphs, session_dir

COVERAGES = ("fps", "oneshot")
COUNTS = (16, 24)  # two visual-token counts: a K baked in at export time cannot pass both
ATOL = 1e-4


@functools.lru_cache(maxsize=None)
def exported(name: str, coverage: str | None) -> Manifest:
    """coverage None: the unpruned baseline. fps: the session's shared full export (tests/runtime/exported.py)."""
    if coverage == "fps":
        return Manifest.load(exported_graphs(name))
    profile = shipped_profile(name)
    plan = PruningPlan.halfv(profile, coverage) if coverage else None
    return export_graphs(tiny_backbone(name), name, session_dir() / f"{name}-{coverage}", plan,
                         profile if plan else None, roles=("prefill",))


@functools.lru_cache(maxsize=None)
def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def plan_for(name, coverage):
    return PruningPlan.halfv(shipped_profile(name), coverage) if coverage else None


def random_request(bb, n, batch, seed, prefix=4, suffix=6):
    """Random embeddings around n visual tokens, positions of the backbone's format."""
    gen = torch.Generator().manual_seed(seed)
    spans = [torch.randn(batch, length, bb.hidden_size, generator=gen) for length in (prefix, n, suffix)]
    seq = prefix + n + suffix
    shape = (3, batch, seq) if bb.position_rows == 3 else (batch, seq)
    return (*spans, torch.arange(seq).expand(shape).contiguous())


def real_request(bb, name, image_index, batch=2):
    """A prepared request (vision tower, real M-RoPE positions) split around its visual span."""
    image = TINY_IMAGES[name][image_index % len(TINY_IMAGES[name])]
    inputs = bb.prepare(bb.example_batch(batch, image, text_before=5, text_after=7, seed=image_index))
    start, n = inputs.visual_start, inputs.visual_count
    e = inputs.embeds
    return (e[:, :start], e[:, start:start + n], e[:, start + n:], inputs.position_ids), inputs


def run_prefill(path, pre, vis, suf, pos, dtype=np.float32):
    sess = session(path)
    feed = {"prefix_embeds": pre.numpy().astype(dtype), "visual_embeds": vis.numpy().astype(dtype),
            "suffix_embeds": suf.numpy().astype(dtype), "position_ids": pos.numpy()}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def reference(bb, plan, pre, vis, suf, pos):
    with torch.no_grad():
        return prefill_tensors(bb, torch.cat([pre, vis, suf], dim=1), pos, pre.shape[1], vis.shape[1], plan)


def assert_prefill_matches(got, ref, plan):
    np.testing.assert_allclose(got["logits"], ref.logits.numpy(), atol=ATOL, rtol=0)
    for i, (key, value) in enumerate(ref.cache):
        np.testing.assert_allclose(got[f"present.{i}.key"], key.numpy(), atol=ATOL, rtol=0)
        np.testing.assert_allclose(got[f"present.{i}.value"], value.numpy(), atol=ATOL, rtol=0)
    if plan is None:
        assert "kept_ivr" not in got and "kept_ssr" not in got
        return
    np.testing.assert_array_equal(got["kept_ivr"], ref.kept_ivr.numpy())
    if plan.ssr_mode == "topk":
        np.testing.assert_array_equal(got["kept_ssr"], ref.kept_ssr.numpy())
    else:
        assert "kept_ssr" not in got


def all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g)


# -- prefill -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("coverage", COVERAGES)
@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow_cases("tiny-llava", "oneshot")
def test_prefill_equals_reference_at_two_visual_counts(name, coverage):
    bb, plan = tiny_backbone(name), plan_for(name, coverage)
    path = exported(name, coverage).path("prefill")
    profile = shipped_profile(name)
    kept = {}
    for batch in (1, 2):
        for n in COUNTS:
            request = random_request(bb, n, batch, seed=10 * n + batch)
            got = run_prefill(path, *request)
            assert_prefill_matches(got, reference(bb, plan, *request), plan)
            kept[n] = got["kept_ivr"].shape
            assert kept[n] == (batch, profile.ivr_count(n))
            if plan.ssr_mode == "topk":
                assert got["kept_ssr"].shape == (batch, profile.ssr_count(n))
    assert kept[16][1] != kept[24][1], "K follows the visual-token count"


@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow_cases("tiny-llava")
def test_prefill_equals_reference_on_prepared_requests(name):
    """Real vision features and the model's own positions (Qwen: M-RoPE from get_rope_index)."""
    bb, plan = tiny_backbone(name), plan_for(name, "fps")
    for image_index in range(len(TINY_IMAGES[name])):
        request, inputs = real_request(bb, name, image_index)
        got = run_prefill(exported(name, "fps").path("prefill"), *request)
        with torch.no_grad():
            assert_prefill_matches(got, prefill(bb, inputs, plan), plan)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow  # an unpruned export of its own per family
def test_unpruned_graph_equals_transformers(name):
    bb = tiny_backbone(name)
    path = exported(name, None).path("prefill")
    for image_index in range(len(TINY_IMAGES[name])):
        image = TINY_IMAGES[name][image_index]
        batch = bb.example_batch(2, image, text_before=5, text_after=7, seed=image_index)
        request, inputs = real_request(bb, name, image_index)
        got = run_prefill(path, *request)
        with torch.no_grad():
            theirs = bb.model(**bb.hf_generate_kwargs(batch)).logits[:, -1]
        np.testing.assert_allclose(got["logits"], theirs.numpy(), atol=ATOL, rtol=0)
        assert_prefill_matches(got, prefill(bb, inputs, None), None)


# -- decode / embed --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow_cases("tiny-llava")
def test_decode_over_the_ragged_cache_equals_reference(name):
    bb, plan = tiny_backbone(name), plan_for(name, "fps")
    request, inputs = real_request(bb, name, 0)
    with torch.no_grad():
        cache = prefill(bb, inputs, plan).cache
    lengths = {k.shape[2] for k, _ in cache}
    assert len(lengths) > 1, "pruning leaves one cache length per layer group"
    sess = session(exported(name, "fps").path("decode"))
    names = [o.name for o in sess.get_outputs()]
    gen = torch.Generator().manual_seed(1)
    ort_cache = [(k.numpy(), v.numpy()) for k, v in cache]
    for step in range(2):  # the second step feeds the graph's own present back
        token = torch.randn(2, 1, bb.hidden_size, generator=gen)
        pos = bb.decode_position_ids(inputs.next_position, step)
        with torch.no_grad():
            logits, cache = decode_step_tensors(bb, token, pos, cache)
        feed = {"token_embeds": token.numpy(), "position_ids": pos.numpy()}
        for i, (key, value) in enumerate(ort_cache):
            feed[f"past.{i}.key"], feed[f"past.{i}.value"] = key, value
        got = dict(zip(names, sess.run(None, feed)))
        np.testing.assert_allclose(got["logits"], logits.numpy(), atol=ATOL, rtol=0)
        ort_cache = []
        for i, (key, value) in enumerate(cache):
            np.testing.assert_allclose(got[f"present.{i}.key"], key.numpy(), atol=ATOL, rtol=0)
            np.testing.assert_allclose(got[f"present.{i}.value"], value.numpy(), atol=ATOL, rtol=0)
            ort_cache.append((got[f"present.{i}.key"], got[f"present.{i}.value"]))


@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow_cases("tiny-llava")
def test_embed_graph_equals_embedding_table(name):
    bb = tiny_backbone(name)
    ids = torch.randint(0, bb.text_config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    got = session(exported(name, "fps").path("embed")).run(None, {"input_ids": ids.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_array_equal(got, bb.embed_tokens(ids).numpy())


# -- graph contents and manifest -------------------------------------------------------------------------
@pytest.mark.parametrize("coverage", COVERAGES)
@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow_cases("tiny-llava", "oneshot")
def test_graph_prunes_with_shape_derived_k_and_named_nodes(name, coverage):
    path = exported(name, coverage).path("prefill")
    # the structure only (export itself ran onnx.checker's full check on the file): the shared session
    # export's data file may be hard-linked by the Triton/Jetson tests, and onnx refuses to read external
    # data through a file with several links
    model = onnx.load(str(path), load_external_data=False)
    nodes = list(all_nodes(model.graph))
    constants = {i.name for i in model.graph.initializer} | {
        out for n in nodes if n.op_type == "Constant" for out in n.output}
    topk = [n for n in nodes if n.op_type == "TopK"]
    assert topk
    for node in topk:
        assert node.input[1] not in constants, f"{node.name}: K is a constant"
    assert "NonZero" not in {n.op_type for n in nodes}
    names = [n.name for n in nodes]
    assert any(n.startswith("/halfv/ivr/") for n in names)
    assert any(n.startswith("/halfv/ssr/") for n in names)
    assert len(set(names)) == len(names)
    loops = [n for n in nodes if n.op_type == "Loop"]
    if coverage == "fps":
        assert [n.name for n in loops] == ["/halfv/ivr/fps_coverage/Loop_0"]
        body = next(a.g for a in loops[0].attribute if a.name == "body")
        assert len(body.output) == len(loops[0].input) - 1, "carried state only, no scan outputs"
    else:
        assert not loops


@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow  # an unpruned export of its own per family
def test_unpruned_graph_has_no_pruning_nodes(name):
    nodes = list(all_nodes(onnx.load(str(exported(name, None).path("prefill"))).graph))
    assert not any(n.name.startswith("/halfv/") for n in nodes)
    assert not any(n.op_type in ("TopK", "Loop", "NonZero") for n in nodes)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow_cases("tiny-llava")
def test_manifest_describes_the_folder(name):
    written = exported(name, "fps")
    manifest = Manifest.load(written.folder)  # verifies every sha256
    bb, profile = tiny_backbone(name), shipped_profile(name)
    assert manifest["model"] == name and manifest["backbone"] == bb.family
    assert manifest["profile"] == profile.to_dict() and manifest["coverage"] == "fps"
    assert manifest["opset"] == 20 and manifest["dtype"] == "fp32"
    config = manifest["config"]
    assert config["position_rows"] == bb.position_rows and config["num_layers"] == bb.num_layers
    assert config["num_kv_heads"] == bb.num_kv_heads and config["head_dim"] == bb.head_dim
    assert config["vocab_size"] == bb.text_config.vocab_size and config["image_token_id"] == bb.image_token_id
    assert config["eos_token_id"] == bb.text_config.eos_token_id
    low, opt, high = (manifest["visual_tokens"][k] for k in ("min", "opt", "max"))
    assert 1 <= low <= opt <= high
    assert set(manifest["graphs"]) == {"vision", "embed", "prefill", "decode"}
    prefill_io = manifest["graphs"]["prefill"]
    inputs = {i["name"]: i for i in prefill_io["inputs"]}
    assert list(inputs) == ["prefix_embeds", "visual_embeds", "suffix_embeds", "position_ids"]
    assert inputs["visual_embeds"]["shape"] == ["batch", "visual_tokens", bb.hidden_size]
    assert inputs["position_ids"]["shape"] == ([3, "batch", "seq"] if bb.position_rows == 3 else ["batch", "seq"])
    outputs = [o["name"] for o in prefill_io["outputs"]]
    expected = ["logits", "kept_ivr"] + (["kept_ssr"] if profile.ssr_mode == "topk" else [])
    assert outputs == expected + [f"present.{i}.{k}" for i in range(bb.num_layers) for k in ("key", "value")]
    kept = next(o for o in prefill_io["outputs"] if o["name"] == "kept_ivr")
    assert "visual_tokens" in kept["shape"][1], "K is an expression of the visual-token count"
    decode_inputs = [i["shape"] for i in manifest["graphs"]["decode"]["inputs"][2::2]]
    assert [s[2] for s in decode_inputs] == [f"past_len_{i}" for i in range(bb.num_layers)]
    assert manifest["versions"]["torch"] == torch.__version__
    assert json.loads((written.folder / "manifest.json").read_text()) == dict(manifest)


# -- fp16 / opset 23 through the CLI -------------------------------------------------------------------
@pytest.mark.slow
def test_cli_exports_fp16_at_opset_23_within_the_fp16_tolerance(tmp_path):
    name = "tiny-qwen2.5-vl"
    out = tmp_path / "graphs"
    result = CliRunner().invoke(cli, ["export", "--model", name, "--dtype", "fp16", "--opset", "23",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "[export] prefill.onnx" in result.stderr and str(out) in result.stdout
    manifest = Manifest.load(out)
    assert manifest["dtype"] == "fp16" and manifest["opset"] == 23
    model = onnx.load(str(out / "prefill.onnx"))
    assert {o.domain: o.version for o in model.opset_import}[""] == 23
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    bb, plan = tiny_backbone(name), plan_for(name, "fps")
    for n in COUNTS:
        request = random_request(bb, n, 2, seed=n)
        got = run_prefill(out / "prefill.onnx", *request, dtype=np.float16)
        ref = reference(bb, plan, *request)  # the fp32 reference
        assert got["logits"].dtype == np.float16
        assert np.abs(got["logits"].astype(np.float32) - ref.logits.numpy()).max() <= PARITY["fp16"][0]
        assert got["kept_ivr"].shape == ref.kept_ivr.shape


# -- refusals and atomicity ------------------------------------------------------------------------------
def test_cli_refuses_a_profile_for_another_backbone(tmp_path):
    out = tmp_path / "graphs"
    result = CliRunner().invoke(cli, ["export", "--model", "tiny-llava", "--out", str(out),
                                      "--profile", str(PROFILES_DIR / "tiny-qwen2.5-vl.json")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: profile is for tiny-qwen2.5-vl") and result.stderr.count("\n") == 1
    assert not out.exists()


def test_cli_refuses_a_missing_profile_and_profile_with_no_prune(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["export", "--model", "tiny-llava", "--profile", str(tmp_path / "none.json"),
                                  "--out", str(tmp_path / "g")])
    both = runner.invoke(cli, ["export", "--model", "tiny-llava", "--no-prune", "--out", str(tmp_path / "g"),
                               "--profile", str(PROFILES_DIR / "tiny-llava.json")])
    assert missing.exit_code == 2 and "profile not found" in missing.stderr
    assert both.exit_code == 2 and "exclude each other" in both.stderr
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("kwargs,message", [
    (dict(opset=17), "opset 17"), (dict(dtype="bf16"), "dtype"), (dict(roles=("audio",)), "roles"),
    (dict(plan=PruningPlan.random(0.5, 2)), "cannot be exported"),
    (dict(profile=shipped_profile("tiny-qwen2.5-vl")), "profile is for"),
    (dict(visual_tokens=(8, 4, 16)), "visual_tokens")])
def test_bad_arguments_are_user_errors_and_write_nothing(tmp_path, kwargs, message):
    args = dict(plan=None, profile=None)
    args.update(kwargs)
    with pytest.raises(UserError, match=message):
        export_graphs(tiny_backbone("tiny-llava"), "tiny-llava", tmp_path / "g", **args)
    assert not (tmp_path / "g").exists()


def test_failed_export_leaves_the_previous_folder_untouched(tmp_path, monkeypatch):
    bb = tiny_backbone("tiny-llava")
    out = tmp_path / "g"
    export_graphs(bb, "tiny-llava", out, None, None, roles=("embed",))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(model, role):
        raise RuntimeError("check failed")

    monkeypatch.setattr(export_module, "check_graph", broken)
    with pytest.raises(RuntimeError, match="check failed"):
        export_graphs(bb, "tiny-llava", out, None, None, roles=("embed",))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["g"], "no temporary folder left behind"
