"""The HalfV decoder loop: prefill with IVR/SSR, a ragged per-layer KV cache, greedy decoding.

This is the PyTorch reference every exported graph is compared with. It runs the model's own layer
modules through `layers.py`, so with no plan it equals the transformers model itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..backbones.base import Backbone, DecoderInputs
from .layers import causal_mask, frozen_span_layer_step, layer_step
from ..core.plan import PruningPlan
from .selection import (anchor_relevance, fps_coverage, last_token_attention, normalized_features,
                        oneshot_coverage, random_selection, sorted_topk)


@dataclass
class PrefillResult:
    logits: torch.Tensor  # [B, vocab] at the last position
    cache: list  # per layer (k, v), each [B, kv_heads, length_of_that_layer, head_dim]
    kept_ivr: torch.Tensor | None = None  # [B, K] indices into the original visual span
    kept_ssr: torch.Tensor | None = None  # [B, K_ssr] indices into the original visual span (topk)
    hidden: list = field(default_factory=list)  # with collect_hidden: layer inputs + final output
    visual_spans: list = field(default_factory=list)  # with collect_hidden: (start, count) per entry of hidden

    @property
    def kv_lengths(self) -> list[int]:
        return [k.shape[2] for k, _ in self.cache]


def keep_visual_rows(t: torch.Tensor, start, count, idx: torch.Tensor) -> torch.Tensor:
    """Replace the visual span [start, start+count) of t [B, S, X] by its rows idx [B, K]."""
    vis = t[:, start:start + count]
    kept = torch.gather(vis, 1, idx[..., None].expand(-1, -1, t.shape[-1]))
    return torch.cat([t[:, :start], kept, t[:, start + count:]], dim=1)


def select_ivr(bb: Backbone, plan: PruningPlan, prev_input, h, rope, start, count) -> torch.Tensor:
    """Indices (into the visual span) kept at the prune layer, sorted ascending."""
    layer = bb.layers[plan.prune_layer - 1]
    k = plan.kept_count(count)
    if plan.selector == "fastv":
        return sorted_topk(last_token_attention(layer, prev_input, rope, start, count, bb.head_dim), k)
    if plan.selector == "oracle":
        return torch.arange(k).view(1, -1).expand(h.shape[0], -1)
    if plan.selector == "random":
        return random_selection(h.shape[0], count, k, plan.seed)
    relevance = anchor_relevance(layer, prev_input, start, count, bb.head_dim)
    anchors = torch.topk(relevance, plan.anchor_count(count), dim=-1).indices
    features = normalized_features(bb.final_norm, h, start, count)
    if plan.selector == "fps":
        return fps_coverage(features, anchors, k)
    return oneshot_coverage(features, anchors, k)


# The two pruning steps are functions of their own so that the exporter can tell their ONNX nodes
# apart by the stack trace each node carries (graphs/naming.py names them /halfv/ivr/..., /halfv/ssr/...).
def ivr_step(bb: Backbone, plan: PruningPlan, prev_input, h, cos, sin, start, count):
    """IVR at the prune layer: (kept indices [B, K], h, cos, sin with only the kept visual rows)."""
    idx = select_ivr(bb, plan, prev_input, h, (cos, sin), start, count)
    h, cos, sin = (keep_visual_rows(t, start, count, idx) for t in (h, cos, sin))
    return idx, h, cos, sin


def ssr_topk_step(bb: Backbone, plan: PruningPlan, index, prev_input, h, cos, sin, start, count, original_count,
                  kept_ivr):
    """SSR top-k: (kept indices into the ORIGINAL span [B, K_ssr], h, cos, sin with only those rows)."""
    scores = last_token_attention(bb.layers[index - 1], prev_input, (cos, sin), start, count, bb.head_dim)
    sel = sorted_topk(scores, plan.ssr_count(original_count))
    h, cos, sin = (keep_visual_rows(t, start, count, sel) for t in (h, cos, sin))
    # SSR indexes the IVR survivors, never the raw sequence (the authors' defect).
    return torch.gather(kept_ivr, 1, sel), h, cos, sin


@torch.no_grad()
def prefill(bb: Backbone, inputs: DecoderInputs, plan: PruningPlan | None = None,
            frozen_layers: frozenset = frozenset(), collect_hidden: bool = False) -> PrefillResult:
    return prefill_tensors(bb, inputs.embeds, inputs.position_ids, inputs.visual_start, inputs.visual_count,
                           plan, frozen_layers, collect_hidden)


def prefill_tensors(bb: Backbone, embeds, position_ids, start, count, plan: PruningPlan | None = None,
                    frozen_layers: frozenset = frozenset(), collect_hidden: bool = False) -> PrefillResult:
    """The loop itself on plain tensors (the exporter traces this with symbolic start/count).

    layer:     0 .. prune-1 | prune .. ssr-1      | ssr .. L-1
    visual:    N            | K (IVR survivors)    | K_ssr (topk) or K frozen (freeze)
    """
    head_dim = bb.head_dim
    cos, sin = bb.rotary(position_ids, embeds)
    h = embeds
    prune = plan is not None and (not isinstance(count, int) or count > 0)
    result = PrefillResult(logits=None, cache=[])
    prev_input = None
    frozen_visual = False
    original_count = count
    for index, layer in enumerate(bb.layers):
        if prune and index == plan.prune_layer:
            idx, h, cos, sin = ivr_step(bb, plan, prev_input, h, cos, sin, start, count)
            result.kept_ivr, count = idx, idx.shape[1]
        if prune and index == plan.ssr_layer:
            if plan.ssr_mode == "topk":
                result.kept_ssr, h, cos, sin = ssr_topk_step(bb, plan, index, prev_input, h, cos, sin, start, count,
                                                             original_count, result.kept_ivr)
                count = result.kept_ssr.shape[1]
            elif plan.ssr_mode == "freeze":
                frozen_visual = True
        if collect_hidden:
            result.hidden.append(h)
            result.visual_spans.append((start, count))
        prev_input = h
        if frozen_visual or index in frozen_layers:
            h, kv = frozen_span_layer_step(layer, h, (cos, sin), start, count, head_dim)
        else:
            seq = torch.arange(h.shape[1])
            h, kv = layer_step(layer, h, (cos, sin), causal_mask(seq, seq, h.dtype), head_dim)
        result.cache.append(kv)
    if collect_hidden:
        result.hidden.append(h)
        result.visual_spans.append((start, count))
    result.logits = bb.lm_head(bb.final_norm(h[:, -1]))
    return result


def decode_step_tensors(bb: Backbone, embeds, position_ids, cache):
    """One token [B, 1, D] over the per-layer cache; each layer attends to its own cache length."""
    cos, sin = bb.rotary(position_ids, embeds)
    h = embeds
    new_cache = []
    for layer, past in zip(bb.layers, cache):
        h, kv = layer_step(layer, h, (cos, sin), None, bb.head_dim, past=past)
        new_cache.append(kv)
    return bb.lm_head(bb.final_norm(h[:, -1])), new_cache


@torch.no_grad()
def generate(bb: Backbone, inputs: DecoderInputs, plan: PruningPlan | None = None, max_new_tokens: int = 16,
             eos_token_id: int | None = None, step_logits: list | None = None):
    """Greedy decoding. Returns (tokens [B, n], PrefillResult). Rows that hit eos keep emitting eos.

    `step_logits`, when given, receives the logits [B, vocab] each token was chosen from."""
    result = prefill(bb, inputs, plan)
    if step_logits is not None:
        step_logits.append(result.logits)
    token = result.logits.argmax(dim=-1)
    tokens = [token]
    finished = token == eos_token_id if eos_token_id is not None else torch.zeros_like(token, dtype=torch.bool)
    cache = result.cache
    for step in range(max_new_tokens - 1):
        if bool(finished.all()):
            break
        embeds = bb.embed_tokens(token[:, None])
        logits, cache = decode_step_tensors(bb, embeds, bb.decode_position_ids(inputs.next_position, step), cache)
        if step_logits is not None:
            step_logits.append(logits)
        token = logits.argmax(dim=-1)
        if eos_token_id is not None:
            token = torch.where(finished, torch.full_like(token, eos_token_id), token)
            finished = finished | (token == eos_token_id)
        tokens.append(token)
    return torch.stack(tokens, dim=1), result
