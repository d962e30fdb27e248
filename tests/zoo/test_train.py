"""Training examples carry labels on the answer and eos only; a short run is deterministic and saves a loadable folder."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from halfv_export.backbones import load_backbone
from halfv_export.cli import cli
from halfv_zoo import data, tokenizer
from halfv_zoo.models import image_side
from halfv_zoo.train import (IGNORE, TrainSettings, build_model, encode, processor_for, save, train,
                                     training_sample)

pytestmark = pytest.mark.zoo

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
    picked = [training_sample(i, half)[0].question.kind == "describe" for i in range(400)]
    assert picked == [training_sample(i, half)[0].question.kind == "describe" for i in range(400)]
    assert 0.4 < sum(picked) / 400 < 0.6
    assert not any(training_sample(i, TrainSettings(describe_share=0.0))[0].question.kind == "describe"
                   for i in range(100))
    plain = data.sample("train", 3)
    assert training_sample(3, TrainSettings(describe_share=0.0)) == (plain, ())
    assert training_sample(3, TrainSettings(describe_share=0.0, turns=3)) == (plain, tuple(data.follow_ups(plain, 2)))
    described = [training_sample(i, TrainSettings(describe_share=0.5, turns=5)) for i, d in enumerate(picked) if d]
    assert all(follow_ups == () for _, follow_ups in described)
    assert {s.question.prompt for s, _ in described} == set(data.DESCRIBE_PROMPTS.values())  # both orders drawn


def test_follow_up_turns_carry_their_own_answers():
    """A conversation: the first turn exactly as at inference, then each follow-up as a chat turn without the
    image; labels on every answer and its eos only."""
    from halfv_export.runtime.text import prompt_ids

    bb = build_model(NAME)
    words = tokenizer.load()
    sample = data.sample("train", 7)
    ups = data.follow_ups(sample, 2)
    side = image_side(NAME)
    first, first_labels = encode(bb, sample, side, processor_for(bb, side), words)
    batch, labels = encode(bb, sample, side, processor_for(bb, side), words, follow_ups=tuple(ups))
    ids = batch.input_ids[0].tolist()
    n = first.input_ids.shape[1]
    assert ids[:n] == first.input_ids[0].tolist() and labels[:n].tolist() == first_labels.tolist()
    eos = bb.text_config.eos_token_id
    expected_ids, expected_labels = [], []
    for q in ups:
        before, after = prompt_ids(words, "llava", q.prompt, None)
        answer = words.encode(q.answer) + [eos]
        expected_ids += before + after + answer
        expected_labels += [IGNORE] * len(before + after) + answer
    assert ids[n:] == expected_ids and labels[n:].tolist() == expected_labels
    assert words.decode(ids[n:]).count("assistant") == len(ups)


def test_training_forward_is_the_models_own():
    """Training computes the visual tokens itself (for the probe) and hands them to the model: the loss is
    the one the transformers model computes from pixels."""
    from halfv_export.backbones.base import MultimodalBatch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from halfv_zoo.train import collate

    bb = build_model(NAME)
    side = image_side(NAME)
    items = [encode(bb, data.sample("train", i), side, processor_for(bb, side), tokenizer.load()) for i in range(3)]
    inputs = collate(bb, items)
    with torch.no_grad():
        own = bb.model(**inputs).loss
        pixels = inputs.pop("pixel_values")
        features = bb.image_features(MultimodalBatch(inputs["input_ids"], pixels))
        inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(features))}
        assert torch.equal(bb.model(**inputs).loss, own)


def test_vision_stage_teaches_the_probe_and_the_probe_is_not_saved(two_runs):
    """Stage 1 lowers the token-label loss over 50 steps; the model keeps exactly the transformers weights."""
    bb, record = two_runs[0]
    assert set(bb.model.state_dict()) == set(build_model(NAME).model.state_dict())
    assert "token_loss" in record["loss_curve"][-1]
    _, staged = train(NAME, TrainSettings(examples=2, batch_size=2, vision_steps=50, warmup_steps=5),
                      progress=lambda line: None)
    curve = staged["vision_curve"]
    assert staged["vision_steps"] == 50 and staged["steps"] == 1
    assert [c["step"] for c in curve] == [25, 50] and curve[-1]["token_loss"] < 0.5 * curve[0]["token_loss"]


def test_answer_loss_weighs_examples_equally():
    """Equal-length answers: the transformers token mean. A long and a short answer: the mean of the two
    examples' own means, so a description does not outweigh a one-word answer."""
    from halfv_zoo.train import answer_loss_per_example, next_labels

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    equal = torch.tensor([[IGNORE, IGNORE, IGNORE, IGNORE, 3, 4], [IGNORE, IGNORE, IGNORE, IGNORE, 5, 6]])
    ce = torch.nn.functional.cross_entropy
    token_mean = ce(logits[:, :-1].reshape(-1, 11), equal[:, 1:].reshape(-1), ignore_index=IGNORE)
    following = next_labels(equal)
    assert torch.allclose(answer_loss_per_example(logits[following != IGNORE], following), token_mean)
    unequal = torch.tensor([[IGNORE, 1, 2, 3, 4, 5], [IGNORE, IGNORE, IGNORE, IGNORE, IGNORE, 6]])
    long = ce(logits[0, :-1], unequal[0, 1:])
    short = ce(logits[1, 4:5], unequal[1, 5:])
    following = next_labels(unequal)
    assert torch.allclose(answer_loss_per_example(logits[following != IGNORE], following), (long + short) / 2)


def test_training_logits_are_the_models_at_the_labelled_positions():
    """Training asks the model for logits only where a label is predicted (logits_to_keep, a boolean mask):
    they equal the full forward's logits there, request by request."""
    from halfv_zoo.train import collate, next_labels

    bb = build_model(NAME)
    side = image_side(NAME)
    items = [encode(bb, data.sample("train", i), side, processor_for(bb, side), tokenizer.load(),
                    follow_ups=tuple(data.follow_ups(data.sample("train", i), i))) for i in range(3)]
    inputs = collate(bb, items)
    following = next_labels(inputs.pop("labels"))
    with torch.no_grad():
        full = bb.model(**inputs).logits
        kept = bb.model(**inputs, logits_to_keep=following != IGNORE).logits
    assert kept.shape == (int((following != IGNORE).sum()), full.shape[-1])
    assert torch.allclose(kept, full[following != IGNORE], atol=1e-5)


def test_place_probe_reads_each_visual_token_with_its_quadrant(two_runs):
    """Quadrant targets in raster order (top-left 0, top-right 1, bottom-left 2, bottom-right 3), read only at
    the visual positions; the place loss is logged in training."""
    from halfv_zoo.train import PlaceProbe

    probe = PlaceProbe(8, grid=4)
    assert probe.targets.tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    torch.manual_seed(0)
    hidden = torch.randn(2, 20, 8)
    visual = torch.zeros(2, 20, dtype=torch.bool)
    visual[0, 2:18], visual[1, 3:19] = True, True
    rows = torch.cat([hidden[0, 2:18], hidden[1, 3:19]])
    expected = torch.nn.functional.cross_entropy(probe.head(rows), probe.targets.repeat(2))
    assert torch.allclose(probe.loss(hidden, visual), expected)
    _, record = two_runs[0]
    assert "place_loss" in record["loss_curve"][-1]


def test_mention_probe_targets_each_word_naming_a_shape_with_its_quadrant():
    """After the image, every kind or colour word of the scene (in questions, answers and follow-ups) is labelled
    with that shape's quadrant 2 * row + col; nothing else is, and the loss is the cross-entropy there."""
    from halfv_zoo.train import MentionProbe

    bb, words = build_model(NAME), tokenizer.load()
    sample = next(s for s in data.samples("train", 50) if len(s.scene.things) >= 3)
    follow = tuple(data.follow_ups(sample, 4, (1.0, 1.0, 0.0, 1.0, 1.0)))
    batch, _ = encode(bb, sample, image_side(NAME), processor_for(bb, image_side(NAME)), words, follow_ups=follow)
    ids = batch.input_ids
    probe = MentionProbe(8, words)
    targets = probe.targets([sample], ids, bb.image_token_id)
    quadrant = {w: 2 * t.row + t.col for t in sample.scene.things for w in (t.kind, t.colour)}
    after = int((ids[0] == bb.image_token_id).nonzero().max()) + 1
    expected = [quadrant.get(words.decode([i]), IGNORE) if p >= after else IGNORE for p, i in enumerate(ids[0].tolist())]
    assert targets[0].tolist() == expected
    assert sum(t != IGNORE for t in expected) >= 1 + len(follow)  # every question here names a shape
    hidden = torch.randn(1, ids.shape[1], 8)
    named = targets != IGNORE
    assert torch.allclose(probe.loss(hidden, targets), torch.nn.functional.cross_entropy(
        probe.head(hidden[named]), targets[named]))
    assert probe.loss(hidden, torch.full_like(targets, IGNORE)) == 0  # a batch naming no shape adds nothing


def test_zoo_train_records_the_mention_loss(tmp_path):
    out = tmp_path / "weights"
    result = CliRunner().invoke(cli, ["zoo", "train", NAME, "--examples", "2", "--batch-size", "2", "--vision-steps",
                                      "0", "--mention-loss-weight", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "train.json").read_text())
    assert record["settings"]["mention_loss_weight"] == 0.5
    assert "mention_loss" in record["loss_curve"][-1]


@pytest.mark.parametrize("given, recorded", [("shape=4,count=0", [1.0, 4.0, 0.0, 1.0, 1.0]), ("even", None)])
def test_zoo_train_takes_follow_up_weights(given, recorded, tmp_path):
    """--follow-up-weights reaches the training settings (train.json records them); 'even' draws kinds uniformly."""
    out = tmp_path / "weights"
    result = CliRunner().invoke(cli, ["zoo", "train", NAME, "--examples", "2", "--batch-size", "2", "--vision-steps",
                                      "0", "--turns", "3", "--follow-up-weights", given, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "train.json").read_text())["settings"]["follow_up_weights"] == recorded


@pytest.mark.parametrize("given", ["size=2", "shape=lots", "shape=-1", "colour=0,shape=0,count=0,horizontal=0,vertical=0"])
def test_zoo_train_refuses_bad_follow_up_weights(given, tmp_path):
    result = CliRunner().invoke(cli, ["zoo", "train", NAME, "--follow-up-weights", given, "--out", str(tmp_path / "w")])
    assert result.exit_code == 2 and "--follow-up-weights" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "w").exists()
