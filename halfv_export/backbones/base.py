"""What every backbone provides to the HalfV decoder loop, the exporter and calibration.

A backbone wraps one transformers model. The decoder loop only touches the pieces named here; each
family module overrides what differs (positions, vision features, module paths).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MultimodalBatch:
    """B requests of equal length, one image each (or none: text-only).

    input_ids holds the image placeholder tokens already expanded to one per visual token.
    """

    input_ids: torch.Tensor  # [B, S] long
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None  # Qwen2.5-VL: [B, 3]
    image_sizes: torch.Tensor | None = None  # LLaVA-NeXT: [B, 2] (height, width)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    def hf_kwargs(self) -> dict:
        """Keyword arguments for the transformers model's own forward/generate."""
        out = {"input_ids": self.input_ids}
        for name in ("pixel_values", "image_grid_thw", "image_sizes"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass
class DecoderInputs:
    """What the decoder loop consumes: embeddings with the visual span, and positions."""

    embeds: torch.Tensor  # [B, S, D]
    position_ids: torch.Tensor  # Qwen: [3, B, S]; LLaVA: [B, S]
    visual_start: int
    visual_count: int  # N; 0 for a text-only request
    next_position: torch.Tensor  # [B] position of the first generated token (continues the UNPRUNED sequence)


class Backbone:
    """Shared accessors; subclasses set `family` and implement the per-architecture methods."""

    family: str = ""
    hf_class = None  # transformers model class

    def __init__(self, model):
        self.model = model.eval()
        self.layer_source = None  # backbones.checkpoint.LayerStream: layers loaded one at a time

    # -- module paths (transformers 5.x layout) --------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def text_config(self):
        return self.model.config.text_config

    @property
    def text_model(self):
        return self.model.model.language_model

    @property
    def layers(self):
        return self.layer_source if self.layer_source is not None else self.text_model.layers

    @property
    def final_norm(self):
        return self.text_model.norm

    @property
    def lm_head(self):
        return self.model.lm_head

    @property
    def embed_tokens(self):
        return self.text_model.embed_tokens

    @property
    def num_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def num_heads(self) -> int:
        return self.text_config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return self.text_config.num_key_value_heads

    @property
    def head_dim(self) -> int:
        return getattr(self.text_config, "head_dim", None) or self.hidden_size // self.num_heads

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id

    # -- per-architecture ------------------------------------------------------------------------
    def rotary(self, position_ids: torch.Tensor, like: torch.Tensor):
        """cos, sin of shape [B, S, head_dim] for the model's own position format."""
        return self.text_model.rotary_emb(like, position_ids)

    def image_features(self, batch: MultimodalBatch) -> torch.Tensor:
        """Projected visual tokens [B, N, D] as the LLM sees them."""
        raise NotImplementedError

    def position_ids(self, batch: MultimodalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(position_ids for the prompt, next_position [B])."""
        raise NotImplementedError

    def decode_position_ids(self, next_position: torch.Tensor, step: int) -> torch.Tensor:
        """Positions of the token generated at `step` (0-based) after the prompt."""
        raise NotImplementedError

    def example_batch(self, batch_size: int, image: tuple[int, int] | None, text_before: int,
                      text_after: int, seed: int = 0) -> MultimodalBatch:
        """A random request of the given shape (pixels random, ids random text), for tests and benchmarks."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    def visual_span(self, input_ids: torch.Tensor) -> tuple[int, int]:
        """(start, count) of the image placeholder span, identical for every row of the batch."""
        is_image = input_ids == self.image_token_id
        counts = is_image.sum(dim=1)
        if counts.max() == 0:
            return 0, 0
        if not bool((counts == counts[0]).all()):
            raise ValueError("every request of a batch needs the same number of visual tokens")
        starts = is_image.int().argmax(dim=1)
        if not bool((starts == starts[0]).all()):
            raise ValueError("every request of a batch needs its visual tokens at the same place")
        start, count = int(starts[0]), int(counts[0])
        if not bool(is_image[:, start:start + count].all()):
            raise ValueError("the visual tokens of a request must be one contiguous span")
        return start, count

    @torch.no_grad()
    def prepare(self, batch: MultimodalBatch) -> DecoderInputs:
        """Embeddings with image features scattered in, positions, and the visual span."""
        embeds = self.embed_tokens(batch.input_ids)
        start, count = self.visual_span(batch.input_ids)
        if count:
            feats = self.image_features(batch).to(embeds.dtype)
            if feats.shape[:2] != (batch.batch_size, count):
                raise ValueError(f"image gives {feats.shape[1]} visual tokens, prompt has {count} placeholders")
            embeds = embeds.clone()
            embeds[:, start:start + count] = feats
        position_ids, next_position = self.position_ids(batch)
        return DecoderInputs(embeds, position_ids, start, count, next_position)
