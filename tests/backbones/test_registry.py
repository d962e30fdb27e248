"""Loading: tiny models from configs, local checkpoints, and one-line errors for everything else."""

from __future__ import annotations

import pytest
import torch

from halfv_export.backbones import MODELS, TINY_MODELS, load_backbone, models
from halfv_export.core.errors import UserError


def test_registry_lists_the_known_backbones():
    assert set(MODELS) == {"qwen2.5-vl-7b", "qwen2.5-vl-3b", "llava-1.5-7b", "llava-next-7b",
                           "tiny-qwen2.5-vl", "tiny-llava", "tiny-llava-next"}
    assert set(TINY_MODELS) == {"tiny-qwen2.5-vl", "tiny-llava", "tiny-llava-next"}


@pytest.mark.zoo
def test_the_zoo_registers_its_models_through_the_entry_point():
    """halfv-zoo (zoo/) adds its trained models to the registry; the product itself names none of them."""
    zoo = {name: entry for name, entry in models().items() if name not in MODELS}
    assert set(zoo) == {"shapes-qwen2.5-vl", "shapes-llava"}
    for entry in zoo.values():
        assert entry.weights.is_dir() and entry.shipped_profile().model == entry.name


def test_tiny_models_are_small_and_deterministic():
    for name in TINY_MODELS:
        a, b = load_backbone(name), load_backbone(name)
        params = sum(p.numel() for p in a.model.parameters())
        assert 100_000 <= params <= 5_000_000
        assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters()))


def test_real_configs_match_the_published_architectures():
    text = MODELS["qwen2.5-vl-7b"].make_config().text_config
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (28, 3584, 18944)
    assert MODELS["llava-1.5-7b"].make_config().text_config.num_hidden_layers == 32
    assert MODELS["llava-next-7b"].make_config().text_config.model_type == "mistral"


def test_unknown_model_is_one_line_error():
    with pytest.raises(UserError, match="unknown model 'qwen9'"):
        load_backbone("qwen9")


def test_missing_weights_say_where_they_were_looked_for(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("halfv_export.backbones.registry.hf_cache_dir", lambda: tmp_path)
    import huggingface_hub.constants as hub_constants
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="no local weights for qwen2.5-vl-7b.*--model-path"):
        load_backbone("qwen2.5-vl-7b")


def test_model_path_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        load_backbone("tiny-llava", model_path=tmp_path / "nope")
    with pytest.raises(UserError, match="no config.json"):
        load_backbone("tiny-llava", model_path=tmp_path)


def test_checkpoint_round_trip_and_corrupt_weights(tmp_path):
    tiny = load_backbone("tiny-llava")
    tiny.model.save_pretrained(tmp_path / "ckpt")
    loaded = load_backbone("tiny-llava", model_path=tmp_path / "ckpt")
    assert all(torch.equal(x, y) for x, y in zip(tiny.model.parameters(), loaded.model.parameters()))
    with pytest.raises(UserError, match="not qwen2_5_vl"):
        load_backbone("tiny-qwen2.5-vl", model_path=tmp_path / "ckpt")
    weights = next((tmp_path / "ckpt").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="could not load checkpoint"):
        load_backbone("tiny-llava", model_path=tmp_path / "ckpt")
