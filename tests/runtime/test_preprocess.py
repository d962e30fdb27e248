"""Host preprocessing equals the transformers image processors; bad images are UserErrors; prompts expand."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from halfv_export.core.errors import UserError
from halfv_export.graphs.vision import preprocess_config
from halfv_export.core.families.qwen2_5_vl import smart_resize
from halfv_export.core.image import load_image
from halfv_export.runtime.preprocess import expand_prompt, image_pixels
from tests.conftest import TINY, tiny_backbone

# Same PIL filter on the same uint8 RGB image, same float64 rescale and float32 normalise: the
# pixels are expected bit-identical, so the comparison is exact (atol 0). A Pillow build with a
# different bicubic kernel would show up here as ~1 LSB (1/255/std ~ 0.015) differences.


def _image(rng, height, width, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    data = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(data[..., 0] if channels == 1 else data, mode)


def _palette_with_transparency(rng):
    image = _image(rng, 33, 47).convert("P")
    image.info["transparency"] = 0
    return image


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return {
        "rgb 97x131": _image(rng, 97, 131),
        "rgba 300x200": _image(rng, 300, 200, "RGBA"),
        "gray 50x80": _image(rng, 50, 80, "L"),
        "palette+transparency": _palette_with_transparency(rng),
        "wide 20x500": _image(rng, 20, 500),
        "tall 700x30": _image(rng, 700, 30),
        "tiny 9x9": _image(rng, 9, 9),
    }


def _processor(bb, cfg):
    """The transformers PIL-backend processor configured from the same model config, no download."""
    vc = bb.config.vision_config
    if bb.family == "qwen2_5_vl":
        return Qwen2VLImageProcessorPil(patch_size=vc.patch_size, merge_size=vc.spatial_merge_size,
                                        temporal_patch_size=vc.temporal_patch_size,
                                        min_pixels=cfg["min_pixels"], max_pixels=cfg["max_pixels"])
    size = {"shortest_edge": vc.image_size}
    crop = {"height": vc.image_size, "width": vc.image_size}
    if bb.family == "llava":
        return CLIPImageProcessorPil(size=size, crop_size=crop)
    return LlavaNextImageProcessorPil(size=size, crop_size=crop, image_grid_pinpoints=bb.config.image_grid_pinpoints)


def _assert_equal_to_processor(bb, cfg, images):
    processor = _processor(bb, cfg)
    for label, image in images.items():
        ours = image_pixels(image, cfg)
        ref = processor(images=image, return_tensors="np")
        assert set(ours) == set(ref.keys()), label
        for key, value in ours.items():
            expected = np.asarray(ref[key])
            if key == "pixel_values" and bb.family == "llava_next":
                expected = expected[0]  # the processor pads a batch axis of tiles
            assert value.dtype == expected.dtype and value.shape == expected.shape, (label, key)
            np.testing.assert_array_equal(value, expected, err_msg=f"{label}: {key}")


def test_pixels_equal_transformers_processor(tiny_name, images):
    bb = tiny_backbone(tiny_name)
    _assert_equal_to_processor(bb, preprocess_config(bb), images)


def test_qwen_downscaled_pixels_equal_transformers_processor(images):
    bb = tiny_backbone("tiny-qwen2.5-vl")
    cfg = dict(preprocess_config(bb), max_pixels=28 * 28 * 12)  # forces smart_resize to shrink
    _assert_equal_to_processor(bb, cfg, images)


def test_qwen_min_pixels_upscales(images):
    cfg = preprocess_config(tiny_backbone("tiny-qwen2.5-vl"))
    out = image_pixels(images["tiny 9x9"], cfg)
    t, h, w = out["image_grid_thw"][0]
    assert h * w * 14 * 14 >= cfg["min_pixels"] and h % 2 == 0 and w % 2 == 0


def test_smart_resize_equals_transformers():
    rng = np.random.default_rng(1)
    for height, width in rng.integers(1, 4000, (300, 2)).tolist() + [[28, 28], [1, 150], [10000, 60]]:
        for lo, hi in [(56 * 56, 28 * 28 * 1280), (3136, 12845056), (28 * 28 * 4, 28 * 28 * 16)]:
            if max(height, width) / min(height, width) > 200:
                with pytest.raises(UserError, match="aspect ratio"):
                    smart_resize(height, width, 28, lo, hi)
                continue
            assert smart_resize(height, width, 28, lo, hi) == hf_smart_resize(height, width, 28, lo, hi)


# -- loading -----------------------------------------------------------------------------------------
def test_load_image_decodes_to_rgb(tmp_path, images):
    path = tmp_path / "a.png"
    images["rgba 300x200"].save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (200, 300)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_load_image_errors(tmp_path, images):
    good = tmp_path / "good.png"
    images["rgb 97x131"].save(good)
    truncated = _write(tmp_path / "truncated.png", good.read_bytes()[: good.stat().st_size // 2])
    cases = [
        ("not found", tmp_path / "missing.png"),
        ("empty", _write(tmp_path / "empty.png", b"")),
        ("cannot read", _write(tmp_path / "text.jpg", b"this is not an image\n" * 10)),
        ("cannot read", truncated),
    ]
    for message, path in cases:
        with pytest.raises(UserError, match=message):
            load_image(path)
    with pytest.raises(UserError, match="above the limit"):
        load_image(good, max_pixels=100 * 100)
    with pytest.raises(UserError, match="not found"):
        image_pixels(str(tmp_path / "missing.png"), preprocess_config(tiny_backbone("tiny-llava")))


def test_zero_sized_image_is_a_user_error():
    cfg = preprocess_config(tiny_backbone("tiny-llava"))
    with pytest.raises(UserError, match="zero size"):
        image_pixels(Image.new("RGB", (0, 5)), cfg)


def test_extreme_aspect_ratio_is_a_user_error(images):
    cfg = preprocess_config(tiny_backbone("tiny-qwen2.5-vl"))
    with pytest.raises(UserError, match="aspect ratio"):
        image_pixels(Image.new("RGB", (1000, 4)), cfg)


def test_unknown_family_is_a_user_error(images):
    with pytest.raises(UserError, match="family"):
        image_pixels(images["rgb 97x131"], {"family": "blip"})


# -- prompts -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_expand_prompt_matches_the_backbone_layout(name):
    """Same ids and visual span as the reference's own example batch (which the decoder consumes)."""
    bb = tiny_backbone(name)
    cfg = preprocess_config(bb)
    image = {"tiny-qwen2.5-vl": (112, 168), "tiny-llava": (56, 56), "tiny-llava-next": (40, 56)}[name]
    batch = bb.example_batch(1, image, 5, 3, seed=2)
    ids = batch.input_ids[0].tolist()
    start, count = bb.visual_span(batch.input_ids)
    wrapped = 1 if bb.family == "qwen2_5_vl" else 0  # vision_start / vision_end around the pads
    prompt = expand_prompt(cfg, count, ids[:start - wrapped], ids[start + count + wrapped:])
    assert prompt.input_ids.dtype == np.int64 and prompt.input_ids.tolist() == ids
    assert (prompt.visual_start, prompt.visual_count) == (start, count)


def test_expand_prompt_without_image_adds_no_markers():
    cfg = preprocess_config(tiny_backbone("tiny-qwen2.5-vl"))
    prompt = expand_prompt(cfg, 0, [11, 12], [13])
    assert prompt.input_ids.tolist() == [11, 12, 13] and prompt.visual_count == 0


def test_runtime_modules_do_not_import_torch():
    code = ("import sys, halfv_export.runtime.preprocess, halfv_export.core.families; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
