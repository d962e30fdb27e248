"""The HalfV reference decoder: equals transformers when unpruned; IVR/SSR semantics as the method page says."""

from __future__ import annotations

import pytest
import torch

from halfv_export.method import PruningPlan, generate, prefill
from halfv_export.method.layers import causal_mask, frozen_span_layer_step, layer_step
from halfv_export.method.selection import anchor_relevance
from tests.conftest import TINY_IMAGES, tiny_backbone


def example(bb, name, image_index=0, batch=2, seed=0):
    image = TINY_IMAGES[name][image_index % len(TINY_IMAGES[name])]
    b = bb.example_batch(batch, image, text_before=5, text_after=7, seed=seed)
    return b, bb.prepare(b)


@pytest.mark.parametrize("image_index", [0, 1])
def test_unpruned_logits_equal_transformers(tiny, tiny_name, image_index):
    batch, inputs = example(tiny, tiny_name, image_index)
    ours = prefill(tiny, inputs).logits
    with torch.no_grad():
        theirs = tiny.model(**tiny.hf_generate_kwargs(batch)).logits[:, -1]
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_unpruned_generate_equals_transformers(tiny, tiny_name):
    batch, inputs = example(tiny, tiny_name)
    ours, _ = generate(tiny, inputs, None, max_new_tokens=16)
    with torch.no_grad():
        theirs = tiny.model.generate(**tiny.hf_generate_kwargs(batch), max_new_tokens=16, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)[:, batch.input_ids.shape[1]:]
    assert ours.shape == (2, 16)
    assert torch.equal(ours, theirs)


def test_text_only_request_runs_unpruned_and_equals_transformers(tiny, tiny_profile):
    batch = tiny.example_batch(2, None, text_before=6, text_after=5)
    inputs = tiny.prepare(batch)
    assert inputs.visual_count == 0
    result = prefill(tiny, inputs, PruningPlan.halfv(tiny_profile))
    with torch.no_grad():
        theirs = tiny.model(**tiny.hf_generate_kwargs(batch)).logits[:, -1]
    assert result.kept_ivr is None
    assert (result.logits - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize("coverage", ["fps", "oneshot"])
def test_kept_counts_order_and_kv_lengths(tiny, tiny_name, tiny_profile, coverage):
    for image_index in (0, 1):
        _, inputs = example(tiny, tiny_name, image_index)
        n, seq = inputs.visual_count, inputs.embeds.shape[1]
        result = prefill(tiny, inputs, PruningPlan.halfv(tiny_profile, coverage))
        k = tiny_profile.ivr_count(n)
        assert result.kept_ivr.shape == (2, k)
        for row in result.kept_ivr:
            assert torch.all(row[1:] > row[:-1]), "survivors keep their original order, no duplicates"
            assert 0 <= row.min() and row.max() < n
        text = seq - n
        if tiny_profile.ssr_mode == "topk":
            k_last = tiny_profile.ssr_count(n)
            assert result.kept_ssr.shape == (2, k_last)
            for ivr_row, ssr_row in zip(result.kept_ivr, result.kept_ssr):
                assert set(ssr_row.tolist()) <= set(ivr_row.tolist()), "SSR selects among IVR survivors only"
        else:
            k_last = k
            assert result.kept_ssr is None
        ivr, ssr, layers = tiny_profile.ivr_layer, tiny_profile.ssr_layer, tiny_profile.num_layers
        expected = [seq] * ivr + [text + k] * (ssr - ivr) + [text + k_last] * (layers - ssr)
        assert result.kv_lengths == expected


def test_anchors_are_kept(tiny, tiny_name, tiny_profile):
    _, inputs = example(tiny, tiny_name)
    plan = PruningPlan.halfv(tiny_profile, "fps")
    result = prefill(tiny, inputs, plan, collect_hidden=True)
    n, start = inputs.visual_count, inputs.visual_start
    prev_input = result.hidden[plan.prune_layer - 1]
    relevance = anchor_relevance(tiny.layers[plan.prune_layer - 1], prev_input, start, n, tiny.head_dim)
    anchors = torch.topk(relevance, plan.anchor_count(n), dim=-1).indices
    for anchor_row, kept_row in zip(anchors, result.kept_ivr):
        assert set(anchor_row.tolist()) <= set(kept_row.tolist())


def test_survivors_keep_original_positions(tiny_name):
    """IVR alone equals an independent run: transformers' own layers on the kept rows with their ORIGINAL positions."""
    bb = tiny_backbone(tiny_name)
    _, inputs = example(bb, tiny_name, batch=1)
    plan = PruningPlan(prune_layer=2, keep=0.5, selector="fps", anchor_share=0.25)
    ours = prefill(bb, inputs, plan)
    start, n = inputs.visual_start, inputs.visual_count
    keep = torch.cat([torch.arange(start), start + ours.kept_ivr[0], torch.arange(start + n, inputs.embeds.shape[1])])
    with torch.no_grad():
        h = inputs.embeds
        cos, sin = bb.rotary(inputs.position_ids, h)
        full_mask = causal_mask(torch.arange(h.shape[1]), torch.arange(h.shape[1]), h.dtype)
        for layer in bb.layers[:2]:
            h = layer(h, attention_mask=full_mask, position_embeddings=(cos, sin))
        h = h[:, keep]
        positions = inputs.position_ids[..., keep]  # original positions, never renumbered
        cos, sin = bb.rotary(positions, h)
        mask = causal_mask(torch.arange(h.shape[1]), torch.arange(h.shape[1]), h.dtype)
        for layer in bb.layers[2:]:
            h = layer(h, attention_mask=mask, position_embeddings=(cos, sin))
        logits = bb.lm_head(bb.final_norm(h[:, -1]))
    assert (ours.logits - logits).abs().max().item() <= 1e-5


def test_freeze_keeps_visual_rows_and_text_still_attends(tiny_name):
    bb = tiny_backbone(tiny_name)
    _, inputs = example(bb, tiny_name, batch=1)
    h = inputs.embeds
    rope = bb.rotary(inputs.position_ids, h)
    start, n = inputs.visual_start, inputs.visual_count
    seq = torch.arange(h.shape[1])
    with torch.no_grad():
        frozen, (k_frozen, _) = frozen_span_layer_step(bb.layers[3], h, rope, start, n, bb.head_dim)
        full, (k_full, _) = layer_step(bb.layers[3], h, rope, causal_mask(seq, seq, h.dtype), bb.head_dim)
    assert torch.equal(frozen[:, start:start + n], h[:, start:start + n]), "visual rows pass unchanged"
    text = torch.cat([seq[:start], seq[start + n:]])
    # text rows see exactly what a normal layer gives them: keys/values of the frozen visual rows included
    assert (frozen[:, text] - full[:, text]).abs().max().item() <= 1e-5
    assert k_frozen.shape[2] == h.shape[1] and torch.allclose(k_frozen, k_full, atol=1e-6)


def test_freeze_profile_visual_hidden_constant_after_ssr(tiny_name, tiny_profile):
    if tiny_profile.ssr_mode != "freeze":
        pytest.skip("freeze is the LLaVA-family SSR mode")
    bb = tiny_backbone(tiny_name)
    _, inputs = example(bb, tiny_name)
    result = prefill(bb, inputs, PruningPlan.halfv(tiny_profile), collect_hidden=True)
    start, count = result.visual_spans[tiny_profile.ssr_layer]
    reference = result.hidden[tiny_profile.ssr_layer][:, start:start + count]
    for hidden in result.hidden[tiny_profile.ssr_layer + 1:]:
        assert torch.equal(hidden[:, start:start + count], reference)


def test_batch_rows_equal_single_requests(tiny, tiny_name, tiny_profile):
    _, inputs = example(tiny, tiny_name, batch=2)
    plan = PruningPlan.halfv(tiny_profile)
    both = prefill(tiny, inputs, plan)
    for row in range(2):
        single_inputs = type(inputs)(inputs.embeds[row:row + 1], inputs.position_ids[..., row:row + 1, :]
                                     if inputs.position_ids.dim() == 3 else inputs.position_ids[row:row + 1],
                                     inputs.visual_start, inputs.visual_count, inputs.next_position[row:row + 1])
        one = prefill(tiny, single_inputs, plan)
        assert torch.equal(one.kept_ivr[0], both.kept_ivr[row])
        assert (one.logits[0] - both.logits[row]).abs().max().item() <= 1e-5


def test_pruned_generate_decodes_over_ragged_cache(tiny, tiny_name, tiny_profile):
    _, inputs = example(tiny, tiny_name)
    tokens, result = generate(tiny, inputs, PruningPlan.halfv(tiny_profile), max_new_tokens=8)
    assert tokens.shape == (2, 8)
    assert len(set(result.kv_lengths)) == (3 if tiny_profile.ssr_mode == "topk" else 2)


def test_fastv_keeps_the_most_attended(tiny, tiny_name):
    _, inputs = example(tiny, tiny_name)
    result = prefill(tiny, inputs, PruningPlan.fastv(keep=0.25))
    assert result.kept_ivr.shape[1] == max(1, inputs.visual_count // 4)
    assert result.kv_lengths[:2] == [inputs.embeds.shape[1]] * 2
