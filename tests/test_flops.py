"""The FLOPs model: hand-checked small cases, and the paper's Qwen2.5-VL-7B speedups on the real config."""

from __future__ import annotations

import pytest

from halfv_export.backbones.registry import get_entry
from halfv_export.core.errors import UserError
from halfv_export.core.flops import (DecoderDims, LayerRows, fastv_schedule, halfv_schedule, kv_cache_bytes,
                                layer_flops, prefill_flops, speedup_table, unpruned_schedule)
from halfv_export.core.profile import Profile, shipped_profile

# d=2, m=3, 2 heads of width 1, 1 kv head.
SMALL = DecoderDims(num_layers=4, hidden=2, intermediate=3, num_heads=2, num_kv_heads=1, head_dim=1)


def small_profile(mode: str) -> Profile:
    return Profile(backbone="x", num_layers=4, ivr_layer=1, ssr_layer=3, ssr_mode=mode, ivr_keep=0.5,
                   anchor_share=0.5, ssr_keep=0.25 if mode == "topk" else None)


def test_paper_formula_by_hand():
    # n=3: 4*3*4 + 2*9*2 + 2*3*2*3 = 48 + 36 + 36
    assert layer_flops(SMALL, LayerRows(3, 3), "paper") == 120
    # query 1, kv 3: q,o 2*1*4 + k,v 2*3*4 + attention 2*1*3*2 + MLP 2*1*2*3 = 8 + 24 + 12 + 12
    assert layer_flops(SMALL, LayerRows(1, 3), "paper") == 56


def test_gqa_formula_by_hand():
    # n=3, q width 2, kv width 1: 2*3*2*2 + 2*3*2*1 + 2*9*2 + 3*3*2*3 = 24 + 12 + 36 + 54
    assert layer_flops(SMALL, LayerRows(3, 3), "gqa") == 126
    # with full-width kv and a plain 2-matrix MLP the two formulas would agree; here kv is half width
    mha = DecoderDims(1, hidden=4, intermediate=8, num_heads=2, num_kv_heads=2, head_dim=2)
    assert layer_flops(mha, LayerRows(5, 5), "gqa") - layer_flops(mha, LayerRows(5, 5), "paper") == 5 * 4 * 8


def test_unknown_formula_is_a_user_error():
    with pytest.raises(UserError, match="unknown FLOPs formula"):
        layer_flops(SMALL, LayerRows(1, 1), "dense")


def test_halfv_topk_schedule_by_hand():
    # T=2, N=8: K = 4 from layer 1, K_ssr = 2 from layer 3.
    sched = halfv_schedule(small_profile("topk"), 2, 8)
    assert sched == [LayerRows(10, 10), LayerRows(6, 6), LayerRows(6, 6), LayerRows(4, 4)]
    # f(n) = 4 n d^2 + 2 n^2 d + 2 n d m: f(10)=4*10*4+2*100*2+2*10*6=680, f(6)=96+144+72=312, f(4)=64+64+48=176
    assert prefill_flops(SMALL, sched) == 680 + 312 + 312 + 176
    assert prefill_flops(SMALL, unpruned_schedule(4, 2, 8)) == 4 * 680


def test_halfv_freeze_schedule_counts_kv_of_frozen_rows():
    # Freeze from layer 3: text (2 rows) updated, the 4 frozen visual rows still projected to k/v.
    sched = halfv_schedule(small_profile("freeze"), 2, 8)
    assert sched[3] == LayerRows(2, 6)
    # q,o 2*2*4 + k,v 2*6*4 + attention 2*2*6*2 + MLP 2*2*2*3 = 16 + 48 + 48 + 24
    assert layer_flops(SMALL, sched[3]) == 136
    # cache: 10, 6, 6, 6 rows, one kv head of width 1, keys and values, 4 bytes
    assert kv_cache_bytes(SMALL, sched) == (10 + 6 + 6 + 6) * 2 * 4


def test_fastv_schedule_and_bounds():
    assert fastv_schedule(4, 2, 8, keep=0.5, layer=2) == [LayerRows(10, 10)] * 2 + [LayerRows(6, 6)] * 2
    # keep never drops to zero visual tokens (max(1, floor(N * keep)))
    assert fastv_schedule(4, 2, 3, keep=0.1, layer=1)[1] == LayerRows(3, 3)
    with pytest.raises(UserError):
        fastv_schedule(4, 2, 8, keep=0.5, layer=4)


def test_text_only_prompt_is_not_pruned():
    assert halfv_schedule(small_profile("topk"), 5, 0) == unpruned_schedule(4, 5, 0)


@pytest.fixture(scope="module")
def qwen7b():
    return DecoderDims.from_config(get_entry("qwen2.5-vl-7b").make_config().text_config), \
        shipped_profile("qwen2.5-vl-7b")


def test_qwen7b_dims_from_registry(qwen7b):
    dims, _ = qwen7b
    assert dims == DecoderDims(28, 3584, 18944, 28, 4, 128)


@pytest.mark.parametrize("n_visual, expected", [(1000, 3.5), (4000, 4.1)])
def test_qwen7b_paper_speedup(qwen7b, n_visual, expected):
    """Method page section 6: about 3.5x at N=1000 and 4.1x at N=4000 with ~60 text tokens."""
    dims, profile = qwen7b
    row = speedup_table(dims, profile, 60, [n_visual], fastv_keep=0.5)[0]
    assert row["paper"]["speedup"]["halfv"] == pytest.approx(expected, abs=0.06)
    # the refinement keeps the ordering: HalfV prunes more than FastV at 50%
    assert row["gqa"]["speedup"]["halfv"] > row["gqa"]["speedup"]["fastv"] > 1


def test_speedup_grows_with_visual_tokens(qwen7b):
    dims, profile = qwen7b
    rows = speedup_table(dims, profile, 60, [576, 1024, 2048, 4096], fastv_keep=0.25)
    for formula in ("paper", "gqa"):
        values = [r[formula]["speedup"]["halfv"] for r in rows]
        assert values == sorted(values) and values[0] > 1
    kv = rows[-1]["kv_cache_bytes_fp32"]
    assert kv["halfv"] < kv["fastv"] < kv["unpruned"]
