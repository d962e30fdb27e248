"""The comparison behind compare_trt, exercised with two real Polygraphy runners (ORT vs ORT here, where
TensorRT cannot run): identical graphs pass, a perturbed weight fails on logits and present KV."""

from __future__ import annotations

import numpy as np
import pytest
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

from halfv_export.engines import profiles as prof
from halfv_export.engines.builder import tensorrt_available
from halfv_export.engines.compare import compare_outputs, compare_runners, compare_trt, parity_feeds
from halfv_export.core.errors import UserError
from halfv_export.graphs.export import DECODER_DATA
from halfv_export.core.manifest import DATA_FILES, Manifest
from tests.runtime.exported import copy_graphs, exported_graphs as exported


@pytest.fixture(scope="module")
def qwen():
    manifest = Manifest.load(exported("tiny-qwen2.5-vl"))
    ranges = prof.make_ranges(manifest, max_text=16, max_new_tokens=4)
    return manifest, ranges


def runner(path, name):
    return OnnxrtRunner(SessionFromOnnx(str(path), providers=["cpu"]), name=name)


def test_same_graph_passes(qwen):
    manifest, ranges = qwen
    feeds = parity_feeds(manifest, "decode", ranges)
    report = compare_runners(runner(manifest.path("decode"), "a"), runner(manifest.path("decode"), "b"), feeds, "fp32")
    assert report["passed"] and len(report["iterations"]) == 2
    outputs = report["iterations"][0]["outputs"]
    assert outputs["logits"]["max_abs_diff"] == 0.0 and "present.0.key" in outputs


def test_perturbed_weight_fails(qwen, tmp_path):
    manifest, ranges = qwen
    copy = copy_graphs("tiny-qwen2.5-vl", tmp_path)
    copied = Manifest.load(copy)
    tensors = copied[DATA_FILES][DECODER_DATA]["tensors"]
    # the prefill graph's largest weight (an LM matrix), in the data file all decoder graphs share
    biggest = max((tensors[n] for n in copied.graph("prefill")["shared_initializers"]), key=lambda t: t["length"])
    weight = np.memmap(copy / DECODER_DATA, dtype=np.float32, mode="r+", offset=biggest["offset"],
                       shape=tuple(biggest["shape"]))
    weight *= np.float32(1.5)
    weight.flush()
    del weight
    feeds = parity_feeds(manifest, "prefill", ranges)
    report = compare_runners(runner(manifest.path("prefill"), "ref"), runner(copy / "prefill.onnx", "bad"),
                             feeds, "fp16")
    assert not report["passed"]
    assert not report["iterations"][1]["outputs"]["logits"]["passed"]


def test_index_outputs():
    ref = {"kept_ivr": np.arange(10)[None], "logits": np.zeros((1, 4), np.float32)}
    near = {"kept_ivr": np.r_[np.arange(9), 11][None], "logits": np.full((1, 4), 0.01, np.float32)}
    assert not compare_outputs(ref, near, "fp32")["kept_ivr"]["passed"]  # fp32: exact indices
    fp16 = compare_outputs(ref, near, "fp16")
    assert fp16["kept_ivr"]["agreement"] == 0.9 and fp16["kept_ivr"]["passed"] and fp16["logits"]["passed"]
    assert not compare_outputs(ref, {"kept_ivr": np.arange(9)[None], "logits": ref["logits"]}, "fp16")[
        "kept_ivr"]["passed"]


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is importable here")
def test_compare_trt_without_tensorrt(tmp_path):
    with pytest.raises(UserError, match="TensorRT is not importable here"):
        compare_trt(exported("tiny-qwen2.5-vl"), tmp_path)
