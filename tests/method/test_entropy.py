"""Truncated matrix entropy: hand-computed spectra, an independent numpy SVD, and the per-layer curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from halfv_export.method import prefill
from halfv_export.method.entropy import text_rows, tme_curves, truncated_matrix_entropy
from tests.conftest import TINY_IMAGES


def plus_minus(scales: list[float], dim: int) -> torch.Tensor:
    """Rows +s_i e_i and -s_i e_i: zero mean, so the centred Gram matrix is diag(2 s_i^2)."""
    rows = []
    for i, s in enumerate(scales):
        e = torch.zeros(dim, dtype=torch.float64)
        e[i] = s
        rows += [e, -e]
    return torch.stack(rows)


@pytest.mark.parametrize("dim", [64, 8])  # N=16 < D=64 takes Z Z^T; N=16 >= D=8 takes Z^T Z
def test_equal_spectrum_gives_log_of_its_size(dim):
    z = plus_minus([1.0] * 8, dim)
    assert truncated_matrix_entropy(z, k=32) == pytest.approx(math.log(8), abs=1e-12)
    assert truncated_matrix_entropy(z, k=4) == pytest.approx(math.log(4), abs=1e-12)


def test_truncation_keeps_the_top_k_only():
    z = plus_minus([1.0] * 40, 80)  # 40 equal eigenvalues, k = 32 of them kept
    assert truncated_matrix_entropy(z, k=32) == pytest.approx(math.log(32), abs=1e-12)


def test_two_eigenvalues_by_hand():
    # Eigenvalues 2*1.5 = 3 and 2*0.5 = 1 -> p = (3/4, 1/4).
    z = plus_minus([math.sqrt(1.5), math.sqrt(0.5)], 2)
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert expected == pytest.approx(0.5623351446, abs=1e-9)
    assert truncated_matrix_entropy(z) == pytest.approx(expected, abs=1e-12)


def test_rank_one_and_degenerate_inputs_give_zero():
    v = torch.randn(24, generator=torch.Generator().manual_seed(1))
    rank_one = torch.tensor([0.5, -2.0, 3.0, 1.0, 7.0])[:, None] * v  # 5 tokens on one line through 0
    assert truncated_matrix_entropy(rank_one) == pytest.approx(0.0, abs=1e-9)
    shifted = rank_one + torch.randn(24)  # a line not through 0: centring removes the offset
    assert truncated_matrix_entropy(shifted) == pytest.approx(0.0, abs=1e-6)
    assert truncated_matrix_entropy(v[None]) == 0.0  # one token
    assert truncated_matrix_entropy(v.repeat(6, 1)) == 0.0  # identical tokens
    assert truncated_matrix_entropy(torch.zeros(0, 24)) == 0.0


def test_gram_is_not_clamped_element_wise():
    # Anti-correlated coordinates: G = [[2, -2], [-2, 2]] has spectrum (4, 0) -> TME 0. Clamping the
    # entries of G at 0 would give diag(2, 2) and ln 2 instead.
    z = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert truncated_matrix_entropy(z) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n,d,k", [(50, 20, 32), (20, 50, 32), (64, 128, 8), (300, 16, 4)])
def test_random_matrix_matches_numpy_svd(n, d, k):
    rng = np.random.default_rng(n * 1000 + d)
    z = rng.normal(size=(n, d)) @ np.diag(np.linspace(0.1, 3.0, d))  # an uneven spectrum
    centred = z - z.mean(axis=0)
    eig = np.sort(np.linalg.svd(centred, compute_uv=False) ** 2)[::-1][:k]
    p = eig / eig.sum()
    expected = float(-(p * np.log(p)).sum())
    assert truncated_matrix_entropy(torch.from_numpy(z), k) == pytest.approx(expected, rel=1e-10)
    # float32 input is promoted to float64 before the Gram matrix
    assert truncated_matrix_entropy(torch.from_numpy(z).float(), k) == pytest.approx(expected, rel=1e-5)


def test_invariant_to_scale_rotation_and_token_order():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(30, 12, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    base = truncated_matrix_entropy(z, 8)
    assert truncated_matrix_entropy(7.5 * z, 8) == pytest.approx(base, rel=1e-10)
    assert truncated_matrix_entropy(z @ q, 8) == pytest.approx(base, rel=1e-10)
    assert truncated_matrix_entropy(z[torch.randperm(30, generator=gen)], 8) == pytest.approx(base, rel=1e-10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        truncated_matrix_entropy(torch.zeros(3))
    with pytest.raises(ValueError, match="k must be"):
        truncated_matrix_entropy(torch.zeros(3, 3), k=0)


def test_curves_on_a_tiny_model(tiny, tiny_name):
    batch = tiny.example_batch(2, TINY_IMAGES[tiny_name][0], text_before=5, text_after=7)
    inputs = tiny.prepare(batch)
    k = 16
    visual, text, logits = tme_curves(tiny, inputs, k)
    assert len(visual) == len(text) == tiny.num_layers + 1
    assert all(0.0 <= v <= math.log(k) + 1e-9 for v in visual + text)
    # Same numbers straight from the collected hidden states, row by row, then averaged over the batch.
    result = prefill(tiny, inputs, None, collect_hidden=True)
    start, count = inputs.visual_start, inputs.visual_count
    for index in (0, tiny.num_layers):
        normed = tiny.final_norm(result.hidden[index])
        vis = [truncated_matrix_entropy(row[start:start + count], k) for row in normed]
        txt = [truncated_matrix_entropy(text_rows(row, start, count), k) for row in normed]
        assert visual[index] == pytest.approx(sum(vis) / 2, rel=1e-6)
        assert text[index] == pytest.approx(sum(txt) / 2, rel=1e-6)
        assert text_rows(normed[0], start, count).shape[0] == inputs.embeds.shape[1] - count
    assert torch.allclose(logits, result.logits)


def test_curves_need_an_image(tiny):
    inputs = tiny.prepare(tiny.example_batch(1, None, text_before=4, text_after=4))
    with pytest.raises(ValueError, match="image"):
        tme_curves(tiny, inputs)
