"""Stage rules on synthetic curves whose answers are worked out by hand in the comments."""

from __future__ import annotations

import random

import pytest

from halfv_export.calibration.stages import choose_stages, ivr_layer, smooth, ssr_layer
from halfv_export.core.errors import UserError
from halfv_export.core.profile import Profile


def test_smooth_is_a_centred_average_with_edge_padding():
    assert smooth([0.0, 3.0, 6.0]) == pytest.approx([1.0, 3.0, 5.0])  # (0+0+3)/3, (0+3+6)/3, (3+6+6)/3
    assert smooth([2.0] * 5) == pytest.approx([2.0] * 5)
    assert smooth([1.0, 4.0], window=1) == [1.0, 4.0]
    assert smooth([]) == []
    with pytest.raises(ValueError, match="odd"):
        smooth([1.0, 2.0], window=2)


def test_plateau_then_decline_then_trough():
    # L = 16, 17 points. Smoothed: s1 = s2 = 5 (plateau), s3 = (5+5+4.6)/3 = 4.867, s4 = (5+4.6+4)/3 = 4.533,
    # so the first strict two-step decline starts at 2 (s1 = s2 is no decrease). Trough: s10 = 2.033,
    # s11 = (2.0+1.9+2.1)/3 = 2.0, s12 = 2.2 -> 11. IVR clamp is [1, 4].
    curve = [5.0, 5.0, 5.0, 5.0, 4.6, 4.0, 3.4, 2.9, 2.5, 2.2, 2.0, 1.9, 2.1, 2.6, 3.0, 3.3, 3.5]
    stages = choose_stages(curve, 16)
    assert (stages.ivr_layer, stages.ssr_layer) == (2, 11)
    assert stages.smoothed == pytest.approx(smooth(curve))


def test_late_decline_is_clamped_to_a_quarter_of_the_layers():
    # Plateau until point 9, then a decline: the rule would say 8, the clamp for L = 16 says 4.
    curve = [5.0] * 10 + [4.0, 3.0, 2.0, 1.5, 1.8, 2.4, 3.0]
    stages = choose_stages(curve, 16)
    assert stages.ivr_layer == 4
    # smoothed: s12 = (3+2+1.5)/3 = 2.167, s13 = (2+1.5+1.8)/3 = 1.767, s14 = (1.5+1.8+2.4)/3 = 1.9 -> 13
    assert stages.ssr_layer == 13


def test_decline_from_the_first_layer_gives_layer_one():
    curve = [6.0, 5.0, 4.0, 3.0, 2.0, 2.5, 3.0, 3.5, 4.0]  # L = 8
    # s1 = 5 > s2 = 4 > s3 = 3; trough: s4 = (3+2+2.5)/3 = 2.5, s5 = (2+2.5+3)/3 = 2.5 (tie: first), s3 = 3
    assert (ivr_layer(smooth(curve), 8), choose_stages(curve, 8).ssr_layer) == (1, 4)


def test_a_one_point_dip_is_not_a_sustained_decline():
    # Smoothing spreads the dip at 3 over 2..4 as a flat 14.5/3: no strict two-step decrease until the
    # real decline at the end, which is past the clamp (L // 4 = 2): IVR = 2.
    curve = [5.0, 5.0, 5.0, 4.5, 5.0, 5.0, 5.0, 4.0, 3.0]
    assert ivr_layer(smooth(curve), 8) == 2


@pytest.mark.parametrize("num_layers", [3, 6, 12, 28, 32])
def test_monotone_curves(num_layers):
    rising = [float(i) for i in range(num_layers + 1)]
    falling = rising[::-1]
    up = choose_stages(rising, num_layers)  # never declines: IVR at the clamp, trough right after it
    assert (up.ivr_layer, up.ssr_layer) == (max(1, num_layers // 4), max(1, num_layers // 4) + 1)
    down = choose_stages(falling, num_layers)  # declines at once; the trough is the last allowed point
    assert (down.ivr_layer, down.ssr_layer) == (1, num_layers - 1)


def test_ssr_ties_take_the_first_layer_and_skip_the_final_output():
    smoothed = [3.0, 3.0, 1.0, 1.0, 2.0, 0.0]  # L = 5: point 5 is the final output, never a candidate
    assert ssr_layer(smoothed, 1, 5) == 2
    with pytest.raises(ValueError, match="no SSR layer"):
        ssr_layer(smoothed, 4, 5)


def test_random_curves_always_give_a_valid_profile():
    rng = random.Random(0)
    for _ in range(300):
        layers = rng.randint(3, 40)
        curve = [rng.uniform(0.0, 4.0) for _ in range(layers + 1)]
        stages = choose_stages(curve, layers)
        assert 1 <= stages.ivr_layer <= max(1, layers // 4)
        assert stages.ivr_layer < stages.ssr_layer <= layers - 1
        assert choose_stages(curve, layers) == stages  # deterministic
        Profile(backbone="llava", num_layers=layers, ivr_layer=stages.ivr_layer, ssr_layer=stages.ssr_layer,
                ssr_mode="freeze", ivr_keep=0.5, anchor_share=0.2)


def test_bad_curves():
    with pytest.raises(ValueError, match="L\\+1"):
        choose_stages([1.0, 2.0, 3.0], 6)
    with pytest.raises(UserError, match="at least 3 layers"):
        choose_stages([1.0, 2.0, 3.0], 2)
