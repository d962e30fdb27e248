"""Calibration samples: the synthetic set, the --data folder format and its errors, and make_batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from halfv_export.calibration.data import (PROMPTS, SYNTHETIC_SIZES, folder_samples, make_batch, synthetic_image,
                                           synthetic_samples)
from halfv_export.core.errors import UserError
from halfv_export.runtime.text import ByteTokenizer
from tests.conftest import tiny_backbone


def test_synthetic_images_are_deterministic_and_varied():
    a, b = synthetic_image(7), synthetic_image(7)
    assert a.tobytes() == b.tobytes()
    assert (a.height, a.width) in SYNTHETIC_SIZES
    colours = {tuple(c) for c in np.asarray(a).reshape(-1, 3)}
    assert len(colours) >= 2, "shapes are drawn over the background"
    images = [synthetic_image(seed).tobytes() for seed in range(6)]
    assert len(set(images)) == 6


def test_synthetic_samples_cycle_through_the_prompts():
    samples = synthetic_samples(10)
    assert [s.prompt for s in samples] == [PROMPTS[i % len(PROMPTS)] for i in range(10)]
    assert len({s.image().tobytes() for s in samples}) == 10
    assert synthetic_samples(3, seed=1)[0].image().tobytes() != samples[0].image().tobytes()


def write_folder(root, lines, images=("a.png", "b.png")):
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(images):
        synthetic_image(i).save(root / name)
    (root / "prompts.jsonl").write_text("".join(line + "\n" for line in lines))
    return root


def test_folder_samples_read_in_order(tmp_path):
    folder = write_folder(tmp_path / "d", [json.dumps({"image": "a.png", "prompt": "first"}), "",
                                           json.dumps({"image": "b.png", "prompt": "second", "extra": 1})])
    samples = folder_samples(folder)
    assert [s.prompt for s in samples] == ["first", "second"]
    assert samples[1].origin.endswith("prompts.jsonl line 3")  # the blank line still counts
    assert samples[0].image().tobytes() == synthetic_image(0).tobytes()
    assert [s.prompt for s in folder_samples(folder, limit=1)] == ["first"]


@pytest.mark.parametrize("lines,match", [
    (['{"image": "a.png", "prompt": "ok"}', '{"image": "a.png", "prompt": '], "line 2: not valid JSON"),
    (['["a.png", "p"]'], 'line 1: expected an object with string fields "image" and "prompt"'),
    (['{"image": "a.png"}'], 'line 1: expected an object'),
    (['{"image": "a.png", "prompt": 3}'], 'line 1: expected an object'),
    (['{"image": "missing.png", "prompt": "p"}'], "line 1: image 'missing.png' not found"),
    (['{"image": "broken.png", "prompt": "p"}'], "line 1: cannot read image 'broken.png'"),
    (["", "  "], "lists no samples"),
])
def test_folder_errors_name_the_file_and_line(tmp_path, lines, match):
    folder = write_folder(tmp_path / "d", lines)
    (folder / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(UserError, match=match) as err:
        folder_samples(folder)
    assert str(folder / "prompts.jsonl") in str(err.value)
    assert "\n" not in str(err.value)


def test_folder_without_listing_or_not_a_folder(tmp_path):
    with pytest.raises(UserError, match="prompts.jsonl not found"):
        folder_samples(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        folder_samples(tmp_path / "nope")


@pytest.mark.parametrize("size", [(300, 200), (60, 90)])  # (width, height): shrunk to / grown to the budget
def test_qwen_batch_layout_and_image_budget(size):
    bb = tiny_backbone("tiny-qwen2.5-vl")
    image = synthetic_image(0).resize(size)
    batch = make_batch(bb, image, "Name the shapes.")
    t, h, w = batch.image_grid_thw[0].tolist()
    patch = bb.config.vision_config.patch_size
    assert t == 1 and h % 2 == 0 and w % 2 == 0  # sides are multiples of 28 px
    assert 112 * 112 <= h * w * patch * patch <= 224 * 224
    count = h * w // 4
    ids = batch.input_ids[0].tolist()
    cfg = bb.config
    start = ids.index(cfg.vision_start_token_id)
    assert ids[start + 1:start + 1 + count] == [cfg.image_token_id] * count
    assert ids[start + 1 + count] == cfg.vision_end_token_id
    tail = ByteTokenizer().decode(ids[start + 2 + count:])
    assert tail == "Name the shapes.<|im_end|>\n<|im_start|>assistant\n"
    inputs = bb.prepare(batch)
    assert inputs.visual_count == count and inputs.visual_start == start + 1


def test_llava_batch_layout():
    bb = tiny_backbone("tiny-llava")
    batch = make_batch(bb, synthetic_image(1), "What is red?")
    ids = batch.input_ids[0].tolist()
    assert ids[0] == bb.text_config.bos_token_id
    assert ids.count(bb.image_token_id) == 16 and tuple(batch.pixel_values.shape) == (1, 3, 56, 56)
    assert ByteTokenizer().decode(ids[1:]) == "USER: " + "<1000>" * 16 + "\nWhat is red? ASSISTANT:"
    assert bb.prepare(batch).visual_count == 16


def test_llava_next_counts_follow_the_anyres_grid():
    bb = tiny_backbone("tiny-llava-next")
    counts = {}
    for size in [(56, 56), (112, 56), (56, 112)]:  # (width, height)
        batch = make_batch(bb, Image.new("RGB", size, (200, 30, 30)), "Describe.")
        inputs = bb.prepare(batch)  # raises if the placeholder count differs from the features
        counts[size] = inputs.visual_count
        assert batch.image_sizes.tolist() == [[size[1], size[0]]]
        assert batch.input_ids[0].tolist().count(bb.image_token_id) == inputs.visual_count
    assert counts[(56, 56)] == 24  # the registry's documented count for a 56x56 image
    assert counts[(112, 56)] != counts[(56, 56)]
