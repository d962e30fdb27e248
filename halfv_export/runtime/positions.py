"""Host-side position ids, numpy only (no torch): what the prefill and decode graphs take as input.

Qwen2.5-VL (M-RoPE, 3 rows: temporal, height, width), one image per request:

    tokens:     text before (P)      | image (t, h, w merged grid)         | text after
    row t:      0 1 .. P-1           | P + t_index                         | m m+1 ..
    row h:      0 1 .. P-1           | P + row index                       | m m+1 ..
    row w:      0 1 .. P-1           | P + column index                    | m m+1 ..
    with m = P + max(h, w) (= max position + 1 for a still image, t = 1).

It follows transformers' `Qwen2_5_VLModel.get_rope_index` (tests compare the two). LLaVA uses plain
1-D positions. Generated tokens continue from the UNPRUNED prompt: pruning never renumbers positions,
so the next position is Qwen's max + 1 (the "rope delta" + S) or LLaVA's S, whatever the graph kept.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import UserError


def visual_span(input_ids: np.ndarray, image_token_id: int) -> tuple[int, int]:
    """(start, count) of the image placeholder span, the same for every row; (0, 0) for text only.

    The prefill graph takes prefix / visual / suffix embeddings split by shape, so a batch must put
    its one contiguous span at the same place in every row.
    """
    is_image = np.asarray(input_ids) == image_token_id
    counts = is_image.sum(axis=1)
    if counts.max(initial=0) == 0:
        return 0, 0
    if not (counts == counts[0]).all():
        raise UserError(f"every request of a batch needs the same number of image tokens, got {counts.tolist()}")
    starts = is_image.argmax(axis=1)
    if not (starts == starts[0]).all():
        raise UserError("every request of a batch needs its image tokens at the same place")
    start, count = int(starts[0]), int(counts[0])
    if not is_image[:, start:start + count].all():
        raise UserError("the image tokens of a request must be one contiguous span (one image per request)")
    return start, count


def linear_positions(input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LLaVA: position_ids [B, S] = arange(S), next_position [B] = S."""
    b, s = np.asarray(input_ids).shape
    return np.broadcast_to(np.arange(s, dtype=np.int64), (b, s)).copy(), np.full((b,), s, dtype=np.int64)


def _image_positions(offset: int, grid, merge: int) -> np.ndarray:
    """[3, t*h*w] positions of one image's merged grid, offset by the text before it."""
    t, h, w = int(grid[0]), int(grid[1]) // merge, int(grid[2]) // merge
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt.ravel(), hh.ravel(), ww.ravel()]).astype(np.int64) + offset


def mrope_positions(input_ids: np.ndarray, image_grid_thw, image_token_id: int,
                    spatial_merge_size: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Qwen2.5-VL: position_ids [3, B, S] and next_position [B] (= max position + 1).

    image_grid_thw [B, 3] holds each row's image grid in patches (before the merge), or None for a
    text-only batch, whose positions are arange(S) on all three rows.
    """
    ids = np.asarray(input_ids)
    b, s = ids.shape
    is_image = ids == image_token_id
    if image_grid_thw is None:
        if is_image.any():
            raise UserError("the prompt has image tokens but no image_grid_thw was given")
        pos = np.broadcast_to(np.arange(s, dtype=np.int64), (3, b, s)).copy()
        return pos, np.full((b,), s, dtype=np.int64)
    grids = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    if grids.shape[0] != b:
        raise UserError(f"image_grid_thw has {grids.shape[0]} rows for a batch of {b} (one image per request)")
    merge = spatial_merge_size
    pos = np.zeros((3, b, s), dtype=np.int64)
    next_position = np.zeros((b,), dtype=np.int64)
    for row in range(b):
        # runs of equal token type: (is_image, start, end)
        flags = is_image[row]
        edges = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
        bounds = np.concatenate([[0], edges, [s]])
        runs = [(bool(flags[a]), int(a), int(e)) for a, e in zip(bounds[:-1], bounds[1:])]
        if sum(image for image, _, _ in runs) > 1:
            raise UserError(f"request {row} has more than one image span; one image per request is supported")
        current = 0
        for image, a, e in runs:
            if not image:
                pos[:, row, a:e] = np.arange(e - a, dtype=np.int64) + current
                current += e - a
                continue
            t, h, w = (int(x) for x in grids[row])
            if h % merge or w % merge or t * h * w // (merge * merge) != e - a:
                raise UserError(f"request {row}: image grid {[t, h, w]} gives {t * h * w // (merge * merge)} "
                                f"tokens with merge {merge}, the prompt has {e - a} image tokens")
            pos[:, row, a:e] = _image_positions(current, grids[row], merge)
            current += max(h, w) // merge
        next_position[row] = pos[:, row].max(initial=-1) + 1
    return pos, next_position


def decode_positions(next_position: np.ndarray, step: int, rows: int) -> np.ndarray:
    """Positions of the token generated at `step` (0-based) after the prompt: [3, B, 1] or [B, 1]."""
    pos = (np.asarray(next_position, dtype=np.int64) + step).reshape(-1, 1)
    return np.broadcast_to(pos, (3,) + pos.shape).copy() if rows == 3 else pos


def prompt_positions(input_ids: np.ndarray, rows: int, image_token_id: int, image_grid_thw=None,
                     spatial_merge_size: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The family's prompt positions by the manifest's position_rows (3: M-RoPE, 1: linear)."""
    if rows == 3:
        return mrope_positions(input_ids, image_grid_thw, image_token_id, spatial_merge_size)
    if rows != 1:
        raise UserError(f"position_rows must be 1 or 3, got {rows}")
    return linear_positions(input_ids)
