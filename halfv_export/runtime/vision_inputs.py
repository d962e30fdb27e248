"""Host-side inputs of the vision graphs: everything that depends on the image grid, in numpy.

transformers computes these inside the vision forward with loops, `.tolist()` and `repeat_interleave`
(data-dependent shapes a graph cannot hold). Here they become plain integer/float arrays fed to the
graph, so the exported graph only has shape-derived dims. Torch-free: runs on a Jetson or in Triton.

Qwen2.5-VL (per image grid (t, h, w) in patches; merged tokens are m x m patch blocks):

    patches, processor order (merge-block major)           window layout fed to the graph
    +----+----+----+----+                                  window_rows  [windows, window_len]
    | w0 | w0 | w1 | w1 |   windows = tiles of             window_bias  [windows, window_len]  0 | MASK
    | w0 | w0 | w1 | w1 |   (window_size/patch)^2 patches  window_restore [patches] -> row of the
    | w2 | w2 | w3 | .. |   cut at the image border          flattened [windows * window_len] result
    +----+----+----+----+

Window blocks attend inside each window, full blocks (config fullatt_block_indexes) inside each frame
of each image. Both are given as padded groups (rows + key bias + restore) rather than one additive
[patches, patches] mask: the graph then does O(patches * group_len) attention work, which matters
for the 7B window blocks (64-patch windows, thousands of patches), and no quadratic mask crosses
the host/device boundary. The padded group layout replaces transformers' window_index + cu_seqlens
(and its reverse index: the graph never permutes the sequence, it only gathers group rows).

LLaVA-NeXT: the anyres unpad + image_newline packing becomes one gather index into the per-tile
features with the newline appended as the last row (see `llava_next_pack_index`).
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import numpy as np

# Additive key bias for padded slots: finite so a softmax never sees (-inf) - (-inf).
MASK_VALUE = float(np.finfo(np.float32).min)


# -- Qwen2.5-VL --------------------------------------------------------------------------------------
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


# -- LLaVA-NeXT --------------------------------------------------------------------------------------
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


# -- everything the vision graph takes -----------------------------------------------------------------
@dataclass
class VisionRequest:
    feed: dict  # the vision graph's inputs
    counts: list  # visual tokens per image
    image_grid_thw: np.ndarray | None = None  # Qwen2.5-VL: [images, 3] in patches (M-RoPE positions need it)


def vision_feed(images, cfg: dict) -> tuple[dict[str, np.ndarray], list[int]]:
    """Graph inputs for a list of images (PIL images or paths), and the visual tokens of each image."""
    request = vision_request(images, cfg)
    return request.feed, request.counts


def vision_request(images, cfg: dict) -> VisionRequest:
    """Graph inputs, token counts and (Qwen) grids for a list of images (PIL images or paths).

    `cfg` is the vision graph's "preprocess" dict (manifest). Images are concatenated along the
    graph's first axis (patches / images / tiles); the output rows follow the same image order.
    """
    from .preprocess import image_pixels

    family = cfg["family"]
    per_image = [image_pixels(image, cfg) for image in images]
    if not per_image:
        raise ValueError("vision_feed needs at least one image")
    pixel_values = np.concatenate([p["pixel_values"] for p in per_image])
    if family == "qwen2_5_vl":
        grid = np.concatenate([p["image_grid_thw"] for p in per_image])
        feed = {"pixel_values": pixel_values,
                **qwen_vision_inputs(grid, cfg["merge_size"], cfg["window_size"], cfg["patch_size"])}
        counts = [qwen_token_count(g, cfg["merge_size"]) for g in grid]
        return VisionRequest(feed, counts, grid)
    if family == "llava":
        feed = {"pixel_values": pixel_values}
        counts = [(int(cfg["image_size"]) // int(cfg["patch_size"])) ** 2 + (cfg.get("feature_select") == "full")
                  ] * len(per_image)
    elif family == "llava_next":
        sizes = [tuple(int(v) for v in p["image_sizes"][0]) for p in per_image]
        index = llava_next_pack_index(sizes, cfg["image_grid_pinpoints"], int(cfg["image_size"]),
                                      int(cfg["patch_size"]))
        feed = {"pixel_values": pixel_values, "pack_index": index}
        counts = [llava_next_pack_index([s], cfg["image_grid_pinpoints"], int(cfg["image_size"]),
                                        int(cfg["patch_size"])).size for s in sizes]
    else:
        raise ValueError(f"unknown vision family {family!r}")
    return VisionRequest(feed, counts)
