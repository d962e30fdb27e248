"""The model families, one torch-free spec module each, registered in FAMILIES (the one table).

Adding a family: a spec module here (chat format, pixels, vision-graph inputs, calibration defaults) added to
FAMILIES, and its transformers wrapper in backbones/ with registry rows for its checkpoints.
"""

from __future__ import annotations

from ..errors import UserError
from . import llava, qwen2_5_vl
from .spec import Family, VisionRequest

FAMILIES = {f.key: f for f in (qwen2_5_vl.FAMILY, llava.LLAVA, llava.LLAVA_NEXT)}


def family(key: str) -> Family:
    try:
        return FAMILIES[key]
    except KeyError:
        raise UserError(f"unknown model family {key!r}; known: {', '.join(FAMILIES)}") from None


__all__ = ["FAMILIES", "Family", "VisionRequest", "family"]
