"""Every weight stored once and loaded once; the streamed export and the layer-streamed reference equal
the in-memory ones; the activation monitor behind check's fp16 overflow warning."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import onnx
import pytest
import torch

from halfv_export.backbones.checkpoint import CheckpointWeights, ModelWeights, skeleton, stream_layers
from halfv_export.backbones.registry import build_random, get_entry, open_backbone
from halfv_export.graphs.export import DECODER_DATA, decoder_keys, export_graphs
from halfv_export.core.manifest import DATA_FILES, Manifest
from halfv_export.method import PruningPlan, generate, prefill
from halfv_export.method.activations import FP16_SAFE_MAX, fp16_overflow_layers, watch_layers
from halfv_export.core.profile import shipped_profile
from halfv_export.runtime.pipeline import OrtPipeline
from tests.conftest import TINY, TINY_IMAGES, tiny_backbone
from tests.runtime.exported import exported_graphs


@pytest.mark.parametrize("name", TINY)
def test_skeleton_has_no_weight_storage_and_real_buffers(name):
    real = tiny_backbone(name).model
    bare = skeleton(get_entry(name)).model
    assert all(p.is_meta for p in bare.parameters())
    real_buffers = dict(real.named_buffers())
    for key, buffer in bare.named_buffers():
        if key in dict(real.named_parameters()):
            continue
        if buffer.is_meta:  # persistent buffers come from the checkpoint like parameters
            assert key in real.state_dict()
            continue
        assert torch.equal(buffer, real_buffers[key]), key


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "shapes-llava"])
def test_checkpoint_weights_read_every_tensor_under_the_model_names(name, tmp_path):
    bb = tiny_backbone(name) if name.startswith("tiny") else open_backbone(name)[0]
    if name.startswith("tiny"):
        bb.model.save_pretrained(tmp_path)  # transformers writes its own (legacy) checkpoint names
        folder = tmp_path
    else:
        folder = get_entry(name).weights
    loaded = bb.model if name.startswith("tiny") else None
    bare = skeleton(get_entry(name), bb.config)
    source = CheckpointWeights(folder, bare.model)
    reference = ModelWeights(loaded if loaded is not None else
                             get_entry(name).backbone.hf_class.from_pretrained(folder))
    for key in bare.model.state_dict():
        if key in dict(bare.model.named_buffers()) and not bare.model.get_buffer(key).is_meta:
            continue
        assert torch.equal(source.tensor(key, torch.float32), reference.tensor(key, torch.float32)), key


def _distinct_bytes(model, keys):
    """Bytes of the distinct tensors among `keys` (the optimiser merges initializers of equal content,
    such as the all-ones norm weights of a freshly initialised model)."""
    state = model.state_dict()
    distinct = {state[key].numpy().tobytes(): state[key].numel() * 4 for key in keys}
    return sum(distinct.values())


@pytest.mark.parametrize("name", TINY)
@pytest.mark.slow_cases("tiny-llava")
def test_decoder_graphs_point_into_one_data_file_holding_each_weight_once(name):
    folder = exported_graphs(name)
    manifest = Manifest.load(folder)
    for role in ("embed", "prefill", "decode"):
        assert manifest.graph(role)["data"] == DECODER_DATA
        proto = onnx.load(str(folder / manifest.graph(role)["file"]), load_external_data=False)
        for init in proto.graph.initializer:  # weights are references, never copies in the graph file
            if init.data_location != onnx.TensorProto.EXTERNAL:
                assert len(init.raw_data) < 1 << 20, init.name
            else:
                assert {e.key: e.value for e in init.external_data}["location"] == DECODER_DATA
    bb = tiny_backbone(name)
    weights = _distinct_bytes(bb.model, decoder_keys(bb.model))
    tensors = manifest[DATA_FILES][DECODER_DATA]["tensors"]
    slices = {(t["offset"], t["length"]) for t in tensors.values()}
    tied = bool(getattr(bb.text_config, "tie_word_embeddings", False) or getattr(bb.config, "tie_word_embeddings",
                                                                                   False))
    stored = sum(length for _, length in slices)
    # each weight once; a tied embedding table is stored in both layouts (Gather's and MatMul's)
    embed = bb.embed_tokens.weight.numel() * 4
    assert stored == weights + (embed if tied else 0)
    assert (folder / DECODER_DATA).stat().st_size <= 1.05 * stored + 64 * len(slices)


def test_pipeline_sessions_share_one_copy_and_answer_as_per_session_copies():
    folder = exported_graphs("tiny-qwen2.5-vl")
    shared = OrtPipeline(folder)
    prefill_values = shared.shared.for_graph(shared.manifest.graph("prefill"))
    decode_values = shared.shared.for_graph(shared.manifest.graph("decode"))
    common = set(prefill_values) & set(decode_values)
    assert common and all(prefill_values[n] is decode_values[n] for n in common)
    assert shared.shared.nbytes == sum(length for length in {
        (t["offset"], t["length"]): t["length"] for t in shared.manifest[DATA_FILES][DECODER_DATA]["tensors"].values()
    }.values())
    own = OrtPipeline(folder, share_weights=False)
    gen = np.random.default_rng(0)
    ids = np.concatenate([gen.integers(10, 900, (1, 4)), np.full((1, 16), 1000), gen.integers(10, 900, (1, 5))], 1)
    ids[0, 3], ids[0, 20] = 1002, 1003
    visual = gen.standard_normal((1, 16, 128)).astype(np.float32) * 0.02
    grid = np.array([[1, 8, 8]])
    a = shared.generate(ids, visual, grid, max_new_tokens=8)
    b = own.generate(ids, visual, grid, max_new_tokens=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    # prepacked and plain MatMul kernels sum in different orders: equal up to float rounding
    np.testing.assert_allclose(a.prefill.logits, b.prefill.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_manifest_tensor_that_does_not_fit_its_file_is_refused(tmp_path):
    import shutil

    from halfv_export.core.errors import UserError

    folder = shutil.copytree(exported_graphs("tiny-llava"), tmp_path / "g")
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    first = next(iter(manifest[DATA_FILES][DECODER_DATA]["tensors"].values()))
    first["offset"] = manifest[DATA_FILES][DECODER_DATA]["bytes"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="does not fit the file"):
        OrtPipeline(folder)


@pytest.mark.slow
def test_streamed_export_equals_the_in_memory_export(tmp_path):
    name = "tiny-llava-next"
    bb = tiny_backbone(name)
    bb.model.save_pretrained(tmp_path / "ckpt")
    profile = shipped_profile(name)
    plan = PruningPlan.halfv(profile)
    export_graphs(bb, name, tmp_path / "memory", plan, profile)
    streamed, weights = open_backbone(name, model_path=tmp_path / "ckpt")
    assert all(p.is_meta for p in streamed.model.parameters())
    export_graphs(streamed, name, tmp_path / "streamed", plan, profile, weights=weights)
    files = sorted(p.name for p in (tmp_path / "memory").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "streamed").iterdir())
    for file in files:
        if file != "manifest.json":
            assert filecmp.cmp(tmp_path / "memory" / file, tmp_path / "streamed" / file, shallow=False), file
    a, b = (json.loads((tmp_path / side / "manifest.json").read_text()) for side in ("memory", "streamed"))
    for manifest in (a, b):
        for entry in manifest["graphs"].values():
            entry.pop("export_seconds")
    assert a == b


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-llava"])
def test_layer_streamed_reference_equals_the_in_memory_reference(name, tmp_path):
    bb = tiny_backbone(name)
    bb.model.save_pretrained(tmp_path)
    streamed, weights = open_backbone(name, model_path=tmp_path)
    streamed = stream_layers(streamed, weights)
    plan = PruningPlan.halfv(shipped_profile(name))
    image = TINY_IMAGES[name][0]
    batch = bb.example_batch(2, image, text_before=5, text_after=7, seed=3)
    ours, theirs = streamed.prepare(batch), bb.prepare(batch)
    assert torch.equal(ours.embeds, theirs.embeds)
    tokens_a, pre_a = generate(streamed, ours, plan, max_new_tokens=6)
    tokens_b, pre_b = generate(bb, theirs, plan, max_new_tokens=6)
    assert torch.equal(tokens_a, tokens_b) and torch.equal(pre_a.logits, pre_b.logits)
    assert torch.equal(pre_a.kept_ivr, pre_b.kept_ivr)
    for (ka, va), (kb, vb) in zip(pre_a.cache, pre_b.cache):
        assert torch.equal(ka, kb) and torch.equal(va, vb)
    loaded = [i for i, layer in enumerate(streamed.text_model.layers)
              if not any(p.is_meta for p in layer.parameters())]
    assert len(loaded) <= 2, f"layers {loaded} still hold weights"


def test_activation_monitor_flags_layers_that_would_overflow_fp16():
    entry = get_entry("tiny-llava")
    bb = build_random(entry)
    inputs = bb.prepare(bb.example_batch(1, TINY_IMAGES["tiny-llava"][0], text_before=3, text_after=4))
    with watch_layers(bb.text_model.layers) as largest:
        prefill(bb, inputs)
    assert len(largest) == bb.num_layers and all(0 < v < FP16_SAFE_MAX for v in largest)
    assert fp16_overflow_layers(largest) == []
    with torch.no_grad():
        bb.text_model.layers[3].mlp.up_proj.weight.mul_(1e5)  # an MLP intermediate past fp16's range
    with watch_layers(bb.text_model.layers) as largest:
        prefill(bb, inputs)
    assert 3 in fp16_overflow_layers(largest) and largest[3] > FP16_SAFE_MAX
    assert all(v < FP16_SAFE_MAX for v in largest[:3])


def test_calibration_on_the_layer_streamed_reference_equals_the_in_memory_one():
    from halfv_export.backbones.registry import load_backbone, reference_backbone
    from halfv_export.calibration.data import synthetic_samples
    from halfv_export.calibration.run import calibrate

    samples = synthetic_samples(2)
    streamed = reference_backbone("shapes-llava")
    assert streamed.layer_source is not None
    a = calibrate(load_backbone("shapes-llava"), "shapes-llava", samples).to_dict()
    b = calibrate(streamed, "shapes-llava", samples).to_dict()
    assert a == b
