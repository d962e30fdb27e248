"""Per-architecture code: every difference between Qwen2.5-VL, LLaVA-1.5 and LLaVA-NeXT lives here."""

from .base import Backbone, DecoderInputs, MultimodalBatch
from .registry import MODELS, TINY_MODELS, get_entry, load_backbone, models

__all__ = ["Backbone", "DecoderInputs", "MultimodalBatch", "MODELS", "TINY_MODELS", "get_entry", "load_backbone",
           "models"]
