"""Truncated matrix entropy (TME): how many directions a set of token states still spreads over.

Method page, section 2. For one sample and one layer:
  Z = final_norm(h)[rows]  (N x D), float64, centred over tokens
  G = Z^T Z if N >= D else Z Z^T  (same non-zero spectrum, smaller matrix)
  lambda = top-k eigenvalues of G, clamped at 0;  p = lambda / sum(lambda);  TME = -sum p ln p  (nats)
Low TME: the tokens collapse onto a few directions (redundant); ln(k) is the ceiling.
"""

from __future__ import annotations

import torch

from ..backbones.base import Backbone, DecoderInputs
from .decoder import prefill

DEFAULT_K = 32


def truncated_matrix_entropy(z: torch.Tensor, k: int = DEFAULT_K) -> float:
    """TME of the rows of z [N, D] in nats. 0 when the centred rows carry no variance (N <= 1 included)."""
    if z.dim() != 2:
        raise ValueError(f"expected a 2-D matrix of token states, got shape {tuple(z.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if z.shape[0] == 0:
        return 0.0
    z = z.detach().to(torch.float64)
    z = z - z.mean(dim=0, keepdim=True)
    gram = z.T @ z if z.shape[0] >= z.shape[1] else z @ z.T
    # eigvalsh returns ascending eigenvalues. Rounding makes some of a PSD spectrum slightly negative:
    # clamp the eigenvalues, never the entries of G (that would break positive semi-definiteness).
    eig = torch.linalg.eigvalsh(gram).flip(0)[:k].clamp(min=0)
    total = eig.sum()
    if total <= 0:
        return 0.0
    p = eig / total
    p = p[p > 0]  # 0 ln 0 = 0
    return float(-(p * p.log()).sum())


def text_rows(h: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """Every row of h [S, D] outside the visual span."""
    return torch.cat([h[:start], h[start + count:]], dim=0)


@torch.no_grad()
def tme_curves(bb: Backbone, inputs: DecoderInputs,
               k: int = DEFAULT_K) -> tuple[list[float], list[float], torch.Tensor]:
    """Visual and text TME at the input of each decoder layer plus the final output (L+1 points each),
    averaged over the rows of the batch, and the unpruned last-token logits [B, V] of the same prefill."""
    if inputs.visual_count == 0:
        raise ValueError("TME curves need a request with an image")
    result = prefill(bb, inputs, None, collect_hidden=True)
    visual, text = [], []
    for h, (start, count) in zip(result.hidden, result.visual_spans):
        normed = bb.final_norm(h)
        vis = [truncated_matrix_entropy(row[start:start + count], k) for row in normed]
        txt = [truncated_matrix_entropy(text_rows(row, start, count), k) for row in normed]
        visual.append(sum(vis) / len(vis))
        text.append(sum(txt) / len(txt))
    return visual, text, result.logits
