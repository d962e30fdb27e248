"""LLaVA-1.5 and LLaVA-NeXT's torch-free facts: chat formats, pixels, vision-graph inputs, token counts.

  LLaVA-1.5   CLIPImageProcessor: shortest-edge resize, center crop           -> [1, 3, s, s]
  LLaVA-NeXT  LlavaNextImageProcessor: best pinpoint, aspect resize + center pad, tiles + the whole image
              squashed to one tile                                            -> [tiles, 3, s, s], image_sizes
              The anyres unpad + image_newline packing becomes one gather index into the per-tile features
              with the newline appended as the last row (`llava_next_pack_index`).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ..image import as_rgb, clip_tile, resize
from .spec import Family, VisionRequest


def clip_pixels(image, cfg: dict) -> dict[str, np.ndarray]:
    """pixel_values [1, 3, s, s] float32 (CLIPImageProcessor)."""
    return {"pixel_values": clip_tile(as_rgb(image), cfg)[None]}


def select_best_resolution(size: tuple[int, int], pinpoints) -> tuple[int, int]:
    """The pinpoint (height, width) that keeps most of the image and wastes least (transformers' rule)."""
    height, width = size
    best, best_effective, best_waste = None, 0, math.inf
    for ph, pw in pinpoints:
        scale = min(pw / width, ph / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = ph * pw - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (int(ph), int(pw)), effective, waste
    return best


def llava_next_grid(size: tuple[int, int], pinpoints, tile: int) -> tuple[int, int]:
    """(rows, cols) of grid tiles for an image of (height, width) pixels."""
    ph, pw = select_best_resolution(size, pinpoints)
    return ph // tile, pw // tile


def llava_next_tile_count(size: tuple[int, int], pinpoints, tile: int) -> int:
    """Tiles fed to the vision graph for one image: the base (whole image) tile plus the grid tiles."""
    ph, pw = select_best_resolution(size, pinpoints)
    return -(-ph // tile) * -(-pw // tile) + 1


def _unpadded_span(size: tuple[int, int], rows: int, cols: int) -> tuple[slice, slice]:
    """Rows/cols of the [rows, cols] feature canvas that hold the image, not the letterbox padding.

    Same float arithmetic as transformers' unpad_image (Python floats, round to 7 digits).
    """
    height, width = int(size[0]), int(size[1])
    if width / height > cols / rows:
        new_rows = int(round(height * (cols / width), 7))
        pad = (rows - new_rows) // 2
        return slice(pad, rows - pad), slice(0, cols)
    new_cols = int(round(width * (rows / height), 7))
    pad = (cols - new_cols) // 2
    return slice(0, rows), slice(pad, cols - pad)


def llava_next_pack_index(image_sizes, pinpoints, tile: int, patch: int) -> np.ndarray:
    """Gather index [tokens] into the flattened per-tile features, newline = the row after them.

    Per image (tiles in processor order: base, then the grid row-major), the packed sequence is
    the base tile's features, then for each feature row of the unpadded canvas its features and
    one image_newline, as transformers' pack_image_features ("spatial_unpad").
    """
    side = tile // patch  # features per tile side
    per_tile = side * side
    counts = [llava_next_tile_count(tuple(s), pinpoints, tile) for s in image_sizes]
    newline = sum(counts) * per_tile
    out, first = [], 0
    for size, count in zip(image_sizes, counts):
        base = first * per_tile + np.arange(per_tile)
        if count == 1:
            out += [base, [newline]]
        else:
            gr, gc = llava_next_grid(tuple(size), pinpoints, tile)
            # canvas[y, x] = feature id; tile (i, j) is tile 1 + i * gc + j of this image
            tile_ids = first + 1 + np.arange(gr * gc).reshape(gr, 1, gc, 1)
            local = (np.arange(side)[None, :, None, None] * side + np.arange(side)[None, None, None, :])
            canvas = (tile_ids * per_tile + local).reshape(gr * side, gc * side)
            ys, xs = _unpadded_span(size, gr * side, gc * side)
            canvas = canvas[ys, xs]
            canvas = np.concatenate([canvas, np.full((canvas.shape[0], 1), newline)], axis=1)
            out += [base, canvas.reshape(-1)]
        first += count
    return np.concatenate([np.asarray(o, dtype=np.int64) for o in out])


def _fit_inside(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """Aspect-preserving size that fills the target on its tighter side (ceil, clamped)."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def llava_next_pixels(image, cfg: dict) -> dict[str, np.ndarray]:
    """pixel_values [tiles, 3, s, s] float32 (base tile first, then the grid row-major), image_sizes [1, 2]."""
    image = as_rgb(image)
    tile = int(cfg["image_size"])
    target_h, target_w = select_best_resolution((image.height, image.width), cfg["image_grid_pinpoints"])
    new_h, new_w = _fit_inside(image.height, image.width, target_h, target_w)
    fitted = np.asarray(resize(image, new_h, new_w, cfg))
    top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
    canvas = np.zeros((target_h, target_w, 3), dtype=np.uint8)  # black letterbox, as the processor pads
    canvas[top:top + new_h, left:left + new_w] = fitted
    edge = int(cfg.get("shortest_edge", tile))
    tiles = [resize(image, edge, edge, cfg)]  # the whole image, squashed to a square
    tiles += [Image.fromarray(canvas[y:y + tile, x:x + tile])
              for y in range(0, target_h, tile) for x in range(0, target_w, tile)]
    return {"pixel_values": np.stack([clip_tile(t, cfg) for t in tiles]),
            "image_sizes": np.array([[image.height, image.width]], dtype=np.int64)}


def clip_token_count(cfg: dict) -> int:
    """Visual tokens of one LLaVA-1.5 image: the CLIP patch grid (+ the class token with feature_select "full")."""
    return (int(cfg["image_size"]) // int(cfg["patch_size"])) ** 2 + (cfg.get("feature_select") == "full")


def llava_request(per_image: list[dict], cfg: dict) -> VisionRequest:
    return VisionRequest({"pixel_values": np.concatenate([p["pixel_values"] for p in per_image])},
                         [clip_token_count(cfg)] * len(per_image))


def llava_next_request(per_image: list[dict], cfg: dict) -> VisionRequest:
    sizes = [tuple(int(v) for v in p["image_sizes"][0]) for p in per_image]
    pinpoints, tile, patch = cfg["image_grid_pinpoints"], int(cfg["image_size"]), int(cfg["patch_size"])
    feed = {"pixel_values": np.concatenate([p["pixel_values"] for p in per_image]),
            "pack_index": llava_next_pack_index(sizes, pinpoints, tile, patch)}
    return VisionRequest(feed, [llava_next_pack_index([s], pinpoints, tile, patch).size for s in sizes])


# The LLaVA family freezes visual tokens at SSR (ssr_keep None) and keeps half at IVR.
LLAVA_RATIOS = dict(ivr_keep=0.5, anchor_share=0.2, ssr_keep=None)

LLAVA = Family(
    key="llava", title="LLaVA-1.5",
    prompt=("USER: ", "\n{prompt} ASSISTANT:"), bos=True,  # <bos> USER: <image>*N \nPROMPT ASSISTANT:
    pixels=clip_pixels, vision_request=llava_request, default_ratios=LLAVA_RATIOS,
)
LLAVA_NEXT = Family(
    key="llava_next", title="LLaVA-NeXT",
    prompt=("[INST] ", "\n{prompt} [/INST]"), bos=True,  # <bos> [INST] <image>*N \nPROMPT [/INST]
    pixels=llava_next_pixels, vision_request=llava_next_request, default_ratios=LLAVA_RATIOS,
)
