"""random-checkpoint: a Hugging Face checkpoint with the release architecture and random weights.

Checked on the tiny models against transformers itself: the files load with the real classes, hold the
names `save_pretrained` writes, and are byte-identical to what the safetensors library writes.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoImageProcessor

from halfv_export.backbones import MODELS, TINY_MODELS, load_backbone
from halfv_export.backbones.random_checkpoint import (QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, checkpoint_config,
                                                      saved_tensors, write_checkpoint, write_random_checkpoint)
from halfv_export.backbones.registry import tiny_qwen_config
from halfv_export.cli import cli
from halfv_export.core.errors import UserError
from halfv_export.graphs.vision import preprocess_config

SMALL_SHARD = 300_000  # bytes: several shards for every tiny model


def read_tensors(folder) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in `folder`; a name in two files is an error."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for name in f.keys():
                assert name not in out, f"{name} written twice"
                out[name] = f.get_tensor(name)
    return out


def saved_by_transformers(model, folder) -> dict[str, torch.Tensor]:
    model.save_pretrained(folder)
    return read_tensors(folder)


def layer_indexes(names, pattern: str) -> set[int]:
    return {int(m.group(1)) for n in names if (m := re.search(pattern, n))}


@pytest.mark.parametrize("name", TINY_MODELS)
def test_checkpoint_loads_with_transformers_and_round_trips(name, tmp_path):
    written = write_random_checkpoint(name, tmp_path / "ckpt", dtype="bf16", shard_bytes=SMALL_SHARD)
    cls = MODELS[name].backbone.hf_class
    model, info = cls.from_pretrained(written.path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.bfloat16
    assert written.parameters == model.num_parameters()

    ours = read_tensors(written.path)
    # transformers' own save of the loaded model: same names, shapes, dtypes and values
    theirs = saved_by_transformers(model, tmp_path / "resaved")
    assert list(sorted(ours)) == list(sorted(theirs))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert written.nbytes == sum(t.numel() * t.element_size() for t in ours.values())

    # initialisation of a fresh model: norm scales 1, biases 0, other weights normal(0, initializer_range)
    norms = [k for k in ours if k.endswith("norm.weight") or k.endswith("ln_q.weight")]
    biases = [k for k in ours if k.endswith(".bias")]
    assert norms and biases
    assert all(bool((ours[k] == 1).all()) for k in norms)
    assert all(bool((ours[k] == 0).all()) for k in biases)
    embed = next(t for k, t in ours.items() if k.endswith("embed_tokens.weight")).float()
    assert abs(embed.mean().item()) < 1e-3 and embed.std().item() == pytest.approx(0.02, rel=0.02)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_names_shapes_and_dtypes_are_those_save_pretrained_writes(name, tmp_path):
    entry = MODELS[name]
    written = write_random_checkpoint(name, tmp_path / "ckpt", dtype="fp16")
    torch.manual_seed(0)
    real = entry.backbone.hf_class(entry.make_config()).to(torch.float16)
    theirs = saved_by_transformers(real, tmp_path / "real")
    ours = read_tensors(written.path)
    assert {k: (t.shape, t.dtype) for k, t in ours.items()} == {k: (t.shape, t.dtype) for k, t in theirs.items()}
    for file in ("config.json", "generation_config.json"):
        assert json.loads((written.path / file).read_text()) == json.loads((tmp_path / "real" / file).read_text())
    assert sorted(p.name for p in written.path.glob("*.safetensors")) == ["model.safetensors"]  # one file: no index
    assert not (written.path / "model.safetensors.index.json").exists()


def test_tied_embeddings_are_written_once(tmp_path):
    config = tiny_qwen_config()
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = True
    cls = MODELS["tiny-qwen2.5-vl"].backbone.hf_class
    written = write_checkpoint(config, cls, tmp_path / "ckpt", dtype="fp32", shard_bytes=SMALL_SHARD)
    ours = read_tensors(written.path)
    real = cls(config)
    assert set(ours) == set(saved_by_transformers(real, tmp_path / "real"))
    assert "lm_head.weight" not in ours and "model.embed_tokens.weight" in ours
    model, info = cls.from_pretrained(written.path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(model.lm_head.weight, ours["model.embed_tokens.weight"])
    assert written.parameters == sum(t.numel() for t in ours.values())


@pytest.mark.parametrize("name", TINY_MODELS)
def test_layer_and_vision_overrides_are_consistent(name, tmp_path):
    written = write_random_checkpoint(name, tmp_path / "ckpt", layers=2, vision_depth=1, dtype="fp16")
    config = AutoConfig.from_pretrained(written.path)
    names = list(read_tensors(written.path))
    text, vision = config.text_config, config.vision_config
    assert text.num_hidden_layers == 2
    assert getattr(text, "layer_types", None) is None or len(text.layer_types) == 2
    assert layer_indexes(names, r"^(?:model|language_model\.model)\.layers\.(\d+)\.") == {0, 1}
    if config.model_type == "qwen2_5_vl":
        assert vision.depth == 1 and vision.fullatt_block_indexes == [0]  # [1] named a block that is gone
        assert layer_indexes(names, r"^visual\.blocks\.(\d+)\.") == {0}
    else:
        assert vision.num_hidden_layers == 1
        assert layer_indexes(names, r"^vision_tower\..*encoder\.layers\.(\d+)\.") == {0}
        assert -(1 + 1) <= config.vision_feature_layer <= 1  # a hidden state that the 1-layer tower has
    assert config.dtype == torch.float16
    cls = MODELS[name].backbone.hf_class
    assert not cls.from_pretrained(written.path, output_loading_info=True)[1]["missing_keys"]


def test_release_configs_with_overrides_without_writing_weights():
    config = checkpoint_config("qwen2.5-vl-7b", layers=3, vision_depth=4, dtype="fp16")
    assert config.text_config.num_hidden_layers == 3 and config.text_config.layer_types == ["full_attention"] * 3
    assert config.vision_config.depth == 4 and config.vision_config.fullatt_block_indexes == [3]
    assert checkpoint_config("qwen2.5-vl-7b", vision_depth=20).vision_config.fullatt_block_indexes == [7, 15]
    specs, parameters = saved_tensors(config, MODELS["qwen2.5-vl-7b"].backbone.hf_class)  # meta: no memory
    names = [s.name for s in specs]
    assert layer_indexes(names, r"^model\.layers\.(\d+)\.") == {0, 1, 2}
    assert layer_indexes(names, r"^visual\.blocks\.(\d+)\.") == {0, 1, 2, 3}
    assert parameters == sum(s.numel for s in specs)
    llava = checkpoint_config("llava-1.5-7b", vision_depth=3)
    assert llava.vision_config.num_hidden_layers == 3 and llava.vision_feature_layer == -2
    # the 3B release ties lm_head to the embeddings: written once
    qwen3b = checkpoint_config("qwen2.5-vl-3b", layers=1, vision_depth=1)
    assert "lm_head.weight" not in {s.name for s in saved_tensors(qwen3b, MODELS["qwen2.5-vl-3b"].backbone.hf_class)[0]}


def test_same_seed_same_bytes_other_seed_other_values(tmp_path):
    a = write_random_checkpoint("tiny-llava", tmp_path / "a", seed=3, shard_bytes=SMALL_SHARD)
    b = write_random_checkpoint("tiny-llava", tmp_path / "b", seed=3, shard_bytes=SMALL_SHARD)
    c = write_random_checkpoint("tiny-llava", tmp_path / "c", seed=4, shard_bytes=SMALL_SHARD)
    files = sorted(p.name for p in a.path.iterdir())
    assert files == sorted(p.name for p in b.path.iterdir())
    assert all((a.path / f).read_bytes() == (b.path / f).read_bytes() for f in files)
    ta, tc = read_tensors(a.path), read_tensors(c.path)
    weight = "language_model.model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(ta[weight], tc[weight])
    # a tensor's values depend on the seed and its name only, not on how the files are cut
    one_file = read_tensors(write_random_checkpoint("tiny-llava", tmp_path / "d", seed=3).path)
    assert set(one_file) == set(ta) and all(torch.equal(one_file[k], ta[k]) for k in ta)


def test_small_shards_make_a_valid_index(tmp_path):
    written = write_random_checkpoint("tiny-qwen2.5-vl", tmp_path / "ckpt", dtype="fp32", shard_bytes=SMALL_SHARD)
    shards = sorted(written.path.glob("*.safetensors"))
    n = len(shards)
    assert n == written.shards >= 3
    assert [p.name for p in shards] == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((written.path / "model.safetensors.index.json").read_text())
    sizes = {}
    for path in shards:
        with safe_open(path, "pt") as f:
            for name in f.keys():
                assert index["weight_map"][name] == path.name
                t = f.get_tensor(name)
                sizes[name] = t.numel() * t.element_size()
            # a shard over the limit holds one tensor that alone is over it
            in_file = [sizes[k] for k in f.keys()]
            assert sum(in_file) <= SMALL_SHARD or len(in_file) == 1
    assert set(index["weight_map"]) == set(sizes)
    assert index["metadata"] == {"total_size": sum(sizes.values()), "total_parameters": written.parameters}


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_safetensors_files_are_what_the_library_writes(dtype, tmp_path):
    written = write_random_checkpoint("tiny-llava-next", tmp_path / "ckpt", dtype=dtype, shard_bytes=SMALL_SHARD)
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    for path in sorted(written.path.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        assert metadata == {"format": "pt"} and {t.dtype for t in tensors.values()} == {expected}
        save_file(tensors, tmp_path / "library.safetensors", metadata=metadata)
        assert (tmp_path / "library.safetensors").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("name", TINY_MODELS)
def test_processor_config_is_read_as_the_release(name, tmp_path):
    written = write_random_checkpoint(name, tmp_path / "ckpt")
    processor = AutoImageProcessor.from_pretrained(written.path)
    settings = preprocess_config(load_backbone(name, model_path=written.path))  # what export puts in the manifest
    config = MODELS[name].make_config()
    assert settings["image_mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert settings["image_std"] == [0.26862954, 0.26130258, 0.27577711]
    assert settings["resample"] == "bicubic"
    generation = json.loads((written.path / "generation_config.json").read_text())
    text = config.text_config
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (text.bos_token_id, text.eos_token_id)
    if config.model_type == "qwen2_5_vl":
        assert type(processor).__name__.startswith("Qwen2VLImageProcessor")
        assert (QWEN_MIN_PIXELS, QWEN_MAX_PIXELS) == (3136, 12845056)  # the release's
        assert (settings["min_pixels"], settings["max_pixels"]) == (3136, 12845056)
        assert (processor.size["shortest_edge"], processor.size["longest_edge"]) == (3136, 12845056)
        assert processor.merge_size == 2 and processor.temporal_patch_size == 2 and processor.patch_size == 14
    else:
        side = config.vision_config.image_size
        assert settings["shortest_edge"] == side
        assert processor.crop_size["height"] == processor.crop_size["width"] == side
        if config.model_type == "llava_next":
            assert type(processor).__name__.startswith("LlavaNextImageProcessor")
            assert [list(p) for p in processor.image_grid_pinpoints] == [list(p) for p in config.image_grid_pinpoints]
        else:
            assert type(processor).__name__.startswith("CLIPImageProcessor")


def test_existing_folder_is_never_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="exists and is not empty"):
        write_random_checkpoint("tiny-llava", out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        write_random_checkpoint("tiny-llava", tmp_path / "a-file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_random_checkpoint("tiny-llava", empty).path / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty", "mine"]  # no temporary left


def test_a_folder_filled_while_writing_is_not_replaced(tmp_path, monkeypatch):
    """The final rename replaces only an empty folder: a file that appeared meanwhile survives."""
    import halfv_export.backbones.random_checkpoint as rc

    out = tmp_path / "ckpt"
    real_plan = rc.plan_shards

    def plan_then_someone_writes(*args, **kwargs):
        out.mkdir()
        (out / "theirs.txt").write_text("data")
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(rc, "plan_shards", plan_then_someone_writes)
    with pytest.raises(UserError, match="was filled by something else"):
        write_random_checkpoint("tiny-llava", out)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_cli_writes_a_checkpoint_and_reports_progress(tmp_path):
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(cli, ["random-checkpoint", "--model", "tiny-qwen2.5-vl", "--out", str(out),
                                      "--layers", "3", "--vision-depth", "1", "--dtype", "fp16", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert f"checkpoint: {out}" in result.stdout
    assert "[random-checkpoint tiny-qwen2.5-vl] done:" in result.stderr
    config = AutoConfig.from_pretrained(out)
    assert (config.text_config.num_hidden_layers, config.vision_config.depth) == (3, 1)
    assert {t.dtype for t in read_tensors(out).values()} == {torch.float16}


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny-llava", "--layers", "0"], "error: --layers 0: must be a positive integer"),
    (["--model", "tiny-llava", "--vision-depth", "-1"], "error: --vision-depth -1: must be a positive integer"),
    (["--model", "gpt-vision"], "error: unknown model 'gpt-vision'"),
    (["--model", "tiny-llava", "--seed", "-2"], "error: --seed -2: must be an integer >= 0"),
])
def test_cli_bad_values_are_one_error_line(args, message, tmp_path):
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(cli, ["random-checkpoint", "--out", str(out), *args])
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert not out.exists()
