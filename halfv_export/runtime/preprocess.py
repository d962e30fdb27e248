"""Image + prompt -> the graphs' inputs on the host: numpy + PIL only (no torch).

The family's spec (core/families) holds its pixel steps and vision-graph inputs; this module dispatches on the
vision graph's "preprocess" settings (manifest), concatenates images along the graph's first axis and expands
the prompt around the image placeholders. tests/runtime/test_preprocess.py compares the pixels with the
transformers processors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.families import VisionRequest, family


def image_pixels(image, cfg: dict) -> dict[str, np.ndarray]:
    """The processor output for one image (PIL image or path) under this model's settings."""
    return family(cfg.get("family")).pixels(image, cfg)


def vision_request(images, cfg: dict) -> VisionRequest:
    """Graph inputs, token counts and (Qwen) grids for a list of images (PIL images or paths).

    `cfg` is the vision graph's "preprocess" dict (manifest). Images are concatenated along the
    graph's first axis (patches / images / tiles); the output rows follow the same image order.
    """
    spec = family(cfg.get("family"))
    per_image = [spec.pixels(image, cfg) for image in images]
    if not per_image:
        raise ValueError("vision_request needs at least one image")
    return spec.vision_request(per_image, cfg)


def vision_feed(images, cfg: dict) -> tuple[dict[str, np.ndarray], list[int]]:
    """Graph inputs for a list of images (PIL images or paths), and the visual tokens of each image."""
    request = vision_request(images, cfg)
    return request.feed, request.counts


# -- prompts -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpandedPrompt:
    input_ids: np.ndarray  # [S] int64, one placeholder per visual token
    visual_start: int  # index of the first placeholder
    visual_count: int


def expand_prompt(cfg: dict, n_visual_tokens: int, text_ids_before, text_ids_after) -> ExpandedPrompt:
    """Text ids around the image placeholders: Qwen wraps them in vision_start/vision_end tokens."""
    if n_visual_tokens < 0:
        raise ValueError("n_visual_tokens must be >= 0")
    before = [int(i) for i in text_ids_before]
    after = [int(i) for i in text_ids_after]
    pads = [int(cfg["image_token_id"])] * n_visual_tokens
    if n_visual_tokens and cfg.get("vision_start_token_id") is not None:
        before = before + [int(cfg["vision_start_token_id"])]
        after = [int(cfg["vision_end_token_id"])] + after
    ids = np.asarray(before + pads + after, dtype=np.int64)
    return ExpandedPrompt(ids, len(before), n_visual_tokens)
