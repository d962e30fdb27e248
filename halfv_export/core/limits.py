"""TensorRT's TopK limit and the largest visual-token count a pruning schedule may take under it.

This lives here, not in core/lint, because export needs it before any graph exists (to pick its default
visual-token max and to refuse a too-large one) and needs neither onnx, which the lint package imports,
nor the parser tables; the lint rules read the same constant and search from here. The limit is the same
for every TensorRT target, so it is not a field of core.lint.targets.Target.
Imports only core.errors and core.profile (no torch, no onnx).
"""

from __future__ import annotations

from typing import Callable

from .errors import UserError
from .families import FAMILIES
from .profile import Profile

# TensorRT's ITopKLayer takes K up to 3840 (onnx-tensorrt docs/operators.md writes "less than 3840";
# the TensorRT API docs and the design card say at most 3840: we use <= 3840).
TOPK_MAX_K = 3840


def largest_within_topk(k_at: Callable[[int], int], high: int, low: int = 0) -> int | None:
    """The largest n in low..high with k_at(n) <= TOPK_MAX_K, or None when even k_at(low) exceeds it.

    k_at gives the TopK K at n visual tokens and must not decrease as n grows (every keep count is
    floor(n * ratio) or a count of such a count), so a binary search finds the boundary.
    """
    if k_at(low) > TOPK_MAX_K:
        return None
    lo, hi = low, high
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if k_at(mid) <= TOPK_MAX_K:
            lo = mid
        else:
            hi = mid - 1
    return lo


def halfv_topk_sizes(profile: Profile, n: int) -> dict:
    """K of every TopK the HalfV graphs hold at n visual tokens (anchors, coverage/sort, SSR)."""
    sizes = {"ivr_keep": profile.ivr_count(n), "ivr_anchors": profile.anchor_count(n)}
    if profile.ssr_mode == "topk":
        sizes["ssr_keep"] = profile.ssr_count(n)
    return sizes


def check_topk_bound(profile: Profile | None, max_visual_tokens: int) -> dict:
    """Refuse a profile whose TopK K exceeds TensorRT's limit at the largest visual-token count.

    Returns the K of each TopK at that count. Raises UserError naming the exact largest count that fits.
    """
    if profile is None:
        return {}
    sizes = halfv_topk_sizes(profile, max_visual_tokens)
    stage, k = max(sizes.items(), key=lambda item: item[1])
    if k <= TOPK_MAX_K:
        return sizes
    limit = largest_within_topk(lambda n: max(halfv_topk_sizes(profile, n).values()), max_visual_tokens)
    spec = FAMILIES.get(profile.backbone)
    per_token = spec.pixels_per_token if spec is not None else None
    hint = f" ({spec.title}: max pixels <= {limit * per_token})" if per_token else ""
    where = {"ivr_keep": f"the IVR step (keep {profile.ivr_keep})", "ivr_anchors": "the IVR anchors",
             "ssr_keep": f"the SSR step (keep {profile.ssr_keep})"}[stage]
    raise UserError(
        f"TensorRT TopK takes K <= {TOPK_MAX_K}, but {max_visual_tokens} visual tokens give K = {k} at "
        f"{where}: keep the visual-token max <= {limit}{hint}")
