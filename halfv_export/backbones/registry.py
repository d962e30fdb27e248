"""Known checkpoints and the built-in tiny models: one table drives the CLI, loading and the tests.

Other packages add models through the `halfv_export.models` entry-point group: each entry point names a
callable returning ModelEntry objects (the shapes zoo in zoo/ registers its trained models this way, so the
arrow points from the zoo to this registry, never back).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig, MistralConfig,
                          Qwen2_5_VLConfig)

from ..core.errors import UserError
from ..core.profile import PROFILES_DIR, Profile
from .base import Backbone
from .llava import LlavaBackbone, LlavaNextBackbone
from .qwen2_5_vl import Qwen25VLBackbone

TINY_SEED = 0


def _qwen_config(text: dict, vision: dict, **ids) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)


# Qwen2.5-VL 3B and 7B: same vision tower (only its output width differs) and special token ids.
def _qwen_release_vision(out_hidden_size: int) -> dict:
    return dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
                temporal_patch_size=2, window_size=112, out_hidden_size=out_hidden_size,
                fullatt_block_indexes=[7, 15, 23, 31])


QWEN_RELEASE_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                        vision_end_token_id=151653)


def tiny_qwen_config() -> Qwen2_5_VLConfig:
    return _qwen_config(
        dict(hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096, rms_norm_eps=1e-6,
             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
             bos_token_id=1, eos_token_id=2, pad_token_id=0),
        dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=14, spatial_merge_size=2,
             temporal_patch_size=2, window_size=56, out_hidden_size=128, fullatt_block_indexes=[1]),
        image_token_id=1000, video_token_id=1001, vision_start_token_id=1002, vision_end_token_id=1003,
    )


def qwen7b_config() -> Qwen2_5_VLConfig:
    return _qwen_config(
        dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
             num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
             bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=False),
        _qwen_release_vision(3584), **QWEN_RELEASE_IDS,
    )


def qwen3b_config() -> Qwen2_5_VLConfig:
    return _qwen_config(
        dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
             num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6,
             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
             bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=True),
        _qwen_release_vision(2048), **QWEN_RELEASE_IDS,
    )


def _clip(**kw) -> CLIPVisionConfig:
    return CLIPVisionConfig(**kw)


def tiny_llava_config() -> LlavaConfig:
    return LlavaConfig(
        vision_config=_clip(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            image_size=56, patch_size=14, projection_dim=64),
        text_config=LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096,
                                bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_index=1000, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )


def tiny_llava_next_config() -> LlavaNextConfig:
    return LlavaNextConfig(
        vision_config=_clip(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            image_size=28, patch_size=14, projection_dim=64),
        text_config=MistralConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096,
                                  sliding_window=None, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_index=1000, vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_grid_pinpoints=[[28, 56], [56, 28], [56, 56], [28, 84], [84, 28]],
    )


def llava15_7b_config() -> LlavaConfig:
    return LlavaConfig(
        vision_config=_clip(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=336, patch_size=14, projection_dim=768),
        text_config=LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                                max_position_embeddings=4096, rms_norm_eps=1e-5),
        image_token_index=32000, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )


def llava_next_7b_config() -> LlavaNextConfig:
    return LlavaNextConfig(
        vision_config=_clip(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=336, patch_size=14, projection_dim=768),
        text_config=MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                  num_attention_heads=32, num_key_value_heads=8, vocab_size=32064,
                                  max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=None,
                                  rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        image_token_index=32000, vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    )


@dataclass(frozen=True)
class ModelEntry:
    name: str
    backbone: type[Backbone]
    make_config: Callable
    profile: str  # shipped profile name: PROFILE_DIR/<profile>.json
    description: str
    hf_repo: str | None = None  # None: built-in tiny model, always random-initialised from a fixed seed
    weights: Path | None = None  # committed weights folder (zoo models trained in this repository)
    profile_dir: Path = PROFILES_DIR  # where the shipped profile lives (a plugin ships its own)

    @property
    def tiny(self) -> bool:
        return self.hf_repo is None and self.weights is None

    @property
    def profile_path(self) -> Path:
        return self.profile_dir / f"{self.profile}.json"

    def shipped_profile(self) -> Profile:
        return Profile.load(self.profile_path)


MODELS = {e.name: e for e in [
    ModelEntry("qwen2.5-vl-7b", Qwen25VLBackbone, qwen7b_config, "qwen2.5-vl-7b",
               "Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
    ModelEntry("qwen2.5-vl-3b", Qwen25VLBackbone, qwen3b_config, "qwen2.5-vl-3b",
               "Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"),
    ModelEntry("llava-1.5-7b", LlavaBackbone, llava15_7b_config, "llava-1.5-7b",
               "LLaVA-1.5-7B (Vicuna)", "llava-hf/llava-1.5-7b-hf"),
    ModelEntry("llava-next-7b", LlavaNextBackbone, llava_next_7b_config, "llava-next-7b",
               "LLaVA-NeXT-7B (Mistral)", "llava-hf/llava-v1.6-mistral-7b-hf"),
    ModelEntry("tiny-qwen2.5-vl", Qwen25VLBackbone, tiny_qwen_config, "tiny-qwen2.5-vl",
               "built-in tiny Qwen2.5-VL (random, seed 0)"),
    ModelEntry("tiny-llava", LlavaBackbone, tiny_llava_config, "tiny-llava",
               "built-in tiny LLaVA-1.5 (random, seed 0)"),
    ModelEntry("tiny-llava-next", LlavaNextBackbone, tiny_llava_next_config, "tiny-llava-next",
               "built-in tiny LLaVA-NeXT (random, seed 0)"),
]}

TINY_MODELS = [name for name, entry in MODELS.items() if entry.tiny]
ENTRY_POINT_GROUP = "halfv_export.models"


@functools.cache
def models() -> dict[str, ModelEntry]:
    """The built-in MODELS and every installed plugin's entries (entry-point group ENTRY_POINT_GROUP)."""
    table = dict(MODELS)
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        for entry in point.load()():
            if entry.name in table:
                raise UserError(f"model {entry.name!r} from plugin {point.value} is already registered")
            table[entry.name] = entry
    return table


def get_entry(name: str) -> ModelEntry:
    table = models()
    try:
        return table[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; known: {', '.join(table)}") from None


def hf_cache_dir() -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE
    return Path(HF_HUB_CACHE)


def _find_local_weights(entry: ModelEntry) -> str:
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(entry.hf_repo, local_files_only=True)
    except Exception:
        raise UserError(
            f"no local weights for {entry.name}: not in the Hugging Face cache ({hf_cache_dir()}/"
            f"models--{entry.hf_repo.replace('/', '--')}); pass --model-path DIR (a local checkpoint with "
            f"safetensors) or --random-init") from None


def build_random(entry: ModelEntry, config=None, dtype=torch.float32, seed: int = TINY_SEED) -> Backbone:
    """The architecture with random weights from a fixed seed (tiny models, structure and speed work)."""
    config = config if config is not None else entry.make_config()
    torch.manual_seed(seed)
    model = entry.backbone.hf_class(config).to(dtype)
    return entry.backbone(model)


def checkpoint_folder(name: str, model_path: str | os.PathLike | None = None, random_init: bool = False) -> Path | None:
    """The checkpoint folder `name` loads from (checked to look like one), or None for random weights."""
    entry = get_entry(name)
    if model_path is None and (entry.tiny or random_init):
        return None
    if model_path is None and entry.weights is not None:
        if not entry.weights.is_dir():
            raise UserError(f"{entry.name} has no trained weights at {entry.weights}: run `halfv-export zoo train "
                            f"{entry.name}` or pass --random-init")
        model_path = entry.weights
    path = Path(model_path) if model_path is not None else Path(_find_local_weights(entry))
    if not path.is_dir():
        raise UserError(f"--model-path {path} is not a directory")
    if not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    if not any(path.glob("*.safetensors")):
        raise UserError(f"{path} has no *.safetensors weights")
    quantized = _quantization_method(path / "config.json")
    if quantized:
        raise UserError(f"{path} holds already quantized weights ({quantized}): halfv-export reads float "
                        f"checkpoints (export --weights int8/int4 quantizes them)")
    return path


def _quantization_method(config_json: Path) -> str | None:
    """The quantization a checkpoint's config declares (AWQ, GPTQ, bitsandbytes, ...), if any."""
    import json

    try:
        config = json.loads(config_json.read_text())
    except (OSError, ValueError):
        return None  # an unreadable config is reported where it is parsed
    declared = config.get("quantization_config") if isinstance(config, dict) else None
    if not declared:
        return None
    return str(declared.get("quant_method", "quantized")) if isinstance(declared, dict) else "quantized"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load_backbone(name: str, model_path: str | os.PathLike | None = None, random_init: bool = False,
                  dtype=torch.float32) -> Backbone:
    """The model with all its weights in memory (tiny and zoo models, calibration, evaluation)."""
    entry = get_entry(name)
    path = checkpoint_folder(name, model_path, random_init)
    if path is None:
        return build_random(entry, dtype=dtype)
    try:
        model = entry.backbone.hf_class.from_pretrained(path, dtype=dtype, local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for a broken checkpoint
        raise UserError(f"could not load checkpoint {path}: {_first_line(exc)}") from None
    expected = entry.make_config().model_type
    if model.config.model_type != expected:
        raise UserError(f"{path} is a {model.config.model_type} checkpoint, not {expected} ({entry.name})")
    return entry.backbone(model)


def open_backbone(name: str, model_path: str | os.PathLike | None = None, random_init: bool = False,
                  dtype=torch.float32):
    """(backbone, weights) without loading a checkpoint's weights: a meta-device skeleton and a
    CheckpointWeights that reads tensors one at a time. Random models are built in memory (weights None)."""
    from transformers import AutoConfig

    from .checkpoint import CheckpointWeights, skeleton

    entry = get_entry(name)
    path = checkpoint_folder(name, model_path, random_init)
    if path is None:
        return build_random(entry, dtype=dtype), None
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise UserError(f"could not read {path / 'config.json'}: {_first_line(exc)}") from None
    expected = entry.make_config().model_type
    if config.model_type != expected:
        raise UserError(f"{path} is a {config.model_type} checkpoint, not {expected} ({entry.name})")
    bb = skeleton(entry, config, dtype)
    return bb, CheckpointWeights(path, bb.model)


def reference_backbone(name: str, model_path: str | os.PathLike | None = None, random_init: bool = False,
                       quantized=None, vision: bool = True) -> Backbone:
    """The fp32 PyTorch reference for `check` and `calibrate`: a checkpoint's decoder layers are streamed
    from its safetensors one or two at a time (backbones.checkpoint.stream_layers); random models in memory.

    `quantized`: a source whose `tensor(key)` answers the dequantized linear weights of a quantized
    graphs folder for the keys it contains (graphs/quantize.py DequantizedWeights over these weights):
    the reference then computes with the same weights as the graphs. `vision=False` leaves a checkpoint's
    vision tower unloaded (for callers that feed visual embeddings themselves, as `check` does)."""
    from .checkpoint import ModelWeights, linear_weight_keys, materialize, stream_layers

    bb, weights = open_backbone(name, model_path, random_init)
    if quantized is None:
        return stream_layers(bb, weights, vision=vision) if weights is not None else bb
    source = quantized(weights if weights is not None else ModelWeights(bb.model))
    if weights is not None:
        bb = stream_layers(bb, source, vision=vision)
    streamed = bb.layer_source.keys if bb.layer_source is not None else []
    in_layers = {k for keys in streamed for k in keys}
    for name_, canonical in linear_weight_keys(bb.model).items():
        if canonical in source and name_ not in in_layers:  # a tied lm_head reads its own (quantized) copy
            with torch.no_grad():
                materialize(bb.model, [name_], _Renamed(source, {name_: canonical}), torch.float32)
    return bb


class _Renamed:
    """A weight source that answers `key` with another key's tensor."""

    def __init__(self, source, names: dict):
        self.source, self.names = source, names

    def tensor(self, key, dtype):
        return self.source.tensor(self.names.get(key, key), dtype)
