"""Qwen2.5-VL: 3-D M-RoPE positions from get_rope_index, vision tower with a 2x2 patch merger."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from .base import Backbone, MultimodalBatch

PATCH = 14
MERGE = 2
TEXT_ID_RANGE = (10, 900)  # random text ids for examples stay clear of the special tokens


class Qwen25VLBackbone(Backbone):
    family = "qwen2_5_vl"
    hf_class = Qwen2_5_VLForConditionalGeneration
    position_rows = 3  # position_ids is [3, B, S]

    def image_features(self, batch: MultimodalBatch) -> torch.Tensor:
        out = self.model.model.get_image_features(batch.pixel_values, batch.image_grid_thw)
        return torch.stack(list(out.pooler_output))

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Without these, transformers 5.x silently falls back to 1-D positions.
        return (input_ids == self.image_token_id).int()

    def position_ids(self, batch: MultimodalBatch):
        ids = batch.input_ids
        if batch.image_grid_thw is None:
            pos = torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, ids.shape[0], -1).clone()
            return pos, torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long)
        pos, delta = self.model.model.get_rope_index(
            ids, self.mm_token_type_ids(ids), image_grid_thw=batch.image_grid_thw)
        return pos, ids.shape[1] + delta.view(-1)

    def decode_position_ids(self, next_position: torch.Tensor, step: int) -> torch.Tensor:
        return (next_position + step).view(1, -1, 1).expand(3, -1, 1)

    def hf_generate_kwargs(self, batch: MultimodalBatch) -> dict:
        kwargs = batch.hf_kwargs()
        kwargs["mm_token_type_ids"] = self.mm_token_type_ids(batch.input_ids)
        return kwargs

    def example_batch(self, batch_size, image, text_before, text_after, seed=0):
        gen = torch.Generator().manual_seed(seed)
        cfg = self.config
        pixel_values = grid = None
        count = 0
        if image is not None:
            h, w = image[0] // PATCH, image[1] // PATCH
            if h % MERGE or w % MERGE:
                raise ValueError(f"Qwen2.5-VL image sides must be multiples of {PATCH * MERGE} pixels, got {image}")
            t = cfg.vision_config.temporal_patch_size
            pixel_values = torch.randn(batch_size * h * w, 3 * t * PATCH * PATCH, generator=gen)
            grid = torch.tensor([[1, h, w]] * batch_size)
            count = h * w // (MERGE * MERGE)
        rows = []
        for _ in range(batch_size):
            before = torch.randint(*TEXT_ID_RANGE, (text_before,), generator=gen)
            after = torch.randint(*TEXT_ID_RANGE, (text_after,), generator=gen)
            if count:
                span = torch.tensor([cfg.vision_start_token_id] + [cfg.image_token_id] * count
                                    + [cfg.vision_end_token_id])
                rows.append(torch.cat([before, span, after]))
            else:
                rows.append(torch.cat([before, after]))
        return MultimodalBatch(torch.stack(rows), pixel_values=pixel_values, image_grid_thw=grid)
