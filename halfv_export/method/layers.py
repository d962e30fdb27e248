"""One decoder layer, computed from the model's own modules with an explicit additive mask.

Shared by the PyTorch reference and the ONNX export (it traces cleanly): the mask follows the sequence
after pruning, and a layer can leave a span of rows frozen (SSR freeze, the KL probe).
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, S, hd]; cos/sin [B, S, hd] (Qwen's are already recomposed for M-RoPE)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def causal_mask(q_index: torch.Tensor, k_index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [1, 1, Sq, Sk]: query at sequence index i sees keys with index <= i."""
    allowed = k_index.view(1, -1) <= q_index.view(-1, 1)
    zero = torch.zeros((), dtype=dtype)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, zero, blocked)[None, None]


def split_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    b, s, _ = x.shape
    return x.view(b, s, heads, head_dim).transpose(1, 2)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """GQA: [B, kv_heads, S, hd] -> [B, kv_heads * groups, S, hd]."""
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def attention(attn, x_q, x_kv, rope_q, rope_kv, mask, head_dim, past=None):
    """Self-attention of query rows x_q over key rows x_kv (plus `past` keys/values, already rotated).

        x_q --q_proj--rope--\
                              softmax(q k^T * scale + mask) v --o_proj--> out
        x_kv -k_proj--rope--/ (past keys prepended)   v_proj-/
    Returns (out [B, Sq, D], (k, v) over past + x_kv).
    """
    q = apply_rope(split_heads(attn.q_proj(x_q), attn.q_proj.out_features // head_dim, head_dim),
                   *rope_q)
    kv_heads = attn.k_proj.out_features // head_dim
    k = apply_rope(split_heads(attn.k_proj(x_kv), kv_heads, head_dim), *rope_kv)
    v = split_heads(attn.v_proj(x_kv), kv_heads, head_dim)
    if past is not None:
        k = torch.cat([past[0], k], dim=2)
        v = torch.cat([past[1], v], dim=2)
    groups = q.shape[1] // kv_heads
    scores = torch.matmul(q, repeat_kv(k, groups).transpose(2, 3)) * head_dim ** -0.5
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs, repeat_kv(v, groups)).transpose(1, 2)
    out = out.reshape(out.shape[0], out.shape[1], -1)
    return attn.o_proj(out), (k, v)


def layer_step(layer, h, rope, mask, head_dim, past=None):
    """A whole decoder layer on every row (the transformers layer, with our mask)."""
    x = layer.input_layernorm(h)
    attn_out, kv = attention(layer.self_attn, x, x, rope, rope, mask, head_dim, past)
    h = h + attn_out
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    return h, kv


def frozen_span_layer_step(layer, h, rope, start, count, head_dim):
    """A decoder layer that leaves rows [start, start+count) unchanged (no query rows, no MLP).

    Their keys/values are still computed from the frozen state with this layer's projections, and the
    other rows attend to them as usual (method page, section 4, "freeze").

        h[:, :start] --\                      /-- updated prefix rows
        h[:, span]   ---+- k/v from all rows -+-- span rows copied through
        h[:, end:]   --/  queries from text    \-- updated suffix rows
    """
    end = start + count
    seq = h.shape[1]
    x = layer.input_layernorm(h)
    x_text = torch.cat([x[:, :start], x[:, end:]], dim=1)
    cos, sin = rope
    rope_text = (torch.cat([cos[:, :start], cos[:, end:]], dim=1), torch.cat([sin[:, :start], sin[:, end:]], dim=1))
    index = torch.arange(seq)
    q_index = torch.cat([index[:start], index[end:]])
    mask = causal_mask(q_index, index, h.dtype)
    attn_out, kv = attention(layer.self_attn, x_text, x, rope_text, rope, mask, head_dim)
    h_text = torch.cat([h[:, :start], h[:, end:]], dim=1) + attn_out
    h_text = h_text + layer.mlp(layer.post_attention_layernorm(h_text))
    h = torch.cat([h_text[:, :start], h[:, start:end], h_text[:, start:]], dim=1)
    return h, kv
