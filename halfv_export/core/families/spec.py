"""What a model family is to the torch-free layers: one Family per family, registered in families/__init__.py.

The torch side of a family (the transformers model wrapper) is backbones/<family>.py; everything the runtime,
deployment and lint need to know about a family without torch is its Family here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class VisionRequest:
    feed: dict  # the vision graph's inputs
    counts: list  # visual tokens per image
    image_grid_thw: np.ndarray | None = None  # Qwen2.5-VL: [images, 3] in patches (M-RoPE positions need it)


@dataclass(frozen=True)
class Family:
    key: str  # the manifest's "backbone" / preprocess "family" value, e.g. "qwen2_5_vl"
    title: str
    # Chat text around the image span, (before, after); "{prompt}" is replaced by the user text.
    prompt: tuple[str, str]
    bos: bool  # the chat format starts with the BOS token
    # One image (PIL image or path) -> the processor's arrays, under the manifest's preprocess settings.
    pixels: Callable[..., dict]
    # Per-image processor arrays (in request order) + settings -> the vision graph's inputs and token counts.
    vision_request: Callable[[list, dict], VisionRequest]
    # Calibration's ratios for a model without a shipped profile: ivr_keep, anchor_share, ssr_keep.
    default_ratios: dict = field(default_factory=dict)
    # Pixels one visual token covers when the count follows the image size (None: a fixed count per image).
    pixels_per_token: int | None = None
