"""A pruning plan: what the decoder loop does to visual tokens, and at which layers.

HalfV plans come from a Profile; FastV and random are baselines on the same loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from .profile import Profile, keep_count


COVERAGES = ("fps", "oneshot")
SELECTORS = COVERAGES + ("fastv", "random", "oracle")


@dataclass(frozen=True)
class LayerRows:
    """Rows one layer computes: `query` rows are updated, `kv` rows are projected to keys/values."""

    query: int
    kv: int


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


def layer_rows(plan: PruningPlan | None, num_layers: int, n_text: int, n_visual: int) -> list[LayerRows]:
    """The per-layer schedule: rows each decoder layer computes for n_text text and n_visual visual tokens.

    The one place the schedule is written: FLOPs (core/flops.py, which bench and the zoo's eval report) and the
    engine profiles' per-layer cache lengths read it. No plan, or no visual tokens: every layer takes every row.

    layer:    0 .. p-1   | p .. ssr-1 | ssr .. L-1
    query:    T + N      | T + K      | T + K_ssr (topk) or T (freeze)
    kv:       T + N      | T + K      | T + K_ssr (topk) or T + K (freeze)
    """
    full = LayerRows(n_text + n_visual, n_text + n_visual)
    if plan is None or n_visual == 0:
        return [full] * num_layers
    kept = LayerRows(n_text + plan.kept_count(n_visual), n_text + plan.kept_count(n_visual))
    if plan.ssr_mode == "topk":
        late = LayerRows(n_text + plan.ssr_count(n_visual), n_text + plan.ssr_count(n_visual))
    elif plan.ssr_mode == "freeze":
        late = LayerRows(n_text, kept.kv)
    else:
        late = kept
    ssr = plan.ssr_layer if plan.ssr_mode != "none" and plan.ssr_layer is not None else num_layers
    return [full if layer < plan.prune_layer else kept if layer < ssr else late for layer in range(num_layers)]
