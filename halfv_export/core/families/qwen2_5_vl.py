"""Qwen2.5-VL's torch-free facts: chat format, pixels (Qwen2VLImageProcessor), vision-graph inputs, token counts.

Pixels: smart_resize (sides multiples of patch*merge, area within min/max pixels) -> patches
[grid_h*grid_w, C*T*p*p] in merge-block order, image_grid_thw [1, 3].

Vision-graph inputs (per image grid (t, h, w) in patches; merged tokens are m x m patch blocks):

    patches, processor order (merge-block major)           window layout fed to the graph
    +----+----+----+----+                                  window_rows  [windows, window_len]
    | w0 | w0 | w1 | w1 |   windows = tiles of             window_bias  [windows, window_len]  0 | MASK
    | w0 | w0 | w1 | w1 |   (window_size/patch)^2 patches  window_restore [patches] -> row of the
    | w2 | w2 | w3 | .. |   cut at the image border          flattened [windows * window_len] result
    +----+----+----+----+

Window blocks attend inside each window, full blocks (config fullatt_block_indexes) inside each frame of each
image. Both are given as padded groups (rows + key bias + restore) rather than one additive [patches, patches]
mask: the graph then does O(patches * group_len) attention work, which matters for the 7B window blocks
(64-patch windows, thousands of patches), and no quadratic mask crosses the host/device boundary. The padded
group layout replaces transformers' window_index + cu_seqlens (and its reverse index: the graph never permutes
the sequence, it only gathers group rows).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from ..image import as_rgb, normalise, resize
from .spec import Family, VisionRequest

KEY = "qwen2_5_vl"
# Qwen2VLImageProcessor's defaults: 14-px patches merged 2x2, so one visual token covers 28 x 28 pixels.
PATCH, MERGE = 14, 2
PIXELS_PER_TOKEN = (PATCH * MERGE) ** 2
MIN_PIXELS, MAX_PIXELS = 4 * PIXELS_PER_TOKEN, 1280 * PIXELS_PER_TOKEN
RELEASE_MAX_PIXELS = 16384 * PIXELS_PER_TOKEN  # the released checkpoints' preprocessor_config.json
# Additive key bias for padded slots: finite so a softmax never sees (-inf) - (-inf).
MASK_VALUE = float(np.finfo(np.float32).min)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Sides rounded to multiples of `factor`, area brought into [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise UserError(f"image aspect ratio {max(height, width) / min(height, width):.0f}:1 is above 200:1 "
                        f"({width}x{height}); Qwen2.5-VL cannot take it")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_pixels(image, cfg: dict) -> dict[str, np.ndarray]:
    """pixel_values [grid_h*grid_w, 3*T*p*p] float32 and image_grid_thw [1, 3] int64."""
    image = as_rgb(image)
    patch, merge, temporal = int(cfg["patch_size"]), int(cfg["merge_size"]), int(cfg["temporal_patch_size"])
    height, width = smart_resize(image.height, image.width, patch * merge,
                                 int(cfg["min_pixels"]), int(cfg["max_pixels"]))
    chw = normalise(np.asarray(resize(image, height, width, cfg)), cfg)
    gh, gw = height // patch, width // patch
    # (C, gh/m, m, p, gw/m, m, p) -> (gh/m, gw/m, m, m, C, p, p): merge blocks outermost, each patch C-major
    blocks = chw.reshape(3, gh // merge, merge, patch, gw // merge, merge, patch).transpose(1, 4, 2, 5, 0, 3, 6)
    # a still image fills every temporal slot of the 3-D patch with the same frame
    frames = np.broadcast_to(blocks[:, :, :, :, :, None], blocks.shape[:5] + (temporal, patch, patch))
    return {"pixel_values": np.ascontiguousarray(frames.reshape(gh * gw, 3 * temporal * patch * patch)),
            "image_grid_thw": np.array([[1, gh, gw]], dtype=np.int64)}


def _grid(grid_thw) -> np.ndarray:
    grid = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
    if (grid <= 0).any():
        raise ValueError(f"grid_thw entries must be positive, got {grid.tolist()}")
    return grid


def qwen_rotary_position_ids(grid_thw, merge_size: int) -> np.ndarray:
    """(h, w) patch coordinates [patches, 2] in processor order (merge-block major, frames repeated)."""
    rows = []
    for t, h, w in _grid(grid_thw).tolist():
        if h % merge_size or w % merge_size:
            raise ValueError(f"grid {h}x{w} is not a multiple of merge size {merge_size}")
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        shape = (h // merge_size, merge_size, w // merge_size, merge_size)
        hh = hh.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        ww = ww.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        rows.append(np.tile(np.stack([hh, ww], axis=1), (t, 1)))
    return np.concatenate(rows).astype(np.int64)


def qwen_window_index(grid_thw, merge_size: int, window_size: int, patch_size: int):
    """(window_index [merged tokens], cu_window_seqlens [windows + 1]) exactly as transformers.

    window_index lists merged-token ids window by window (row-major inside a window); the
    cumulative lengths count patches. Windows that fall entirely outside the grid are dropped.
    """
    side = window_size // merge_size // patch_size  # window side in merged tokens
    unit = merge_size * merge_size
    index, cu, offset = [], [0], 0
    for t, h, w in _grid(grid_thw).tolist():
        lh, lw = h // merge_size, w // merge_size
        nh, nw = -(-lh // side), -(-lw // side)
        ids = np.full((t, nh * side, nw * side), -1, dtype=np.int64)
        ids[:, :lh, :lw] = np.arange(t * lh * lw).reshape(t, lh, lw) + offset
        # (t, nh, side, nw, side) -> windows in row-major order, tokens row-major inside each
        win = ids.reshape(t, nh, side, nw, side).transpose(0, 1, 3, 2, 4).reshape(-1, side * side)
        for row in win:
            kept = row[row >= 0]
            if kept.size:
                index.append(kept)
                cu.append(cu[-1] + kept.size * unit)
        offset += t * lh * lw
    return np.concatenate(index), np.asarray(cu, dtype=np.int32)


def _groups(members: list[np.ndarray], length: int, patches: int):
    """Padded group layout: rows [G, length], additive key bias [G, length], restore [patches]."""
    rows = np.zeros((len(members), length), dtype=np.int64)
    bias = np.full((len(members), length), MASK_VALUE, dtype=np.float32)
    restore = np.full(patches, -1, dtype=np.int64)
    for g, ids in enumerate(members):
        rows[g, :ids.size] = ids
        bias[g, :ids.size] = 0.0
        restore[ids] = g * length + np.arange(ids.size)
    assert (restore >= 0).all(), "every patch belongs to exactly one group"
    return rows, bias, restore


def qwen_window_len(window_size: int, patch_size: int) -> int:
    """Patches in a full window: the static second dim of window_rows."""
    return (window_size // patch_size) ** 2


def qwen_vision_inputs(grid_thw, merge_size: int, window_size: int, patch_size: int) -> dict[str, np.ndarray]:
    """Every vision-graph input except pixel_values, for images/frames with these grids.

    Returns rotary_pos_ids [patches, 2] int64, window_rows/window_bias [windows, window_len],
    window_restore [patches], full_rows/full_bias [frames, frame_len], full_restore [patches].
    """
    grid = _grid(grid_thw)
    unit = merge_size * merge_size
    patches = int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum())
    index, cu = qwen_window_index(grid, merge_size, window_size, patch_size)
    # merged token g covers patches g*unit .. g*unit+unit-1 (processor order)
    patch_order = (index[:, None] * unit + np.arange(unit)).reshape(-1)
    windows = [patch_order[a:b] for a, b in zip(cu[:-1], cu[1:])]
    window_rows, window_bias, window_restore = _groups(windows, qwen_window_len(window_size, patch_size), patches)
    # full-attention segments: one per frame of each image (transformers' cu_seqlens)
    frame_sizes = np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0])
    starts = np.concatenate([[0], np.cumsum(frame_sizes)[:-1]])
    frames = [np.arange(s, s + n) for s, n in zip(starts, frame_sizes)]
    full_rows, full_bias, full_restore = _groups(frames, int(frame_sizes.max()), patches)
    return {
        "rotary_pos_ids": qwen_rotary_position_ids(grid, merge_size),
        "window_rows": window_rows, "window_bias": window_bias, "window_restore": window_restore,
        "full_rows": full_rows, "full_bias": full_bias, "full_restore": full_restore,
    }


def qwen_token_count(grid_thw, merge_size: int) -> int:
    grid = _grid(grid_thw)
    return int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum()) // (merge_size * merge_size)


def vision_request(per_image: list[dict], cfg: dict) -> VisionRequest:
    """Graph inputs, token counts and grids for images already through qwen_pixels."""
    grid = np.concatenate([p["image_grid_thw"] for p in per_image])
    feed = {"pixel_values": np.concatenate([p["pixel_values"] for p in per_image]),
            **qwen_vision_inputs(grid, cfg["merge_size"], cfg["window_size"], cfg["patch_size"])}
    return VisionRequest(feed, [qwen_token_count(g, cfg["merge_size"]) for g in grid], grid)


FAMILY = Family(
    key=KEY, title="Qwen2.5-VL",
    # <|im_start|>user\n <vision_start> <image>*N <vision_end> PROMPT<|im_end|>\n<|im_start|>assistant\n
    prompt=("<|im_start|>user\n", "{prompt}<|im_end|>\n<|im_start|>assistant\n"), bos=False,
    pixels=qwen_pixels, vision_request=vision_request,
    default_ratios=dict(ivr_keep=0.25, anchor_share=0.2, ssr_keep=0.05),
    pixels_per_token=PIXELS_PER_TOKEN,
)
