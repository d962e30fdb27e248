"""Optimization-profile arithmetic, without TensorRT: per-layer past lengths equal the reference's KV
lengths and the exported graphs' present shapes; every profile is min <= opt <= max over the graphs' inputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from halfv_export.engines import profiles as prof
from halfv_export.engines.compare import parity_feeds
from halfv_export.core.errors import UserError
from halfv_export.core.manifest import Manifest
from halfv_export.method.decoder import prefill_tensors
from halfv_export.core.plan import PruningPlan
from halfv_export.core.profile import shipped_profile
from tests.conftest import TINY, tiny_backbone
from tests.runtime.exported import exported_graphs as exported


def reference_kv_lengths(name: str, text_before: int, n: int, text_after: int) -> list[int]:
    bb = tiny_backbone(name)
    seq = text_before + n + text_after
    embeds = torch.randn(1, seq, bb.hidden_size, generator=torch.Generator().manual_seed(n))
    pos = torch.arange(seq).view(1, 1, -1).expand(3, 1, -1) if bb.position_rows == 3 else torch.arange(seq)[None]
    plan = PruningPlan.halfv(shipped_profile(name), "oneshot")
    with torch.no_grad():
        return prefill_tensors(bb, embeds, pos, text_before, n, plan).kv_lengths


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("n", [16, 23])
def test_schedule_matches_reference_kv_lengths(name, n):
    profile = shipped_profile(name)
    schedule = prof.Schedule.from_profile(profile, tiny_backbone(name).num_layers)
    assert schedule.kv_lengths(3 + 5, n) == reference_kv_lengths(name, 3, n, 5)


def test_schedule_without_pruning_and_text_only():
    assert prof.Schedule(4).kv_lengths(10, 7) == [17] * 4
    schedule = prof.Schedule.from_profile(shipped_profile("tiny-qwen2.5-vl"), 6)
    assert schedule.kv_lengths(10, 0) == [10] * 6


@pytest.fixture(scope="module", params=["tiny-qwen2.5-vl", "tiny-llava"])  # topk SSR and freeze SSR
def graphs(request):
    return Manifest.load(exported(request.param))


@pytest.mark.slow_cases("tiny-llava")
def test_schedule_matches_exported_present_shapes(graphs):
    """Run prefill.onnx at one size: each layer's present length is the schedule's."""
    ranges = prof.make_ranges(graphs, max_text=16, max_new_tokens=4)
    feed = parity_feeds(graphs, "prefill", ranges)[1]
    session = ort.InferenceSession(str(graphs.path("prefill")), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    text = feed["prefix_embeds"].shape[1] + feed["suffix_embeds"].shape[1]
    n = feed["visual_embeds"].shape[1]
    layers = graphs["config"]["num_layers"]
    assert [outputs[f"present.{i}.key"].shape[2] for i in range(layers)] == \
        prof.Schedule.from_manifest(graphs).kv_lengths(text, n)


@pytest.mark.slow_cases("tiny-llava")
def test_profiles_cover_every_input_in_order(graphs):
    ranges = prof.make_ranges(graphs, max_text=64, max_new_tokens=32, max_batch=2)
    profiles, skipped = prof.engine_profiles(graphs, ranges)
    assert set(profiles) == {"embed", "prefill", "decode"}
    assert set(skipped) <= {"vision"}  # the vision graph has no engine-profile rule yet (README: not verified)
    for role, shapes in profiles.items():
        inputs = graphs.graph(role)["inputs"]
        assert list(shapes) == [spec["name"] for spec in inputs]
        for spec in inputs:
            lo, opt, hi = (np.array(s) for s in shapes[spec["name"]])
            assert len(lo) == len(spec["shape"])
            assert (lo <= opt).all() and (opt <= hi).all(), (role, spec["name"])
            static = [i for i, d in enumerate(spec["shape"]) if isinstance(d, int)]
            assert all(lo[i] == hi[i] == spec["shape"][i] for i in static)
    vt = graphs["visual_tokens"]
    prefill = profiles["prefill"]
    assert [s[1] for s in prefill["visual_embeds"]] == [vt["min"], vt["opt"], vt["max"]]
    # position_ids cover exactly prefix + visual + suffix at min, opt and max
    seq = [s[-1] for s in prefill["position_ids"]]
    assert seq == [sum(prefill[n][i][1] for n in ("prefix_embeds", "visual_embeds", "suffix_embeds"))
                   for i in range(3)]
    # decode: per layer, empty cache .. longest pruned prompt cache + every generated token
    schedule = prof.Schedule.from_manifest(graphs)
    longest = schedule.kv_lengths(ranges.text.max, vt["max"])
    for i, length in enumerate(longest):
        assert profiles["decode"][f"past.{i}.key"][2][2] == length + ranges.new_tokens
        assert profiles["decode"][f"past.{i}.key"][0][2] == 0


@pytest.mark.slow_cases("tiny-llava")
def test_parity_feeds_fit_the_profiles(graphs):
    ranges = prof.make_ranges(graphs, max_text=16, max_new_tokens=4, max_batch=2)
    profiles, _ = prof.engine_profiles(graphs, ranges)
    for role in ("prefill", "decode"):
        for feed in parity_feeds(graphs, role, ranges):
            assert set(feed) == set(profiles[role])
            for name, value in feed.items():
                lo, _, hi = profiles[role][name]
                assert all(a <= d <= b for a, d, b in zip(lo, value.shape, hi)), (role, name, value.shape)


def test_qwen_pixel_range():
    manifest = Manifest.load(exported("tiny-qwen2.5-vl"))
    vt = manifest["visual_tokens"]
    r = prof.visual_range(manifest, min_pixels=56 * 56, max_pixels=28 * 28 * 100)
    assert (r.min, r.max) == (4, 100) and r.opt == (4 + 100) // 2
    r = prof.visual_range(manifest, min_pixels=56 * 56 + 1)  # one pixel more needs the next token
    assert r.min == 5 and r.max == vt["max"]
    with pytest.raises(UserError, match="outside the graphs' range"):
        prof.visual_range(manifest, max_pixels=28 * 28 * (vt["max"] + 1))
    with pytest.raises(UserError, match="gives no visual-token count"):
        prof.visual_range(manifest, min_pixels=10_000, max_pixels=9_000)


@pytest.mark.slow
def test_pixels_refused_for_llava():
    manifest = Manifest.load(exported("tiny-llava"))
    with pytest.raises(UserError, match="apply to Qwen2.5-VL only"):
        prof.make_ranges(manifest, max_pixels=336 * 336)
