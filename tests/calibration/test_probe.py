"""Layer-skip probe: the KL itself, its behaviour on the tiny models, and the mode rule."""

from __future__ import annotations

import math

import pytest
import torch

from halfv_export.calibration.probe import choose_mode, kl_divergence, layer_skip_kl, probe_layers
from halfv_export.method import prefill
from tests.conftest import TINY_IMAGES


def test_kl_by_hand():
    # P = (1/2, 1/2), Q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    p = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    assert float(kl_divergence(p, q)) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    # Not symmetric: KL(Q || P) = 3/4 ln(3/2) + 1/4 ln(1/2)
    assert float(kl_divergence(q, p)) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-12)
    # Logits are defined up to a constant per row
    assert float(kl_divergence(p + 5.0, q - 2.0)) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)


def test_kl_is_zero_on_itself_and_positive_elsewhere():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kl_divergence(logits, logits), torch.zeros(4, dtype=torch.float64))
    other = logits + 0.1 * torch.randn(4, 1000, generator=torch.Generator().manual_seed(1))
    assert bool((kl_divergence(logits, other) > 0).all())


@pytest.mark.slow_cases("tiny-llava")
def test_probe_on_a_tiny_model(tiny, tiny_name):
    batch = tiny.example_batch(2, TINY_IMAGES[tiny_name][0], text_before=5, text_after=7)
    inputs = tiny.prepare(batch)
    layers = list(range(tiny.num_layers))
    kls = layer_skip_kl(tiny, inputs, layers)
    assert len(kls) == len(layers)
    assert all(math.isfinite(v) and v >= 0 for v in kls)
    # Freezing the visual rows of an early layer changes what the text sees later on: KL > 0.
    assert kls[0] > 0 and kls[1] > 0
    # At the last layer the visual keys/values come from the unchanged input and the visual outputs feed
    # nothing: the logits are the same, which is why the probe leaves that layer out.
    assert kls[-1] < 1e-12
    # Passing P_full in gives the same numbers as letting the probe compute it.
    assert layer_skip_kl(tiny, inputs, [1, 2], prefill(tiny, inputs).logits) == pytest.approx(kls[1:3], rel=1e-9)


def test_probe_layers_run_from_ssr_to_the_second_last():
    assert probe_layers(15, 32) == list(range(15, 31))
    assert probe_layers(4, 6) == [4]
    assert probe_layers(5, 6) == []


def test_mode_rule():
    assert choose_mode([1e-5, 2e-6, 1e-2]) == ("freeze", 1e-5)  # the median, not the mean (3.3e-3)
    assert choose_mode([5e-3, 6e-3, 1e-4]) == ("topk", 5e-3)
    assert choose_mode([1e-3, 1e-3], threshold=1e-3) == ("topk", 1e-3)  # "below" is strict
    mode, median = choose_mode([2e-3, 4e-3], threshold=1e-2)  # even count: mean of the middle two
    assert mode == "freeze" and median == pytest.approx(3e-3)
    assert choose_mode([]) == ("freeze", None)
