"""A pruning plan: what the decoder loop does to visual tokens, and at which layers.

HalfV plans come from a Profile; FastV and random are baselines on the same loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from .profile import Profile, keep_count

COVERAGES = ("fps", "oneshot")
SELECTORS = COVERAGES + ("fastv", "random", "oracle")


@dataclass(frozen=True)
class PruningPlan:
    prune_layer: int  # visual tokens are pruned before this layer runs (HalfV: the IVR layer)
    keep: float  # share of the original N kept there
    selector: str  # "fps" | "oneshot" (HalfV coverage), "fastv", "random", "oracle"
    anchor_share: float = 0.2
    ssr_layer: int | None = None
    ssr_mode: str = "none"  # "topk" | "freeze" | "none"
    ssr_keep: float | None = None
    seed: int = 0  # only for "random"

    def __post_init__(self):
        if self.selector not in SELECTORS:
            raise ValueError(f"selector must be one of {SELECTORS}, got {self.selector!r}")
        if self.prune_layer < 1:
            raise ValueError("prune_layer must be >= 1 (selection reads the previous layer)")

    @classmethod
    def halfv(cls, profile: Profile, coverage: str = "fps") -> "PruningPlan":
        if coverage not in COVERAGES:
            raise ValueError(f"coverage must be one of {COVERAGES}, got {coverage!r}")
        return cls(prune_layer=profile.ivr_layer, keep=profile.ivr_keep, selector=coverage,
                   anchor_share=profile.anchor_share, ssr_layer=profile.ssr_layer, ssr_mode=profile.ssr_mode,
                   ssr_keep=profile.ssr_keep)

    @classmethod
    def fastv(cls, keep: float, layer: int = 2) -> "PruningPlan":
        """FastV: after layer `layer - 1`, drop the visual tokens the last token attends to least."""
        return cls(prune_layer=layer, keep=keep, selector="fastv")

    @classmethod
    def random(cls, keep: float, layer: int, seed: int = 0) -> "PruningPlan":
        return cls(prune_layer=layer, keep=keep, selector="random", seed=seed)

    @classmethod
    def oracle(cls, profile: Profile) -> "PruningPlan":
        """The HalfV schedule with selection replaced by a plain slice of the first K visual tokens:
        the speed floor that selection overhead is measured against (its answers are not meaningful)."""
        return cls(prune_layer=profile.ivr_layer, keep=profile.ivr_keep, selector="oracle",
                   anchor_share=profile.anchor_share, ssr_layer=profile.ssr_layer, ssr_mode=profile.ssr_mode,
                   ssr_keep=profile.ssr_keep)

    # counts, for ints and traced shapes alike
    def kept_count(self, n):
        return keep_count(n, self.keep)

    def anchor_count(self, n):
        return keep_count(self.kept_count(n), self.anchor_share)

    def ssr_count(self, n):
        return keep_count(n, self.ssr_keep)
