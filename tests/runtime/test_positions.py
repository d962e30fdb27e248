"""Host positions (numpy) equal transformers' get_rope_index and the backbones' own positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from halfv_export.core.errors import UserError
from halfv_export.runtime.positions import (decode_positions, linear_positions, mrope_positions, prompt_positions,
                                            visual_span)
from tests.conftest import TINY_IMAGES, tiny_backbone

QWEN = "tiny-qwen2.5-vl"


def qwen_ids(bb, grids, before, after, seed):
    """One prompt per grid: random text, vision_start, the grid's image tokens, vision_end, random text."""
    gen = np.random.default_rng(seed)
    cfg = bb.config
    rows = []
    for t, h, w in grids:
        span = [cfg.vision_start_token_id] + [cfg.image_token_id] * (t * h * w // 4) + [cfg.vision_end_token_id]
        rows.append(np.concatenate([gen.integers(10, 900, before), span, gen.integers(10, 900, after)]))
    return np.stack(rows).astype(np.int64)


def transformers_rope_index(bb, ids, grids):
    ids_t = torch.from_numpy(ids)
    pos, delta = bb.model.model.get_rope_index(ids_t, bb.mm_token_type_ids(ids_t),
                                               image_grid_thw=torch.tensor(grids))
    return pos.numpy(), (ids.shape[1] + delta.view(-1)).numpy()


@pytest.mark.parametrize("grids,before,after", [
    ([[1, 8, 8]], 5, 7),  # square
    ([[1, 8, 12]], 3, 9),  # wider than high
    ([[1, 12, 4]], 0, 4),  # higher than wide, no text before the span's start token
    ([[1, 8, 12], [1, 12, 8]], 6, 2),  # batch 2, different grids with the same token count
    ([[1, 4, 4], [1, 4, 4]], 2, 0),  # batch 2, nothing after the vision_end token
])
def test_mrope_equals_transformers_get_rope_index(grids, before, after):
    bb = tiny_backbone(QWEN)
    ids = qwen_ids(bb, grids, before, after, seed=len(grids) * 10 + before)
    ours, next_ours = mrope_positions(ids, grids, bb.image_token_id, bb.config.vision_config.spatial_merge_size)
    theirs, next_theirs = transformers_rope_index(bb, ids, grids)
    assert ours.dtype == np.int64 and ours.shape == (3, len(grids), ids.shape[1])
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(next_ours, next_theirs)
    np.testing.assert_array_equal(next_ours, ours.max(axis=(0, 2)) + 1)


@pytest.mark.parametrize("name", list(TINY_IMAGES))
@pytest.mark.parametrize("image_index", [0, 1])
def test_prompt_positions_equal_backbone_positions(name, image_index):
    bb = tiny_backbone(name)
    image = TINY_IMAGES[name][image_index % len(TINY_IMAGES[name])]
    batch = bb.example_batch(2, image, text_before=4, text_after=6, seed=image_index)
    theirs, next_theirs = bb.position_ids(batch)
    grid = None if batch.image_grid_thw is None else batch.image_grid_thw.numpy()
    ours, next_ours = prompt_positions(batch.input_ids.numpy(), bb.position_rows, bb.image_token_id, grid)
    np.testing.assert_array_equal(ours, theirs.numpy())
    np.testing.assert_array_equal(next_ours, next_theirs.numpy())
    for step in (0, 3):
        np.testing.assert_array_equal(decode_positions(next_ours, step, bb.position_rows),
                                      bb.decode_position_ids(next_theirs, step).numpy())


@pytest.mark.parametrize("name", list(TINY_IMAGES))
def test_text_only_positions_equal_backbone(name):
    bb = tiny_backbone(name)
    batch = bb.example_batch(2, None, text_before=5, text_after=3)
    theirs, next_theirs = bb.position_ids(batch)
    ours, next_ours = prompt_positions(batch.input_ids.numpy(), bb.position_rows, bb.image_token_id)
    np.testing.assert_array_equal(ours, theirs.numpy())
    np.testing.assert_array_equal(next_ours, next_theirs.numpy())


def test_linear_positions_continue_from_unpruned_length():
    pos, nxt = linear_positions(np.zeros((2, 9), dtype=np.int64))
    np.testing.assert_array_equal(pos[1], np.arange(9))
    np.testing.assert_array_equal(decode_positions(nxt, 2, 1), [[11], [11]])


def test_visual_span_and_bad_prompts():
    img = 7
    ids = np.array([[1, img, img, 2], [3, img, img, 4]])
    assert visual_span(ids, img) == (1, 2)
    assert visual_span(np.array([[1, 2]]), img) == (0, 0)
    with pytest.raises(UserError, match="same number"):
        visual_span(np.array([[img, img, 1], [img, 1, 1]]), img)
    with pytest.raises(UserError, match="same place"):
        visual_span(np.array([[img, 1, 1], [1, img, 1]]), img)
    with pytest.raises(UserError, match="contiguous"):
        visual_span(np.array([[img, 1, img]]), img)
    with pytest.raises(UserError, match="image tokens"):
        mrope_positions(np.array([[1, img, img, img, img, 2]]), [[1, 4, 6]], img)
    with pytest.raises(UserError, match="no image_grid_thw"):
        mrope_positions(ids, None, img)
