"""The three decoder graphs as torch modules with fixed input/output names and symbolic dims.

Each wrapper calls the PyTorch reference (method.decoder) itself, so the exported graph and the
reference are one code path. Names here are the contract with the runtime, `check` and the engines:

  embed    input_ids [batch, seq]                       -> embeds [batch, seq, hidden]
  prefill  prefix_embeds [batch, prefix_len, hidden]
           visual_embeds [batch, visual_tokens, hidden]
           suffix_embeds [batch, suffix_len, hidden]
           position_ids  [3, batch, seq] (Qwen) | [batch, seq] (LLaVA)
                                                        -> logits [batch, vocab], kept_ivr [batch, K] (pruning),
                                                           kept_ssr [batch, K_ssr] (topk SSR),
                                                           present.{i}.key / .value [batch, kv_heads, len_i, head_dim]
  decode   token_embeds [batch, 1, hidden], position_ids [3, batch, 1] | [batch, 1],
           past.{i}.key / .value [batch, kv_heads, past_len_{i}, head_dim]
                                                        -> logits [batch, vocab], present.{i}.key / .value
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backbones.base import Backbone
from ..core.manifest import CACHE_PARTS, past_name, present_name
from ..method.decoder import decode_step_tensors, prefill_tensors
from ..core.plan import PruningPlan


@dataclass(frozen=True)
class GraphSpec:
    """What torch.onnx.export needs for one graph: the module, example args, names, dynamic dims."""

    role: str
    module: torch.nn.Module
    args: tuple
    input_names: list
    output_names: list
    dynamic_shapes: dict  # forward argument name -> {axis: "dim_name"} (strings: torch.export Dim.AUTO)


def position_shape(bb: Backbone, batch: int, seq: int) -> tuple:
    return (3, batch, seq) if bb.position_rows == 3 else (batch, seq)


def position_dims(bb: Backbone, seq_name: str) -> dict:
    return {1: "batch", 2: seq_name} if bb.position_rows == 3 else {0: "batch", 1: seq_name}


def present_names(num_layers: int) -> list:
    return [present_name(i, part) for i in range(num_layers) for part in CACHE_PARTS]


class EmbedGraph(torch.nn.Module):
    def __init__(self, bb: Backbone):
        super().__init__()
        self.embed_tokens = bb.embed_tokens

    def forward(self, input_ids):
        return self.embed_tokens(input_ids)


class PrefillGraph(torch.nn.Module):
    r"""Concatenate the three spans; the visual span's start and count are their (symbolic) shapes.

        prefix_embeds --\                                   /-- logits
        visual_embeds ---Concat-- prefill_tensors(start = prefix_len, --- kept_ivr, kept_ssr
        suffix_embeds --/          count = visual_tokens, plan)        \-- present.{i}.key/value
        position_ids  ------------/
    """

    def __init__(self, bb: Backbone, plan: PruningPlan | None):
        super().__init__()
        self.model = bb.model  # registers the weights with the exporter
        self.bb = bb
        self.plan = plan

    def forward(self, prefix_embeds, visual_embeds, suffix_embeds, position_ids):
        embeds = torch.cat([prefix_embeds, visual_embeds, suffix_embeds], dim=1)
        result = prefill_tensors(self.bb, embeds, position_ids, prefix_embeds.shape[1], visual_embeds.shape[1],
                                 self.plan)
        outputs = [result.logits]
        if self.plan is not None:
            outputs.append(result.kept_ivr)
            if self.plan.ssr_mode == "topk":
                outputs.append(result.kept_ssr)
        for key, value in result.cache:
            outputs += [key, value]
        return tuple(outputs)


class DecodeGraph(torch.nn.Module):
    """One token over the ragged per-layer cache (past keys/values as flat inputs)."""

    def __init__(self, bb: Backbone):
        super().__init__()
        self.model = bb.model
        self.bb = bb

    def forward(self, token_embeds, position_ids, *past):
        cache = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, new_cache = decode_step_tensors(self.bb, token_embeds, position_ids, cache)
        outputs = [logits]
        for key, value in new_cache:
            outputs += [key, value]
        return tuple(outputs)


@dataclass(frozen=True)
class ExampleShape:
    """Trace-time sizes: all different and >= 2, so torch.export specialises none of them."""

    batch: int = 2
    prefix: int = 3
    visual: int = 20
    suffix: int = 5
    past: int = 7


def _randn(shape, dtype, gen):
    return torch.randn(shape, generator=gen).to(dtype)


def embed_spec(bb: Backbone, ex: ExampleShape = ExampleShape()) -> GraphSpec:
    ids = torch.randint(0, bb.text_config.vocab_size, (ex.batch, ex.prefix + ex.suffix))
    return GraphSpec("embed", EmbedGraph(bb), (ids,), ["input_ids"], ["embeds"],
                     {"input_ids": {0: "batch", 1: "seq"}})


def prefill_spec(bb: Backbone, plan: PruningPlan | None, dtype, ex: ExampleShape = ExampleShape()) -> GraphSpec:
    gen = torch.Generator().manual_seed(0)
    d = bb.hidden_size
    seq = ex.prefix + ex.visual + ex.suffix
    args = (_randn((ex.batch, ex.prefix, d), dtype, gen), _randn((ex.batch, ex.visual, d), dtype, gen),
            _randn((ex.batch, ex.suffix, d), dtype, gen),
            torch.arange(seq).expand(position_shape(bb, ex.batch, seq)).contiguous())
    outputs = ["logits"]
    if plan is not None:
        outputs.append("kept_ivr")
        if plan.ssr_mode == "topk":
            outputs.append("kept_ssr")
    dynamic = {"prefix_embeds": {0: "batch", 1: "prefix_len"}, "visual_embeds": {0: "batch", 1: "visual_tokens"},
               "suffix_embeds": {0: "batch", 1: "suffix_len"}, "position_ids": position_dims(bb, "seq")}
    return GraphSpec("prefill", PrefillGraph(bb, plan), args,
                     ["prefix_embeds", "visual_embeds", "suffix_embeds", "position_ids"],
                     outputs + present_names(bb.num_layers), dynamic)


def decode_spec(bb: Backbone, dtype, ex: ExampleShape = ExampleShape()) -> GraphSpec:
    gen = torch.Generator().manual_seed(0)
    past = []
    for i in range(bb.num_layers):
        shape = (ex.batch, bb.num_kv_heads, ex.past + i, bb.head_dim)  # distinct lengths: nothing gets tied
        past += [_randn(shape, dtype, gen), _randn(shape, dtype, gen)]
    args = (_randn((ex.batch, 1, bb.hidden_size), dtype, gen),
            torch.full(position_shape(bb, ex.batch, 1), ex.past + bb.num_layers), *past)
    past_names = [past_name(i, part) for i in range(bb.num_layers) for part in CACHE_PARTS]
    past_dims = tuple({0: "batch", 2: f"past_len_{i}"} for i in range(bb.num_layers) for _ in range(2))
    # the token axis of token_embeds / position_ids stays a static 1
    dynamic = {"token_embeds": {0: "batch"}, "position_ids": {1: "batch"} if bb.position_rows == 3 else {0: "batch"},
               "past": past_dims}
    return GraphSpec("decode", DecodeGraph(bb), args, ["token_embeds", "position_ids"] + past_names,
                     ["logits"] + present_names(bb.num_layers), dynamic)
