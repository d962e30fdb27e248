"""FLOPs model of the decoder prefill: unpruned, HalfV and FastV schedules (method page, section 6).

Two formulas, both counting one multiply-add as one FLOP (the FastV convention; ratios are what matter):

  paper  per layer with n rows: 4 n d^2 + 2 n^2 d + 2 n d m   (FastV-style, the headline figures)
  gqa    q/o projections n d (H hd) each, k/v projections n d (Hkv hd) each, attention 2 n^2 (H hd),
         gated MLP 3 n d m                                   (GQA-aware refinement, labelled as such)

Both ignore norms, rotary, softmax, the LM head (one row) and the selection step (fps is about K N d,
under 2% of one layer at N = 4000). Attention is counted over the full n x n block, as FastV does.

A layer can update fewer rows than it keeps keys for: after an SSR "freeze" the visual rows get no
query, no attention output projection and no MLP, but every layer still projects their frozen state
to keys and values. So each layer is described by two counts, `query` (rows updated) and `kv` (rows
projected to k/v and attended to); the formula splits accordingly:
  q, o, MLP   scale with query      k, v   scale with kv      attention   query x kv
With query == kv == n this is exactly the formula above. Torch-free: it reads only config numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError
from .plan import LayerRows, PruningPlan, layer_rows
from .profile import Profile

FORMULAS = {
    "paper": "per layer with n tokens: 4 n d^2 + 2 n^2 d + 2 n d m (FastV-style; multiply-add = 1 FLOP)",
    "gqa": ("GQA-aware: 2 n d (H hd) [q,o] + 2 n d (Hkv hd) [k,v] + 2 n^2 (H hd) [attention] "
            "+ 3 n d m [gated MLP] (multiply-add = 1 FLOP)"),
}
FREEZE_NOTE = ("frozen visual rows (SSR freeze) still get k/v projections in every layer and are attended "
               "to by the text rows; they get no q/o projection, no attention of their own and no MLP")


@dataclass(frozen=True)
class DecoderDims:
    """The numbers of a decoder stack the cost model needs."""

    num_layers: int
    hidden: int  # d
    intermediate: int  # m
    num_heads: int  # H
    num_kv_heads: int  # Hkv
    head_dim: int  # hd

    @classmethod
    def from_config(cls, text_config) -> "DecoderDims":
        heads = text_config.num_attention_heads
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
        return cls(text_config.num_hidden_layers, text_config.hidden_size, text_config.intermediate_size,
                   heads, text_config.num_key_value_heads, head_dim)




def layer_flops(dims: DecoderDims, rows: LayerRows, formula: str = "paper") -> int:
    d, m, q, kv = dims.hidden, dims.intermediate, rows.query, rows.kv
    if formula == "paper":
        return 2 * q * d * d + 2 * kv * d * d + 2 * q * kv * d + 2 * q * d * m
    if formula == "gqa":
        q_width = dims.num_heads * dims.head_dim
        kv_width = dims.num_kv_heads * dims.head_dim
        return 2 * q * d * q_width + 2 * kv * d * kv_width + 2 * q * kv * q_width + 3 * q * d * m
    raise UserError(f"unknown FLOPs formula {formula!r}; known: {', '.join(FORMULAS)}")


def prefill_flops(dims: DecoderDims, schedule: list[LayerRows], formula: str = "paper") -> int:
    if len(schedule) != dims.num_layers:
        raise ValueError(f"schedule has {len(schedule)} layers, the decoder {dims.num_layers}")
    return sum(layer_flops(dims, rows, formula) for rows in schedule)


# -- schedules: rows per layer for a prompt of n_text text tokens and n_visual visual tokens ----------

def unpruned_schedule(num_layers: int, n_text: int, n_visual: int) -> list[LayerRows]:
    return layer_rows(None, num_layers, n_text, n_visual)


def halfv_schedule(profile: Profile, n_text: int, n_visual: int) -> list[LayerRows]:
    """N visual rows before the IVR layer, K after it; from the SSR layer K_ssr (topk) or K frozen."""
    return layer_rows(PruningPlan.halfv(profile), profile.num_layers, n_text, n_visual)


def fastv_schedule(num_layers: int, n_text: int, n_visual: int, keep: float, layer: int = 2) -> list[LayerRows]:
    """FastV: all rows up to `layer`, then floor(N * keep) visual rows to the end."""
    if not 1 <= layer < num_layers:
        raise UserError(f"FastV layer {layer} must be in [1, {num_layers - 1}]")
    return layer_rows(PruningPlan.fastv(keep, layer), num_layers, n_text, n_visual)


def kv_cache_bytes(dims: DecoderDims, schedule: list[LayerRows], bytes_per_value: int = 4, batch: int = 1) -> int:
    """Bytes of the prefill KV cache: each layer keeps keys and values for its `kv` rows."""
    per_row = 2 * dims.num_kv_heads * dims.head_dim * bytes_per_value * batch
    return sum(rows.kv * per_row for rows in schedule)


def speedup_table(dims: DecoderDims, profile: Profile, n_text: int, visual_counts, fastv_keep: float,
                  fastv_layer: int = 2) -> list[dict]:
    """For each N: prefill FLOPs of the three schedules under both formulas, and the speedups."""
    rows = []
    for n in visual_counts:
        schedules = {
            "unpruned": unpruned_schedule(dims.num_layers, n_text, n),
            "halfv": halfv_schedule(profile, n_text, n),
            "fastv": fastv_schedule(dims.num_layers, n_text, n, fastv_keep, fastv_layer),
        }
        row = {"visual_tokens": n, "text_tokens": n_text}
        for formula in FORMULAS:
            flops = {name: prefill_flops(dims, s, formula) for name, s in schedules.items()}
            row[formula] = {
                "flops": flops,
                "speedup": {name: flops["unpruned"] / value for name, value in flops.items() if name != "unpruned"},
            }
        row["kv_cache_bytes_fp32"] = {name: kv_cache_bytes(dims, s) for name, s in schedules.items()}
        rows.append(row)
    return rows
