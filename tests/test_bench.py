"""`halfv-export bench` end to end on a tiny model (real exporter, real ONNX Runtime), plus its pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from halfv_export.backbones.registry import get_entry
from halfv_export.bench import (VARIANTS, build_scaled, paired_ratio, prompt_feeds, scaled_profile, scaled_text_dims,
                                summarize, time_interleaved)
from halfv_export.cli import cli
from halfv_export.core.flops import DecoderDims
from halfv_export.core.profile import Profile, shipped_profile

COUNTS = (16, 40)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One real run: tiny Qwen2.5-VL cut to 3 layers (export dominates the time), 2 counts, 2 repeats."""
    out = tmp_path_factory.mktemp("bench") / "out"
    result = CliRunner().invoke(cli, ["bench", "--model", "tiny-qwen2.5-vl", "--layers", "3", "--visual-tokens",
                                      ",".join(map(str, COUNTS)), "--repeats", "2", "--threads", "1",
                                      "--ort-profile", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


@pytest.mark.slow
def test_bench_writes_json_and_png(bench_run):
    out, output = bench_run
    data = json.loads((out / "bench.json").read_text())
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.png"]  # graphs were cleaned up
    assert data["schema"] == "halfv-bench/1" and data["model"] == "tiny-qwen2.5-vl"
    assert set(data["machine"]["versions"]) >= {"torch", "onnxruntime", "onnx", "transformers"}
    assert data["profile"]["num_layers"] == 3 and data["profile"]["source"] == "scaled-from-paper"
    assert "4 n d^2 + 2 n^2 d + 2 n d m" in data["formula"]["headline"]
    assert "formula: per layer with n tokens" in output  # the CLI prints the formula it used

    assert [row["visual_tokens"] for row in data["prefill"]] == list(COUNTS)
    profile = Profile.from_dict(data["profile"])
    for row, flops in zip(data["prefill"], data["flops"]["benchmarked"]):
        n = row["visual_tokens"]
        assert set(row["variants"]) == set(VARIANTS)
        for stats in row["variants"].values():
            assert stats["median_ms"] > 0 and stats["iqr_ms"] >= 0 and stats["speedup"] > 0
            assert len(stats["runs_ms"]) == 2 and min(stats["runs_ms"]) > 0
        # the graphs pruned as much as the profile says, at each N (no constant K baked in)
        ivr = profile.ivr_count(n)
        assert ivr < n and profile.ssr_count(n) < ivr
        assert row["variants"]["halfv-fps"]["kept_ivr"] == ivr == row["variants"]["oracle"]["kept_ivr"]
        assert row["variants"]["halfv-oneshot"]["kept_ssr"] == profile.ssr_count(n)
        assert "kept_ivr" not in row["variants"]["unpruned"]
        assert row["variants"]["unpruned"]["speedup"] == 1.0
        assert row["variants"]["halfv-fps"]["over_oracle"] > 0 and row["variants"]["halfv-fps"]["over_oneshot"] > 0
        for formula in ("paper", "gqa"):
            assert flops[formula]["speedup"]["halfv"] > 1 and flops[formula]["flops"]["unpruned"] > 0
        assert profile.ivr_layer < profile.ssr_layer < 3

    for row in data["decode"]:
        caches = row["caches"]
        assert caches["unpruned"]["kv_ratio"] == 1.0
        assert 0 < caches["halfv-fps"]["kv_cache_bytes"] < caches["unpruned"]["kv_cache_bytes"]
        assert all(c["median_ms"] > 0 for c in caches.values())
        assert caches["unpruned"]["kv_lengths"] == [row["context"]] * 3
    assert [t["visual_tokens"] for t in data["targets"]] == list(COUNTS)
    assert all(v > 0 for t in data["targets"] for k, v in t.items())
    prof = data["ort_profile"]["variants"]
    assert set(prof) == set(VARIANTS)
    assert prof["halfv-fps"]["halfv_nodes_ms"] > 0 and prof["unpruned"]["halfv_nodes_ms"] == 0
    assert all(p["kernel_ms"] > 0 and p["by_op_ms"] for p in prof.values())


@pytest.mark.slow
def test_measured_kv_bytes_match_the_flops_model(bench_run):
    out, _ = bench_run
    data = json.loads((out / "bench.json").read_text())
    for row, flops in zip(data["decode"], data["flops"]["benchmarked"]):
        for cache, key in (("unpruned", "unpruned"), ("halfv-fps", "halfv"), ("fastv", "fastv")):
            assert row["caches"][cache]["kv_cache_bytes"] == flops["kv_cache_bytes_fp32"][key]


@pytest.mark.parametrize("args, message", [
    (["--visual-tokens", "16,x"], "comma-separated integers"),
    (["--visual-tokens", "0"], "positive integers"),
    (["--width", "100"], "multiple of the head size"),
    (["--layers", "2"], "--layers must be >= 3"),
    (["--fastv-keep", "1.5"], "--fastv-keep must be in (0, 1]"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["bench", "--model", "tiny-llava", "--out", str(out)] + args)
    assert result.exit_code == 2 and message in result.output
    assert not out.exists()


def test_unknown_model_is_a_user_error(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--model", "gpt-9", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown model" in result.output


def test_scaled_dims_keep_head_dim_and_gqa_ratio():
    qwen = get_entry("qwen2.5-vl-7b").make_config().text_config  # 28 heads of 128, 4 kv heads (ratio 7)
    fields = scaled_text_dims(qwen, 512)
    assert fields["num_attention_heads"] == 8 and fields["num_key_value_heads"] == 1  # 8/7 rounds to 1
    assert sum(fields["rope_parameters"]["mrope_section"]) == 32  # head_dim 64 / 2
    assert scaled_text_dims(qwen, 1024)["num_attention_heads"] == 8  # head_dim 128 kept at 8 heads
    llava = get_entry("llava-next-7b").make_config().text_config  # 32 heads, 8 kv (ratio 4)
    fields = scaled_text_dims(llava, 1024)
    assert (fields["num_attention_heads"], fields["num_key_value_heads"], fields["head_dim"]) == (8, 2, 128)
    assert fields["intermediate_size"] == 14336 // 4 and fields["vocab_size"] % 64 == 0
    assert scaled_text_dims(llava, 4096) == {}


def test_build_scaled_keeps_real_depth_and_profile():
    bb, profile, real_profile, info = build_scaled("llava-1.5-7b", 256, None)
    assert bb.num_layers == 32 and bb.hidden_size == 256 and bb.head_dim == 64
    assert profile == real_profile == shipped_profile("llava-1.5-7b")
    assert info["real"] == DecoderDims(32, 4096, 11008, 32, 32, 128).__dict__


def test_scaled_profile_moves_stage_layers():
    p = scaled_profile(shipped_profile("qwen2.5-vl-7b"), 8)  # 2/28 -> 1, 21/28 -> 6
    assert (p.num_layers, p.ivr_layer, p.ssr_layer, p.ssr_mode) == (8, 1, 6, "topk")
    p = scaled_profile(shipped_profile("llava-1.5-7b"), 3)
    assert (p.ivr_layer, p.ssr_layer) == (1, 2)


def test_prompt_feeds_use_real_positions():
    from halfv_export.backbones import load_backbone

    bb = load_backbone("tiny-qwen2.5-vl")
    feeds, next_position = prompt_feeds(bb, 8, 6, seed=0)  # 6 tokens: a 2x3 merged grid
    assert feeds["visual_embeds"].shape == (1, 6, 128) and feeds["position_ids"].shape == (3, 1, 14)
    vis = feeds["position_ids"][:, 0, 2:8]
    assert vis[1].tolist() == [2, 2, 2, 3, 3, 3] and vis[2].tolist() == [2, 3, 4, 2, 3, 4]
    assert next_position.tolist() == [2 + 3 + 6]


def test_interleaved_timing_rotates_and_excludes_warmup():
    calls = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rotated rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    stats = summarize([0.001, 0.002, 0.003, 0.004])
    assert stats["median_ms"] == pytest.approx(2.5) and stats["iqr_ms"] == pytest.approx(1.5)
    assert np.allclose(stats["runs_ms"], [1, 2, 3, 4])
    # per-round ratios 2, 4, 3: a slow round (load from elsewhere) does not skew the ratio
    assert paired_ratio([2.0, 40.0, 9.0], [1.0, 10.0, 3.0]) == 3.0
