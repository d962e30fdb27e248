"""The Profile: where HalfV prunes for one backbone (stage layers, SSR mode, ratios).

Calibration writes it, everything else reads it. Torch-free, so the runtime can read it on a device.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from .errors import UserError
from .fileio import read_json_object, write_json

SCHEMA_VERSION = 1
SSR_MODES = ("topk", "freeze", "none")
PROFILES_DIR = Path(__file__).parent / "profiles"


def ratio(value: float) -> Fraction:
    """A keep ratio as an exact fraction, so graphs can compute counts with integer arithmetic."""
    return Fraction(value).limit_denominator(1000)


def keep_count(n, value: float):
    """max(1, floor(n * value)) with integer arithmetic only (works on ints and on traced torch SymInts).

    `int(n * 0.25)` or `max(1, ...)` on a traced shape silently bakes a constant into the graph. Here
    k = floor(n*p/q) stays symbolic, and `1 // (k + 1)` is 1 when k == 0 and 0 when k >= 1.
    """
    frac = ratio(value)
    k = (n * frac.numerator) // frac.denominator
    return k + 1 // (k + 1)


@dataclass
class Profile:
    """Stage layers and ratios for one backbone (see shared method page, sections 2-4)."""

    backbone: str  # registry family key this profile belongs to, e.g. "qwen2_5_vl"
    num_layers: int
    ivr_layer: int
    ssr_layer: int
    ssr_mode: str
    ivr_keep: float
    anchor_share: float
    ssr_keep: float | None = None
    model: str | None = None  # registry name it was made for (informational)
    source: str = "paper"  # "paper", "calibrated", "tiny-default", "scaled-from-paper"
    calibration: dict = field(default_factory=dict)  # curves, probe KLs, samples, versions
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.ssr_mode not in SSR_MODES:
            raise UserError(f"profile: ssr_mode must be one of {SSR_MODES}, got {self.ssr_mode!r}")
        if not 1 <= self.ivr_layer < self.num_layers:
            raise UserError(f"profile: ivr_layer {self.ivr_layer} must be in [1, {self.num_layers - 1}]")
        if self.ssr_mode != "none" and not self.ivr_layer < self.ssr_layer < self.num_layers:
            raise UserError(
                f"profile: ssr_layer {self.ssr_layer} must be in ({self.ivr_layer}, {self.num_layers - 1}]"
            )
        for name in ("ivr_keep", "anchor_share"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise UserError(f"profile: {name} must be in (0, 1], got {value}")
        if self.ssr_mode == "topk":
            if self.ssr_keep is None or not 0 < self.ssr_keep <= self.ivr_keep:
                raise UserError(f"profile: topk SSR needs 0 < ssr_keep <= ivr_keep, got {self.ssr_keep}")

    # Token counts (N = visual tokens of the sample). Work on ints and on traced torch shapes.
    def ivr_count(self, n):
        return keep_count(n, self.ivr_keep)

    def anchor_count(self, n):
        return keep_count(self.ivr_count(n), self.anchor_share)

    def ssr_count(self, n):
        return keep_count(n, self.ssr_keep)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        if data.get("schema_version") != SCHEMA_VERSION:
            raise UserError(
                f"profile: schema_version {data.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})"
            )
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Profile":
        path = Path(path)
        data = read_json_object(path, f"profile not found: {path}")
        try:
            return cls.from_dict(data)
        except TypeError as exc:
            raise UserError(f"profile {path} is missing fields: {exc}") from None

    def check_backbone(self, family: str, num_layers: int, model_name: str = "") -> None:
        """Refuse a profile made for another backbone (family or depth differ)."""
        if self.backbone != family or self.num_layers != num_layers:
            raise UserError(
                f"profile is for {self.model or self.backbone} ({self.backbone}, {self.num_layers} layers), "
                f"not for {model_name or family} ({family}, {num_layers} layers)"
            )


def shipped_profile(name: str) -> Profile:
    return Profile.load(PROFILES_DIR / f"{name}.json")
