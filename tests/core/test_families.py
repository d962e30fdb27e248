"""Host-side vision layout equals transformers' own grid computations (7B and tiny configs, no weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from halfv_export.backbones.registry import llava_next_7b_config, qwen7b_config, tiny_qwen_config
from halfv_export.core.families.llava import llava_next_pack_index, llava_next_tile_count, select_best_resolution
from halfv_export.core.families.qwen2_5_vl import (MASK_VALUE, qwen_rotary_position_ids, qwen_vision_inputs,
                                                   qwen_window_index, qwen_window_len)

# token grids (in patches) chosen so some are multiples of the window and most are not;
# the last ones hold two images, and a two-frame clip (t = 2)
GRIDS = [[[1, 8, 8]], [[1, 16, 16]], [[1, 16, 22]], [[1, 36, 50]], [[1, 2, 2]], [[1, 62, 18]],
         [[1, 12, 20], [1, 10, 6]], [[2, 10, 14]]]
CONFIGS = {"7b": qwen7b_config().vision_config, "tiny": tiny_qwen_config().vision_config}


@pytest.mark.parametrize("which", list(CONFIGS))
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_window_index_equals_transformers(which, grid):
    vc = CONFIGS[which]
    ref_index, ref_cu = get_vision_window_index(torch.tensor(grid), spatial_merge_size=vc.spatial_merge_size,
                                                window_size=vc.window_size, patch_size=vc.patch_size)
    index, cu = qwen_window_index(grid, vc.spatial_merge_size, vc.window_size, vc.patch_size)
    np.testing.assert_array_equal(index, ref_index.numpy())
    np.testing.assert_array_equal(cu, ref_cu.numpy())


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_rotary_positions_equal_transformers(grid):
    ref = get_vision_position_ids(torch.tensor(grid), 2)
    np.testing.assert_array_equal(qwen_rotary_position_ids(grid, 2), ref.numpy())


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_group_layout_is_the_window_and_frame_partition(grid):
    """Padded groups hold exactly transformers' windows (cu_window_seqlens over window_index) and frames."""
    vc = CONFIGS["7b"]
    merge, unit = vc.spatial_merge_size, vc.spatial_merge_size ** 2
    host = qwen_vision_inputs(grid, merge, vc.window_size, vc.patch_size)
    patches = host["rotary_pos_ids"].shape[0]
    index, cu = get_vision_window_index(torch.tensor(grid), spatial_merge_size=merge,
                                        window_size=vc.window_size, patch_size=vc.patch_size)
    order = (index[:, None] * unit + torch.arange(unit)).reshape(-1).numpy()  # window-permuted patches
    frames = get_vision_cu_seqlens(torch.tensor(grid)).numpy()
    for kind, bounds, members in (("window", cu.numpy(), order), ("full", frames, np.arange(patches))):
        rows, bias, restore = host[f"{kind}_rows"], host[f"{kind}_bias"], host[f"{kind}_restore"]
        assert rows.dtype == restore.dtype == np.int64 and bias.dtype == np.float32
        assert rows.shape[0] == len(bounds) - 1
        for g, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            np.testing.assert_array_equal(rows[g, :b - a], members[a:b])
            assert (bias[g, :b - a] == 0).all() and (bias[g, b - a:] == MASK_VALUE).all()
        # restore finds every patch's own row in the flattened group output
        np.testing.assert_array_equal(rows.reshape(-1)[restore], np.arange(patches))
        valid = bias.reshape(-1)[restore]
        assert (valid == 0).all()
    assert host["window_rows"].shape[1] == qwen_window_len(vc.window_size, vc.patch_size) == 64


def test_bad_grid_is_rejected():
    with pytest.raises(ValueError):
        qwen_vision_inputs([[1, 0, 4]], 2, 112, 14)
    with pytest.raises(ValueError):
        qwen_rotary_position_ids([[1, 3, 4]], 2)


SIZES = [(336, 336), (500, 333), (333, 500), (1000, 200), (200, 1000), (672, 672), (1, 1), (123, 4567)]


@pytest.mark.parametrize("size", SIZES)
def test_anyres_tiles_equal_transformers(size):
    cfg = llava_next_7b_config()
    pinpoints = cfg.image_grid_pinpoints
    assert select_best_resolution(size, pinpoints) == hf_select_best_resolution(size, pinpoints)
    assert llava_next_tile_count(size, pinpoints, 336) == image_size_to_num_patches(size, pinpoints, 336)


def test_pack_index_equals_transformers_packing():
    """transformers' pack_image_features on features that carry their own row number gives our index.

    7B geometry (336 px tiles, 24x24 features each), no weights: each feature is a 1-D "embedding"
    equal to its row in the flattened tile table, the newline embedding is the row after the table.
    """
    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel

    cfg = llava_next_7b_config()
    pinpoints, per_tile = cfg.image_grid_pinpoints, (336 // 14) ** 2
    sizes = SIZES[:6]
    counts = [llava_next_tile_count(s, pinpoints, 336) for s in sizes]
    table = torch.arange(sum(counts) * per_tile, dtype=torch.float64).reshape(-1, per_tile, 1)
    newline = torch.tensor([float(table.numel())], dtype=torch.float64)
    packed, _ = LlavaNextModel.pack_image_features(
        type("Host", (), {"config": cfg})(), list(torch.split(table, counts)), torch.tensor(sizes), "default",
        image_newline=newline)
    expected = torch.cat(packed).reshape(-1).long().numpy()
    index = llava_next_pack_index(sizes, pinpoints, 336, 14)
    assert index.dtype == np.int64
    np.testing.assert_array_equal(index, expected)
