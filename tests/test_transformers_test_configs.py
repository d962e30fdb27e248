"""Checkpoints nobody here configured: transformers' own test-suite configurations of the three families.

Their ids are unlike the release models' and the tiny ones here: 99 token ids, image token 4 (Qwen2.5-VL, with
bos 0, eos 1, pad 2, vision start 3, video 5 and the release's vision end 151653, outside the vocabulary) or 0
(LLaVA, LLaVA-NeXT, where it is also the pad id). Sizes as in those tests, except 4 decoder layers (calibration
needs 3) and, to cover what the release models do not, head_dim 12 and 10 (not powers of two) and as many
key/value heads as query heads in the two LLaVA families. No checkpoint has a tokenizer.json.
"""

from __future__ import annotations

import traceback

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaNextConfig, LlavaNextForConditionalGeneration, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration)

from halfv_export.backbones import load_backbone
from halfv_export.calibration.data import make_batch, synthetic_image, tokenizer_for
from halfv_export.cli import cli
from halfv_export.core.errors import UserError
from halfv_export.parity import Case, RequestMaker
from halfv_export.runtime.text import ByteTokenizer, special_token_ids


def qwen_config() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(hidden_size=48, intermediate_size=37, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=99, max_position_embeddings=512, hidden_act="silu",
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]},
                         bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=True),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=32, num_heads=4, out_hidden_size=48,
                           patch_size=14, spatial_merge_size=1, temporal_patch_size=2, hidden_act="silu"),
        vision_start_token_id=3, image_token_id=4, video_token_id=5, tie_word_embeddings=True)


def llava_config() -> LlavaConfig:
    return LlavaConfig(
        text_config=LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=4, intermediate_size=37, hidden_act="gelu",
                                max_position_embeddings=512, pad_token_id=0),
        vision_config=CLIPVisionConfig(image_size=30, patch_size=2, hidden_size=32, projection_dim=32,
                                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
        image_token_index=0, projector_hidden_act="gelu", vision_feature_select_strategy="default",
        vision_feature_layer=-1)


def llava_next_config() -> LlavaNextConfig:
    return LlavaNextConfig(
        text_config=LlamaConfig(vocab_size=99, hidden_size=40, num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=4, intermediate_size=37, hidden_act="gelu",
                                max_position_embeddings=580, pad_token_id=0),
        vision_config=CLIPVisionConfig(image_size=16, patch_size=4, hidden_size=32, projection_dim=32,
                                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
        image_token_index=0, projector_hidden_act="gelu", vision_feature_select_strategy="default",
        vision_feature_layer=-1, image_grid_pinpoints=[[32, 32]])


# family -> (registry name for --model, transformers class, config)
FAMILIES = {
    "qwen2_5_vl": ("tiny-qwen2.5-vl", Qwen2_5_VLForConditionalGeneration, qwen_config),
    "llava": ("tiny-llava", LlavaForConditionalGeneration, llava_config),
    "llava_next": ("tiny-llava-next", LlavaNextForConditionalGeneration, llava_next_config),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> a checkpoint folder as save_pretrained writes it (config.json + model.safetensors)."""
    root = tmp_path_factory.mktemp("transformers-test-configs")
    out = {}
    for family, (_, cls, config) in FAMILIES.items():
        torch.manual_seed(0)
        cls(config()).eval().save_pretrained(root / family)
        assert (root / family / "model.safetensors").is_file() and not (root / family / "tokenizer.json").exists()
        out[family] = root / family
    return out


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return request.param


def test_request_maker_keeps_text_off_the_special_ids(family, checkpoints):
    """check's synthetic requests: text ids inside the vocabulary and none of them special; the visual span
    is exactly the image tokens, and the reference reads it back."""
    bb = load_backbone(FAMILIES[family][0], checkpoints[family])
    special = special_token_ids(bb.config)
    maker = RequestMaker(bb, "fp32")
    for case in (Case(2, 5, 16, 7, 0), Case(1, 3, 24, 9, 1), Case(2, 4, 0, 6, 2)):
        ids, visual, grid = maker.make(case)
        span = slice(case.prefix, case.prefix + case.visual)
        text = np.concatenate([ids[:, :span.start], ids[:, span.stop:]], axis=1)
        if case.visual and bb.family == "qwen2_5_vl":  # the vision start marker (3) is in the vocabulary, the end not
            assert (text[:, case.prefix - 1] == bb.config.vision_start_token_id).all()
            text = np.delete(text, case.prefix - 1, axis=1)
        assert ((text >= 0) & (text < bb.text_config.vocab_size)).all()
        assert not np.isin(text, list(special)).any()
        assert (ids[:, span] == bb.image_token_id).all()
        if case.visual:
            ref = maker.reference_inputs(ids, visual, grid)
            assert (ref.visual_start, ref.visual_count) == (case.prefix, case.visual)


def test_calibration_batch_fits_the_vocabulary(family, checkpoints):
    """calibrate's requests without a tokenizer.json: the byte tokenizer is fitted to 99 ids, clear of the
    special ones, and the vision end id the vocabulary does not have is left out."""
    bb = load_backbone(FAMILIES[family][0], checkpoints[family])
    tokenizer = tokenizer_for(bb)
    special = special_token_ids(bb.config)
    prompt = "Which shape is the largest, and where is it?"
    encoded = tokenizer.encode(prompt)
    assert all(0 <= i < 99 and i not in special for i in encoded)
    batch = make_batch(bb, synthetic_image(0), prompt, tokenizer)
    ids = batch.input_ids[0]
    assert int(ids.max()) < bb.text_config.vocab_size
    with torch.no_grad():
        inputs = bb.prepare(batch)  # runs the vision tower: its token count must match the image span
    assert inputs.visual_count == int((ids == bb.image_token_id).sum()) > 0


def test_byte_tokenizer_within_a_vocabulary():
    # the tiny models (1024 ids, specials 0-2 and 1000-1003) keep b -> 10 + b
    tiny = ByteTokenizer.within(1024, {0, 1, 2, 1000, 1001, 1002, 1003})
    assert tiny.ids == ByteTokenizer().ids and tiny.encode("Hé") == [10 + b for b in "Hé".encode()]
    # 99 ids with specials among them: ids 10..98, the bytes wrap around; decode gives the first byte of an id
    small = ByteTokenizer.within(99, {0, 1, 2, 3, 4, 5, 151653})
    assert small.ids == list(range(10, 99))
    assert small.encode("AB") == [10 + 65, 10 + 66] and small.decode(small.encode("AB")) == "AB"
    assert small.encode("a") == [10 + 97 - 89] and small.decode(small.encode("a")) == "\x08"
    # fewer than 11 ids: the ones below 10 that are not special
    assert ByteTokenizer.within(6, {0, 2}).ids == [1, 3, 4, 5]
    with pytest.raises(UserError, match="no id for text"):
        ByteTokenizer.within(3, {0, 1, 2})


def invoke(args: list) -> str:
    """Run the CLI in-process; any exception (a traceback for a user) or a non-zero exit fails the test."""
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError("".join(traceback.format_exception(result.exception)) + result.output)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.mark.slow
def test_calibrate_export_check_through_the_cli(family, checkpoints, tmp_path):
    """calibrate (synthetic samples) -> export with that profile -> check: all pass, no traceback."""
    model = FAMILIES[family][0]
    path = str(checkpoints[family])
    profile = tmp_path / "profile.json"
    out = invoke(["calibrate", "--model", model, "--model-path", path, "--samples", "2", "--out", str(profile)])
    assert "ivr_layer" in out and profile.is_file()
    graphs = tmp_path / "graphs"
    invoke(["export", "--model", model, "--model-path", path, "--profile", str(profile), "--out", str(graphs)])
    assert "PASSED" in invoke(["check", "--graphs", str(graphs), "--model-path", path])
