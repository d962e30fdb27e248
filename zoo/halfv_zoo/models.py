"""Configs of the zoo models: tiny versions of the real architectures, sized to train on 2 CPU cores.

Text side of both: 6 layers, hidden 128, MLP 256, 4 heads / 2 kv heads, vocab 1024 (the zoo word
tokenizer uses ids 0..39, zoo/tokenizer.py; image ids 1000-1003 as in the built-in tiny models), untied
input and output embeddings.
Images are 336x336 px for Qwen (24x24 patches of 14 px, 2x2 merge -> 144 visual tokens) and 168x168 px
for LLaVA (12x12 patches of 14 px -> 144 visual tokens), so both decoders see the same number of
visual tokens.
"""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, Qwen2_5_VLConfig

WEIGHTS_DIR = Path(__file__).parent / "weights"
PROFILES_DIR = Path(__file__).parent / "profiles"
QWEN_SIDE = 336
LLAVA_SIDE = 168
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1024, max_position_embeddings=2048, bos_token_id=1,
            eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
# Text embeddings start at unit scale (train.build_model), not transformers' 0.02: the visual tokens arrive with
# rms ~10, and 0.02-scale word embeddings were wiped out by the first layer's update (the decoder could not
# tell "left or right?" from "top or bottom?"). Untied, so the output head keeps its own scale.
EMBEDDING_STD = 1.0
# M-RoPE gives its rotary frequency pairs to (t, h, w) in contiguous chunks, fastest first, so the column (w)
# gets the slowest pairs. With 16 pairs (head dim 32), the real split scaled down ([4, 6, 6]) turned 12 columns
# by at most 0.04 rad: the decoder could not tell left from right (0.54 on val, chance). [1, 3, 12] gives rows
# pairs turning 0.18-0.56 rad per row and columns pairs from 0.1 rad per column down. (Alone it did not lift
# left/right on the shipped Qwen, 0.47 on test: the phases are hard to read 10-60 tokens away; README.)
MROPE_SECTION = [1, 3, 12]


def shapes_qwen_config() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(**TEXT, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": MROPE_SECTION}),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=128,
                           fullatt_block_indexes=[1]),
        image_token_id=1000, video_token_id=1001, vision_start_token_id=1002, vision_end_token_id=1003,
        tie_word_embeddings=False)


def shapes_llava_config() -> LlavaConfig:
    return LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=LLAVA_SIDE, patch_size=14,
                                       projection_dim=64),
        text_config=LlamaConfig(**TEXT, rms_norm_eps=1e-6),
        image_token_index=1000, vision_feature_layer=-1, vision_feature_select_strategy="default",
        tie_word_embeddings=False)


ZOO = {"shapes-qwen2.5-vl": (shapes_qwen_config, QWEN_SIDE), "shapes-llava": (shapes_llava_config, LLAVA_SIDE)}


def image_side(name: str) -> int:
    return ZOO[name][1]


def tokens_per_side(name: str) -> int:
    """Visual tokens along one image side: patches per side over the merge (Qwen 2x2; CLIP has no merge)."""
    vision = ZOO[name][0]().vision_config
    return image_side(name) // vision.patch_size // getattr(vision, "spatial_merge_size", 1)


def visual_tokens(name: str) -> int:
    return tokens_per_side(name) ** 2


def weights_dir(name: str) -> Path:
    return WEIGHTS_DIR / name


def registry_entries() -> list:
    """The zoo's models for halfv_export's registry (entry point `halfv_export.models`, zoo/pyproject.toml)."""
    from halfv_export.backbones.llava import LlavaBackbone
    from halfv_export.backbones.qwen2_5_vl import Qwen25VLBackbone
    from halfv_export.backbones.registry import ModelEntry

    return [
        ModelEntry("shapes-qwen2.5-vl", Qwen25VLBackbone, shapes_qwen_config, "shapes-qwen2.5-vl",
                   "tiny Qwen2.5-VL trained on shapes VQA (halfv-zoo)", weights=weights_dir("shapes-qwen2.5-vl"),
                   profile_dir=PROFILES_DIR),
        ModelEntry("shapes-llava", LlavaBackbone, shapes_llava_config, "shapes-llava",
                   "tiny LLaVA-1.5 (Llama) trained on shapes VQA (halfv-zoo)", weights=weights_dir("shapes-llava"),
                   profile_dir=PROFILES_DIR),
    ]
