"""LLaVA-1.5 (Llama/Vicuna text) and LLaVA-NeXT (Mistral text, anyres tiles + image_newline): 1-D positions."""

from __future__ import annotations

import torch
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from .base import Backbone, MultimodalBatch

TEXT_ID_RANGE = (10, 900)


class LlavaBackbone(Backbone):
    family = "llava"
    hf_class = LlavaForConditionalGeneration
    position_rows = 1  # position_ids is [B, S]

    def _feature_kwargs(self) -> dict:
        return dict(vision_feature_layer=self.config.vision_feature_layer,
                    vision_feature_select_strategy=self.config.vision_feature_select_strategy)

    def image_features(self, batch: MultimodalBatch) -> torch.Tensor:
        out = self.model.model.get_image_features(batch.pixel_values, **self._feature_kwargs())
        return torch.stack(list(out.pooler_output))

    def position_ids(self, batch: MultimodalBatch):
        b, s = batch.input_ids.shape
        return torch.arange(s).view(1, -1).expand(b, -1).clone(), torch.full((b,), s, dtype=torch.long)

    def decode_position_ids(self, next_position: torch.Tensor, step: int) -> torch.Tensor:
        return (next_position + step).view(-1, 1)

    def hf_generate_kwargs(self, batch: MultimodalBatch) -> dict:
        return batch.hf_kwargs()

    def example_pixels(self, batch_size: int, image, gen) -> tuple[torch.Tensor, torch.Tensor | None]:
        size = self.config.vision_config.image_size
        return torch.randn(batch_size, 3, size, size, generator=gen), None

    def example_batch(self, batch_size, image, text_before, text_after, seed=0):
        gen = torch.Generator().manual_seed(seed)
        pixel_values = sizes = None
        count = 0
        if image is not None:
            pixel_values, sizes = self.example_pixels(batch_size, image, gen)
            probe = MultimodalBatch(torch.zeros(batch_size, 1, dtype=torch.long), pixel_values, image_sizes=sizes)
            with torch.no_grad():
                count = self.image_features(probe).shape[1]
        rows = []
        for _ in range(batch_size):
            before = torch.randint(*TEXT_ID_RANGE, (text_before,), generator=gen)
            after = torch.randint(*TEXT_ID_RANGE, (text_after,), generator=gen)
            rows.append(torch.cat([before, torch.full((count,), self.image_token_id), after]))
        return MultimodalBatch(torch.stack(rows), pixel_values=pixel_values, image_sizes=sizes)


class LlavaNextBackbone(LlavaBackbone):
    family = "llava_next"
    hf_class = LlavaNextForConditionalGeneration

    def image_features(self, batch: MultimodalBatch) -> torch.Tensor:
        out = self.model.model.get_image_features(batch.pixel_values, batch.image_sizes, **self._feature_kwargs())
        return torch.stack(list(out.pooler_output))

    def example_pixels(self, batch_size, image, gen):
        """Random anyres tiles for an image of (height, width) pixels: base tile plus the grid tiles."""
        tile = self.config.vision_config.image_size
        tiles = image_size_to_num_patches(list(image), self.config.image_grid_pinpoints, tile)
        pixels = torch.randn(batch_size, tiles, 3, tile, tile, generator=gen)
        return pixels, torch.tensor([list(image)] * batch_size)
