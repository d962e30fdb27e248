"""Vision graphs in ONNX Runtime equal transformers' vision path (backbone.image_features)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from halfv_export.backbones.base import MultimodalBatch
from halfv_export.backbones.registry import MODELS, build_random
from halfv_export.core.errors import UserError
from halfv_export.graphs.vision import export_vision, preprocess_config, vision_spec
from halfv_export.core.manifest import sha256_file
from halfv_export.core.families.llava import llava_next_pack_index
from halfv_export.core.families.qwen2_5_vl import qwen_vision_inputs
from halfv_export.runtime.preprocess import vision_feed
from tests.conftest import tiny_backbone

ATOL = 1e-4  # fp32 graph vs transformers eager; measured differences are ~1e-7


def _session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # CI shares two cores
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _qwen_window_112():
    """The tiny Qwen tower with the 7B window geometry (112 px windows: 4x4 merged tokens)."""
    entry = MODELS["tiny-qwen2.5-vl"]
    config = entry.make_config()
    config.vision_config.window_size = 112
    return build_random(entry, config=config)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (backbone, manifest entry, ORT session, folder); each graph exported once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            bb = _qwen_window_112() if name == "qwen-window-112" else tiny_backbone(name)
            folder = tmp_path_factory.mktemp(name)
            entry = export_vision(bb, folder / "vision.onnx")
            cache[name] = (bb, entry, _session(folder / entry["file"]), folder)
        return cache[name]

    return get


def _run(bb, session, batch: MultimodalBatch) -> np.ndarray:
    """Feed the graph from the batch the way the runtime does (host layout from the grid / sizes)."""
    cfg = bb.config
    if bb.family == "qwen2_5_vl":
        vc = cfg.vision_config
        host = qwen_vision_inputs(batch.image_grid_thw.numpy(), vc.spatial_merge_size, vc.window_size, vc.patch_size)
        return session.run(None, {"pixel_values": batch.pixel_values.numpy(), **host})[0]
    if bb.family == "llava":
        return session.run(None, {"pixel_values": batch.pixel_values.numpy()})[0]
    sizes = [tuple(s) for s in batch.image_sizes.tolist()]
    tiles = batch.pixel_values.reshape(-1, *batch.pixel_values.shape[2:]).numpy()
    index = llava_next_pack_index(sizes, cfg.image_grid_pinpoints, cfg.vision_config.image_size,
                                  cfg.vision_config.patch_size)
    return session.run(None, {"pixel_values": tiles, "pack_index": index})[0]


def _assert_matches(name, exported, image, batch_size=1, seed=0):
    bb, _, session, _ = exported(name)
    batch = bb.example_batch(batch_size, image, 2, 2, seed=seed)
    with torch.no_grad():
        ref = bb.image_features(batch).numpy()  # [B, N, D]
    out = _run(bb, session, batch)
    assert out.reshape(ref.shape).shape == ref.shape and out.size == ref.size
    np.testing.assert_allclose(out.reshape(ref.shape), ref, atol=ATOL, rtol=0)
    return out


# 112x168: llm grid 4x6, a multiple of the tiny 2x2-token window; 140x196: 5x7, padded windows
@pytest.mark.parametrize("image", [(112, 168), (140, 196)])
@pytest.mark.slow
def test_qwen_matches_transformers(exported, image):
    out = _assert_matches("tiny-qwen2.5-vl", exported, image)
    assert out.shape == ((image[0] // 28) * (image[1] // 28), 128)


@pytest.mark.slow
def test_qwen_two_images_attend_separately(exported):
    # full-attention blocks must not mix the two images: one call equals transformers' batch
    _assert_matches("tiny-qwen2.5-vl", exported, (84, 140), batch_size=2, seed=3)


@pytest.mark.parametrize("image", [(112, 168), (168, 224)])
@pytest.mark.slow
def test_qwen_7b_window_geometry_matches_transformers(exported, image):
    # window 112 px = 4x4 merged tokens (64 patches); 4x6 and 6x8 token grids both need padded windows
    bb, entry, _, _ = exported("qwen-window-112")
    rows = next(i for i in entry["inputs"] if i["name"] == "window_rows")
    assert rows["shape"][1] == 64
    _assert_matches("qwen-window-112", exported, image)


def test_llava_matches_transformers_on_two_images(exported):
    first = _assert_matches("tiny-llava", exported, (56, 56), seed=1)
    second = _assert_matches("tiny-llava", exported, (56, 56), seed=2)
    assert not np.allclose(first, second)  # two different images, two different outputs
    _assert_matches("tiny-llava", exported, (56, 56), batch_size=2, seed=4)


# (56, 56): 2x2 tiles, nothing to unpad; (40, 56): letterboxed rows removed; (56, 34): columns removed
@pytest.mark.parametrize("image,tokens", [((56, 56), 24), ((40, 56), 14), ((56, 34), 16), ((28, 56), 14)])
def test_llava_next_matches_transformers(exported, image, tokens):
    out = _assert_matches("tiny-llava-next", exported, image)
    assert out.shape == (tokens, 128)


def test_llava_next_two_images_in_one_call(exported):
    bb, _, session, _ = exported("tiny-llava-next")
    a = bb.example_batch(1, (56, 56), 1, 1, seed=5)
    b = bb.example_batch(1, (40, 56), 1, 1, seed=6)
    with torch.no_grad():
        ref = np.concatenate([bb.image_features(x).numpy()[0] for x in (a, b)])
    cfg = bb.config
    index = llava_next_pack_index([(56, 56), (40, 56)], cfg.image_grid_pinpoints, 28, 14)
    tiles = torch.cat([a.pixel_values[0], b.pixel_values[0]]).numpy()
    out = session.run(None, {"pixel_values": tiles, "pack_index": index})[0]
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)


def _processor(bb):
    vc = bb.config.vision_config
    if bb.family == "qwen2_5_vl":
        return Qwen2VLImageProcessorPil(patch_size=vc.patch_size, merge_size=vc.spatial_merge_size,
                                        temporal_patch_size=vc.temporal_patch_size)
    size = {"shortest_edge": vc.image_size}
    crop = {"height": vc.image_size, "width": vc.image_size}
    if bb.family == "llava":
        return CLIPImageProcessorPil(size=size, crop_size=crop)
    return LlavaNextImageProcessorPil(size=size, crop_size=crop, image_grid_pinpoints=bb.config.image_grid_pinpoints)


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-llava", "tiny-llava-next"])
def test_image_file_to_features_end_to_end(exported, tmp_path, name):
    """PNG -> runtime preprocessing + host inputs -> ORT  ==  transformers processor -> image_features."""
    bb, entry, session, _ = exported(name)
    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((61, 90), (75, 47))]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        image.save(paths[-1])
    feed, counts = vision_feed(paths, entry["preprocess"])
    out = session.run(None, feed)[0]
    refs = []
    for image in images:
        proc = _processor(bb)(images=image, return_tensors="pt")
        batch = MultimodalBatch(torch.zeros(1, 1, dtype=torch.long), proc["pixel_values"],
                                image_grid_thw=proc.get("image_grid_thw"), image_sizes=proc.get("image_sizes"))
        with torch.no_grad():
            refs.append(bb.image_features(batch).numpy()[0])
    assert counts == [r.shape[0] for r in refs]
    np.testing.assert_allclose(out.reshape(-1, out.shape[-1]), np.concatenate(refs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-llava", "tiny-llava-next"])
def test_manifest_entry_describes_the_file(exported, name):
    bb, entry, _, folder = exported(name)
    path = folder / entry["file"]
    assert entry["sha256"] == {entry["file"]: sha256_file(path)} and entry["data"] is None
    assert [i["name"] for i in entry["inputs"]] == vision_spec(bb).input_names
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 20
    for value in entry["inputs"]:
        assert isinstance(value["shape"][0], str), f"{value['name']} must have a symbolic first dim"
    out = entry["outputs"][0]
    assert out["name"] == "image_features" and out["shape"][-1] == bb.hidden_size
    assert isinstance(out["shape"][0], str)
    # no data-dependent-shape ops: every size in the graph follows from the input shapes
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"NonZero", "Loop", "If", "Unique", "Scan"}
    assert entry["preprocess"] == preprocess_config(bb) and entry["preprocess"]["family"] == bb.family
    assert sorted(os.listdir(folder)) == ["vision.onnx"]  # nothing left from the atomic write


def test_export_refuses_low_opset_and_writes_nothing(tmp_path):
    bb = tiny_backbone("tiny-llava")
    with pytest.raises(UserError, match="opset"):
        export_vision(bb, tmp_path / "v.onnx", opset=17)
    assert not any(tmp_path.iterdir())


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    """A save that dies half-way (disk full) leaves neither a partial graph nor staging files."""
    bb = tiny_backbone("tiny-llava")

    def partial_save(self, destination, **kwargs):
        with open(destination, "wb") as fh:
            fh.write(b"half a model")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", partial_save)
    with pytest.raises(OSError, match="No space"):
        export_vision(bb, tmp_path / "v.onnx")
    assert not any(tmp_path.iterdir())


def test_spec_examples_have_padded_windows():
    # the traced Qwen example must exercise padding, or a shape could be specialised on full windows
    spec = vision_spec(tiny_backbone("tiny-qwen2.5-vl"))
    bias = dict(zip(spec.input_names, spec.args))["window_bias"]
    assert (bias < 0).any() and (bias == 0).any()
    sizes = {spec.args[0].shape[0]} | {a.shape[0] for a in spec.args[2:]}
    assert len(sizes) == 3  # patches, windows, frames all differ: no accidental dim unification


def test_preprocess_config_reads_the_checkpoint_processor_settings(tmp_path, monkeypatch):
    bb = tiny_backbone("tiny-qwen2.5-vl")
    defaults = preprocess_config(bb)
    (tmp_path / "preprocessor_config.json").write_text(
        '{"min_pixels": 3136, "max_pixels": 12845056, "image_mean": [0.5, 0.5, 0.5], "resample": 2}')
    monkeypatch.setattr(bb.config, "_name_or_path", str(tmp_path))
    cfg = preprocess_config(bb)
    assert (cfg["max_pixels"], cfg["image_mean"], cfg["resample"]) == (12845056, [0.5] * 3, "bilinear")
    assert cfg["image_std"] == defaults["image_std"] and cfg["window_size"] == defaults["window_size"]


def test_preprocess_config_refuses_a_crop_the_graph_cannot_take(tmp_path, monkeypatch):
    bb = tiny_backbone("tiny-llava")
    (tmp_path / "preprocessor_config.json").write_text('{"crop_size": {"height": 336, "width": 336}}')
    monkeypatch.setattr(bb.config, "_name_or_path", str(tmp_path))
    with pytest.raises(UserError, match="crops to 336"):
        preprocess_config(bb)
