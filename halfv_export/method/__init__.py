"""The PyTorch reference of HalfV: selection, the decoder loop with IVR/SSR, generation, entropy."""

from .decoder import PrefillResult, decode_step_tensors, generate, prefill, prefill_tensors
from ..core.plan import PruningPlan

__all__ = ["PrefillResult", "PruningPlan", "decode_step_tensors", "generate", "prefill", "prefill_tensors"]
