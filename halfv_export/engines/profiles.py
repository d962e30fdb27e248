"""TensorRT optimization profiles for the graphs of a manifest: (min, opt, max) shape of every input.

Torch-free (the Jetson bundle uses it too). Where each size comes from:

  visual tokens N  a pixel range (Qwen2.5-VL: one token per 28x28 pixels, as smart_resize makes both
                   sides multiples of 28) or, by default, the manifest's visual_tokens range; opt = middle
  text             prefix 1..PREFIX_MAX, suffix 1..max_text; opt = middle
  prefill          prefix/visual/suffix embeds; position_ids over seq = P + N + S
  decode           one past length per layer, from the HalfV schedule at the prefill's T = P + S and N:
                     layer < ivr: T + N | ivr..ssr-1: T + K | >= ssr: T + K_ssr (topk) or T + K (freeze)
                   plus up to max_new_tokens generated tokens; min 0 (a text-only request decodes its
                   prompt token by token from an empty cache)
  embed            seq 1 (one decode token) .. the longest prompt P + N + S
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.errors import UserError
from ..core.families import family
from ..core.manifest import DECODER_ROLES
from ..core.plan import PruningPlan, layer_rows
from ..core.profile import Profile

PREFIX_MAX = 128  # system prompt + chat template before the image
DEFAULT_MAX_TEXT = 512  # suffix (question + template) tokens
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 0 <= self.min <= self.opt <= self.max:
            raise UserError(f"a shape range needs 0 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    @classmethod
    def middle(cls, lo: int, hi: int) -> "DimRange":
        return cls(lo, (lo + hi) // 2, hi)

    def __add__(self, other: "DimRange") -> "DimRange":
        return DimRange(self.min + other.min, self.opt + other.opt, self.max + other.max)

    def as_tuple(self) -> tuple[int, int, int]:
        return self.min, self.opt, self.max


@dataclass(frozen=True)
class Schedule:
    """Where the visual tokens shrink across the layers (the manifest's plan, else its profile)."""

    num_layers: int
    plan: PruningPlan | None = None  # None: no pruning (--no-prune graphs)

    @classmethod
    def from_profile(cls, profile: Profile | None, num_layers: int) -> "Schedule":
        return cls(num_layers, PruningPlan.halfv(profile) if profile is not None else None)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Schedule":
        layers = manifest["config"]["num_layers"]
        plan = manifest.get("plan")
        if plan:  # FastV/oracle plans carry their own layer and keep ratio (the manifest holds asdict(plan))
            return cls(layers, PruningPlan(**plan))
        profile = manifest.get("profile")
        return cls.from_profile(Profile.from_dict(profile) if profile else None, layers)

    def kv_lengths(self, text_len: int, n: int) -> list[int]:
        """Cache length of every layer after a prefill of text_len text and n visual tokens."""
        return [rows.kv for rows in layer_rows(self.plan, self.num_layers, text_len, n)]


@dataclass(frozen=True)
class Ranges:
    """Every size a profile is built from."""

    visual: DimRange
    prefix: DimRange
    suffix: DimRange
    batch: DimRange
    new_tokens: int

    @property
    def text(self) -> DimRange:
        return self.prefix + self.suffix


def visual_range(manifest: dict, min_pixels: int | None = None, max_pixels: int | None = None) -> DimRange:
    """Visual-token range: the manifest's, or narrowed by a pixel range (Qwen2.5-VL only)."""
    vt = manifest.get("visual_tokens")
    if not vt:
        raise UserError("manifest has no visual_tokens range: export the graphs again")
    base = DimRange(int(vt["min"]), int(vt["opt"]), int(vt["max"]))
    if min_pixels is None and max_pixels is None:
        return base
    per_token = family(str(manifest.get("backbone"))).pixels_per_token
    if per_token is None:
        raise UserError(f"--min-pixels/--max-pixels apply to Qwen2.5-VL only: {manifest.get('backbone')} "
                        f"visual tokens follow its fixed tiles (range {base.min}..{base.max} from the manifest)")
    # smart_resize keeps both sides multiples of the token side with min_pixels <= h*w <= max_pixels.
    lo = math.ceil(min_pixels / per_token) if min_pixels is not None else base.min
    hi = max_pixels // per_token if max_pixels is not None else base.max
    if lo < 1 or lo > hi:
        raise UserError(f"pixel range {min_pixels}..{max_pixels} gives no visual-token count "
                        f"({lo}..{hi} at {per_token} pixels per token)")
    if lo < base.min or hi > base.max:
        raise UserError(f"pixel range gives {lo}..{hi} visual tokens, outside the graphs' range "
                        f"{base.min}..{base.max} (pixels {base.min * per_token}.."
                        f"{base.max * per_token}); export with a wider range")
    return DimRange.middle(lo, hi)


def make_ranges(manifest: dict, min_pixels: int | None = None, max_pixels: int | None = None,
                max_text: int = DEFAULT_MAX_TEXT, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                max_batch: int = 1) -> Ranges:
    for name, value in (("max text", max_text), ("max new tokens", max_new_tokens), ("max batch", max_batch)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    return Ranges(visual=visual_range(manifest, min_pixels, max_pixels), prefix=DimRange.middle(1, PREFIX_MAX),
                  suffix=DimRange.middle(1, max_text), batch=DimRange(1, 1, max_batch), new_tokens=max_new_tokens)


def past_ranges(schedule: Schedule, ranges: Ranges) -> list[DimRange]:
    """Per-layer past length over a request: empty cache .. longest prompt cache + generated tokens."""
    at_opt = schedule.kv_lengths(ranges.text.opt, ranges.visual.opt)
    at_max = schedule.kv_lengths(ranges.text.max, ranges.visual.max)
    return [DimRange(0, o + ranges.new_tokens // 2, m + ranges.new_tokens) for o, m in zip(at_opt, at_max)]


def dim_table(role: str, manifest: dict, ranges: Ranges) -> dict[str, DimRange]:
    """Symbolic dim name -> range, for one graph (the exporter's dim names are the contract)."""
    table = {"batch": ranges.batch}
    if role == "embed":
        table["seq"] = DimRange(1, (ranges.text + ranges.visual).opt, (ranges.text + ranges.visual).max)
    elif role == "prefill":
        table.update(prefix_len=ranges.prefix, visual_tokens=ranges.visual, suffix_len=ranges.suffix,
                     seq=ranges.prefix + ranges.visual + ranges.suffix)
    elif role == "decode":
        for i, r in enumerate(past_ranges(Schedule.from_manifest(manifest), ranges)):
            table[f"past_len_{i}"] = r
    return table


ShapeRange = tuple  # (min shape, opt shape, max shape), each a tuple of ints


def graph_profile(role: str, manifest: dict, ranges: Ranges) -> dict[str, ShapeRange]:
    """input name -> (min, opt, max) shapes for one graph of the manifest."""
    table = dim_table(role, manifest, ranges)
    shapes = {}
    for spec in manifest["graphs"][role]["inputs"]:
        lo, opt, hi = [], [], []
        for dim in spec["shape"]:
            if isinstance(dim, int):
                r = DimRange(dim, dim, dim)
            elif dim in table:
                r = table[dim]
            else:
                raise UserError(f"{role} input {spec['name']} has dim {dim!r} that no profile rule covers")
            lo.append(r.min)
            opt.append(r.opt)
            hi.append(r.max)
        shapes[spec["name"]] = (tuple(lo), tuple(opt), tuple(hi))
    return shapes


def engine_profiles(manifest: dict, ranges: Ranges) -> tuple[dict, dict]:
    """({role: {input: (min, opt, max)}}, {role: why it has no profile}) over the manifest's graphs."""
    profiles, skipped = {}, {}
    for role in manifest["graphs"]:
        if role in DECODER_ROLES:  # graphs with a profile rule (vision: not yet)
            profiles[role] = graph_profile(role, manifest, ranges)
        else:
            skipped[role] = "no optimization-profile rule for this graph yet"
    return profiles, skipped


def ranges_dict(ranges: Ranges) -> dict:
    """The ranges as JSON (build.json, bundle.json)."""
    return {"visual_tokens": list(ranges.visual.as_tuple()), "prefix_len": list(ranges.prefix.as_tuple()),
            "suffix_len": list(ranges.suffix.as_tuple()), "batch": list(ranges.batch.as_tuple()),
            "max_new_tokens": ranges.new_tokens}


def profile_dict(shapes: dict) -> dict:
    """One graph's profile as JSON: input -> {min, opt, max} shapes."""
    return {name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, (lo, opt, hi) in shapes.items()}
