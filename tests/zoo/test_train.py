"""Training examples carry labels on the answer and eos only; a short run is deterministic and saves a loadable folder."""

from __future__ import annotations

import json

import pytest
import torch

from halfv_export.backbones import load_backbone
from halfv_export.zoo import data, tokenizer
from halfv_export.zoo.models import image_side
from halfv_export.zoo.train import (IGNORE, TrainSettings, build_model, encode, processor_for, save, train,
                                     training_sample)

NAME = "shapes-llava"  # the cheaper of the two; both share encode/collate/train
TINY = TrainSettings(examples=4, batch_size=2, epochs=1, warmup_steps=1)


def test_labels_are_the_answer_and_eos():
    bb = build_model(NAME)
    sample = data.sample("train", 7)
    words = tokenizer.load()
    batch, labels = encode(bb, sample, image_side(NAME), processor_for(bb, image_side(NAME)), words)
    answer = words.encode(sample.question.answer) + [bb.text_config.eos_token_id]
    assert len(answer) == 2  # one word, then eos
    assert labels[-len(answer):].tolist() == answer
    assert (labels[:-len(answer)] == IGNORE).all()
    assert batch.input_ids[0, -len(answer):].tolist() == answer
    assert int((batch.input_ids == bb.image_token_id).sum()) == 144


@pytest.fixture(scope="module")
def two_runs():
    return [train(NAME, TINY, progress=lambda line: None) for _ in range(2)]


def test_training_is_deterministic(two_runs):
    (a, rec_a), (b, rec_b) = two_runs
    assert rec_a["steps"] == rec_b["steps"] == 2
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert rec_a["loss_curve"][-1]["loss"] == rec_b["loss_curve"][-1]["loss"]


def test_saved_folder_loads_with_its_processor(two_runs, tmp_path):
    bb, record = two_runs[0]
    folder = save(bb, NAME, tmp_path / "w", record)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
                                                    "train.json"} <= {
        p.name for p in folder.iterdir()}
    assert json.loads((folder / "train.json").read_text())["steps"] == 2
    loaded = load_backbone(NAME, folder)
    for (name, pa), pb in zip(bb.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_a_fixed_share_of_training_examples_describe_the_scene():
    half = TrainSettings(describe_share=0.5)
    picked = [training_sample(i, half).question.kind == "describe" for i in range(400)]
    assert picked == [training_sample(i, half).question.kind == "describe" for i in range(400)]
    assert 0.4 < sum(picked) / 400 < 0.6
    assert not any(training_sample(i, TrainSettings(describe_share=0.0)).question.kind == "describe"
                   for i in range(100))
    plain = data.sample("train", 3)
    assert training_sample(3, TrainSettings(describe_share=0.0)) == plain
