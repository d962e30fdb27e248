"""The layer-skip probe that picks the SSR mode (method page, section 2; the measurement is ours).

For each layer l >= SSR layer: prefill with the visual rows frozen at layer l only (no attention or
MLP update for them; they still give keys/values), and measure KL(P_frozen || P_full) of the last
token's next-token distribution. Averaged over samples per layer; the median over layers below the
threshold means the backbone ignores visual updates there ("freeze"), otherwise keep a few ("topk").

The last layer is left out of the probe: the visual rows' keys/values at layer L-1 come from its input,
and its visual outputs feed nothing, so freezing there changes no logit (KL exactly 0) and would only
pull the median down. When the SSR layer is the last layer, nothing is left to measure and freezing
that one layer is exact, so the mode is "freeze".
"""

from __future__ import annotations

import statistics

import torch

from ..backbones.base import Backbone, DecoderInputs
from ..method.decoder import prefill

DEFAULT_KL_THRESHOLD = 1e-3


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) in nats per row of [B, V] logits, in float64.

    Exact arithmetic gives KL >= 0; float64 rounding can leave about -1e-17 when P == Q, clamped to 0.
    """
    log_p = torch.log_softmax(logits_p.to(torch.float64), dim=-1)
    log_q = torch.log_softmax(logits_q.to(torch.float64), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp(min=0)


@torch.no_grad()
def layer_skip_kl(bb: Backbone, inputs: DecoderInputs, layers, full_logits: torch.Tensor | None = None) -> list[float]:
    """KL(P_frozen_at_l || P_full) for each layer l in `layers`, averaged over the rows of the batch."""
    if full_logits is None:
        full_logits = prefill(bb, inputs, None).logits
    out = []
    for layer in layers:
        frozen = prefill(bb, inputs, None, frozen_layers=frozenset({layer})).logits
        out.append(float(kl_divergence(frozen, full_logits).mean()))
    return out


def probe_layers(ssr_layer: int, num_layers: int) -> list[int]:
    """Layers the probe freezes one at a time: SSR layer .. L-2 (see the module docstring for L-1)."""
    return list(range(ssr_layer, num_layers - 1))


def choose_mode(layer_kls: list[float], threshold: float = DEFAULT_KL_THRESHOLD) -> tuple[str, float | None]:
    """("freeze" | "topk", median KL over the probed layers); ("freeze", None) when no layer was probed."""
    if not layer_kls:
        return "freeze", None
    median = statistics.median(layer_kls)
    return ("freeze" if median < threshold else "topk"), median
