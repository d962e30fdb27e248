"""Which visual tokens survive: HalfV anchors + coverage (fps / oneshot), SSR top-k, FastV, random.

Every function takes the visual span of the CURRENT sequence and returns indices into that span,
sorted ascending so that survivors keep their original order.
"""

from __future__ import annotations

import torch

from .layers import apply_rope, repeat_kv, split_heads


def anchor_relevance(layer, h_in, start: int, count: int, head_dim: int) -> torch.Tensor:
    """HalfV relevance [B, N]: last token's attention over the visual keys of `layer` (its INPUT h_in).

    No rotary embedding and no 1/sqrt(d) scale (as the authors tuned the shipped ratios); softmax over
    the visual keys only, per head; mean over heads.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(h_in)
    q = split_heads(attn.q_proj(x[:, -1:]), attn.q_proj.out_features // head_dim, head_dim)  # [B,H,1,hd]
    kv_heads = attn.k_proj.out_features // head_dim
    k = split_heads(attn.k_proj(x[:, start:start + count]), kv_heads, head_dim)  # [B,KVH,N,hd]
    k = repeat_kv(k, q.shape[1] // kv_heads)
    scores = torch.matmul(q, k.transpose(2, 3))[:, :, 0]  # [B,H,N]
    return torch.softmax(scores.float(), dim=-1).mean(dim=1)


def last_token_attention(layer, h_in, rope, start: int, count: int, head_dim: int) -> torch.Tensor:
    """The last token's real attention row (RoPE, 1/sqrt(d), softmax over all keys), mean over heads,
    restricted to the visual span: [B, N]. Used by SSR top-k and by FastV."""
    attn = layer.self_attn
    cos, sin = rope
    x = layer.input_layernorm(h_in)
    q = split_heads(attn.q_proj(x[:, -1:]), attn.q_proj.out_features // head_dim, head_dim)
    q = apply_rope(q, cos[:, -1:], sin[:, -1:])
    kv_heads = attn.k_proj.out_features // head_dim
    k = apply_rope(split_heads(attn.k_proj(x), kv_heads, head_dim), cos, sin)
    k = repeat_kv(k, q.shape[1] // kv_heads)
    scores = torch.matmul(q, k.transpose(2, 3))[:, :, 0] * head_dim ** -0.5  # [B,H,S]
    probs = torch.softmax(scores.float(), dim=-1).mean(dim=1)
    return probs[:, start:start + count]


def sorted_topk(scores: torch.Tensor, k) -> torch.Tensor:
    """Indices of the k largest scores per row, in ascending index order."""
    idx = torch.topk(scores, k, dim=-1).indices
    return torch.sort(idx, dim=-1).values


def normalized_features(final_norm, h, start: int, count: int) -> torch.Tensor:
    """Coverage features: l2-normalised final_norm(h)[visual rows], [B, N, D]."""
    f = final_norm(h[:, start:start + count]).float()
    return torch.nn.functional.normalize(f, dim=-1)


def _distance_to_anchors(features, anchors):
    """[B, N]: min over anchors of (1 - cos) and the anchors' own rows, from l2-normalised features."""
    anchor_feats = torch.gather(features, 1, anchors[..., None].expand(-1, -1, features.shape[-1]))
    sim = torch.matmul(anchor_feats, features.transpose(1, 2))  # [B,A,N]
    return (1.0 - sim).min(dim=1).values


# Farthest-point ties. The next token is the lowest index among the candidates whose coverage distance is
# within COVERAGE_TIE of the largest one; there is no rounding anywhere else. A distance is 1 - f_u . f_v of
# unit vectors, so its float32 error is absolute (ulps of a cosine near 1), not relative to the distance: a
# late pick between near-duplicate tokens (distances 1e-5 .. 1e-3) carries the same error as the first pick
# (~1), so a tolerance relative to the maximum would be too small late or too large early. Torch, ONNX
# Runtime and float64 differ by that error, which is what flips picks between near-duplicates. 2^-20
# (9.5e-7, 8 float32 ulps of 1.0) is just above the float32 error of these distances, so candidates that
# differ by float noise alone tie, and far below the gaps of the other picks, so nearly every pick stays
# exact farthest-point sampling (README, "Method decisions", has the measured differences).
COVERAGE_TIE = 2.0 ** -20


def coverage_distances(features: torch.Tensor) -> torch.Tensor:
    """[B, N, N] cosine distances 1 - f_u . f_v of l2-normalised features."""
    return 1.0 - torch.matmul(features, features.transpose(1, 2))


def farthest_candidate(dist: torch.Tensor) -> torch.Tensor:
    """[B]: the lowest index whose distance is within COVERAGE_TIE of the row's maximum (-inf: selected)."""
    best = dist.max(dim=1, keepdim=True).values
    index = torch.arange(dist.shape[1], device=dist.device).expand_as(dist)
    return torch.where(dist >= best - COVERAGE_TIE, index, dist.shape[1]).min(dim=1).values


@torch.library.custom_op("halfv::fps_coverage", mutates_args=())
def fps_coverage(features: torch.Tensor, anchors: torch.Tensor, k: int) -> torch.Tensor:
    """Exact HalfV coverage: greedy farthest-point sampling from the anchors until k tokens are kept.

    Repeatedly adds the token maximising min over selected v of (1 - f_u . f_v); candidates within
    COVERAGE_TIE of the maximum tie, and the lowest index among them wins. Returns the kept set [B, k],
    sorted ascending.
    A custom op so that the eager reference and the ONNX graph share one boundary: the exporter
    translates it to an ONNX Loop (halfv_export.graphs).
    """
    batch, n, _ = features.shape
    rows = torch.arange(batch)
    pair = coverage_distances(features)  # all distances once, as the graph does
    selected = torch.zeros(batch, n, dtype=torch.bool)
    selected[rows[:, None], anchors] = True
    dist = pair[rows[:, None], anchors].min(dim=1).values.masked_fill(selected, float("-inf"))
    for _ in range(k - anchors.shape[1]):
        u = farthest_candidate(dist)
        selected[rows, u] = True
        dist = torch.minimum(dist, pair[rows, u]).masked_fill(selected, float("-inf"))
    return selected.nonzero()[:, 1].view(batch, k)


@fps_coverage.register_fake
def _(features, anchors, k):
    return features.new_empty((features.shape[0], k), dtype=torch.long)


def oneshot_coverage(features: torch.Tensor, anchors: torch.Tensor, k) -> torch.Tensor:
    """One-shot approximation: anchors plus the k - A tokens least similar to their nearest anchor."""
    dist = _distance_to_anchors(features, anchors)
    dist = dist.scatter(1, anchors, float("-inf"))
    rest = torch.topk(dist, k - anchors.shape[1], dim=-1).indices
    return torch.sort(torch.cat([anchors, rest], dim=1), dim=-1).values


def random_selection(batch: int, n: int, k: int, seed: int) -> torch.Tensor:
    """Uniformly random k of n per row (an eval baseline), deterministic from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(batch)])
    return torch.sort(idx, dim=-1).values
