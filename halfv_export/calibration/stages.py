"""Stage boundaries from a visual TME curve. The paper gives no rule; these rules are ours.

The curve has L+1 points: point l is the input of decoder layer l, point L the final output.

1. Smooth: moving average over WINDOW (3) points; the ends are padded with copies of the end values,
   so the smoothed curve has the same length and a flat end does not bend.
2. IVR layer (start of stage II) = the first l >= 1 at which a sustained decline begins: the smoothed
   curve decreases strictly for the next DECLINE_STEPS (2) steps, s[l] > s[l+1] > s[l+2]. Clamped to
   [1, max(1, L // 4)]; when no decline begins within that range, the plateau outlasts it and the
   rule gives the upper bound L // 4.
3. SSR layer (start of stage III) = the trough: the first argmin of the smoothed curve over the points
   (ivr_layer, L-1], i.e. ivr_layer+1 .. L-1. This keeps the Profile constraint ivr < ssr <= L-1.

Pure functions on lists of floats: deterministic and cheap to test.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import UserError

WINDOW = 3
DECLINE_STEPS = 2


@dataclass(frozen=True)
class Stages:
    ivr_layer: int
    ssr_layer: int
    smoothed: list[float]


def smooth(curve: list[float], window: int = WINDOW) -> list[float]:
    """Centred moving average with edge padding (window must be odd)."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"smoothing window must be a positive odd number, got {window}")
    if not curve:
        return []
    half = window // 2
    padded = [curve[0]] * half + list(curve) + [curve[-1]] * half
    return [sum(padded[i:i + window]) / window for i in range(len(curve))]


def ivr_layer(smoothed: list[float], num_layers: int, steps: int = DECLINE_STEPS) -> int:
    """First l >= 1 where a decline of `steps` strict decreases begins, clamped to [1, max(1, L // 4)]."""
    upper = max(1, num_layers // 4)
    for layer in range(1, upper + 1):
        window = smoothed[layer:layer + steps + 1]
        if len(window) == steps + 1 and all(a > b for a, b in zip(window, window[1:])):
            return layer
    return upper


def ssr_layer(smoothed: list[float], ivr: int, num_layers: int) -> int:
    """The trough: first argmin of the smoothed curve over the points ivr+1 .. L-1."""
    candidates = range(ivr + 1, num_layers)
    if not candidates:
        raise ValueError(f"no SSR layer fits after IVR layer {ivr} in {num_layers} layers")
    return min(candidates, key=lambda layer: (smoothed[layer], layer))


def choose_stages(visual_tme: list[float], num_layers: int, window: int = WINDOW,
                  steps: int = DECLINE_STEPS) -> Stages:
    """Both boundaries from a raw visual TME curve of num_layers + 1 points."""
    if num_layers < 3:
        raise UserError(f"calibration needs a decoder of at least 3 layers, this one has {num_layers}")
    if len(visual_tme) != num_layers + 1:
        raise ValueError(f"expected {num_layers + 1} TME points (L+1), got {len(visual_tme)}")
    smoothed = smooth(visual_tme, window)
    ivr = ivr_layer(smoothed, num_layers, steps)
    return Stages(ivr, ssr_layer(smoothed, ivr, num_layers), smoothed)
