"""MODEL_CARD.md and accuracy.json of a trained zoo model, from its train.json and a measured test accuracy."""

from __future__ import annotations

import json
from pathlib import Path

from halfv_export.backbones.registry import load_backbone
from halfv_export.core.fileio import atomic_path, write_json
from .data import DESCRIBE_PROMPTS, QUESTION_KINDS, SHAPE_SIZE
from .eval import accuracy, by_kind, eval_questions, reference_answers
from .models import image_side, visual_tokens, weights_dir
from .train import MENTION_LAYER, PLACE_LAYER

SUBSET = 50  # the fixed subset tests re-measure (first 50 test questions)


def measure(name: str, count: int, folder: Path | None = None) -> dict:
    bb = load_backbone(name, folder)
    samples = eval_questions(max(count, SUBSET))
    answers = reference_answers(bb, name, samples, None)
    params = sum(p.numel() for p in bb.model.parameters())
    return {"model": name, "split": "test", "samples": len(samples), "accuracy": round(accuracy(samples, answers), 4),
            "by_kind": by_kind(samples, answers), "subset": SUBSET,
            "subset_accuracy": round(accuracy(samples[:SUBSET], answers[:SUBSET]), 4), "parameters": params}


def write_card(name: str, count: int) -> tuple[Path, float]:
    folder = weights_dir(name)
    record = json.loads((folder / "train.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    acc = measure(name, count, folder)
    write_json(folder / "accuracy.json", acc)
    with atomic_path(folder / "MODEL_CARD.md") as tmp:
        tmp.write_text(card_text(name, record, config, acc))
    return folder / "MODEL_CARD.md", acc["accuracy"]


def card_text(name: str, record: dict, config: dict, acc: dict) -> str:
    text = config["text_config"]
    vision = config["vision_config"]
    side = image_side(name)
    tying = "tied" if config.get("tie_word_embeddings", text.get("tie_word_embeddings")) else "untied"
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in acc["by_kind"].items())
    arch = ("Qwen2_5_VLForConditionalGeneration" if config["model_type"] == "qwen2_5_vl"
            else "LlavaForConditionalGeneration (Llama text, CLIP vision)")
    sections = (text.get("rope_parameters") or {}).get("mrope_section")
    mrope = f", M-RoPE sections (t, h, w) {sections} (zoo/models.py MROPE_SECTION)" if sections else ""
    merge = vision.get("spatial_merge_size")
    vision_line = (f"depth {vision.get('depth')}, hidden {vision['hidden_size']}, patch {vision['patch_size']}, "
                   f"{merge}x{merge} merge, window {vision.get('window_size')} px"
                   if config["model_type"] == "qwen2_5_vl" else
                   f"CLIP {vision['num_hidden_layers']} layers, hidden {vision['hidden_size']}, {side} px, "
                   f"patch {vision['patch_size']}, feature layer {config.get('vision_feature_layer')}")
    stages = [record]
    while stages[0].get("previous"):
        stages.insert(0, stages[0]["previous"])
    training = "\n".join(stage_text(name, stage, i, len(stages)) for i, stage in enumerate(stages))
    return f"""# {name}

A tiny {arch} trained from scratch in this repository on procedural shapes VQA
(`halfv_export/zoo/data.py`), so pruning methods can be scored on answers that are right by construction.
Not a general model: it only knows this task.

## Architecture ({acc['parameters'] / 1e6:.2f} M parameters)
- text: {text['num_hidden_layers']} layers, hidden {text['hidden_size']}, MLP {text['intermediate_size']}, \
{text['num_attention_heads']} heads / {text['num_key_value_heads']} kv heads, vocab {text['vocab_size']}, \
eos id {text['eos_token_id']}, {tying} embeddings{mrope}
- vision: {vision_line}
- images: {side}x{side} px -> {visual_tokens(name)} visual tokens; tokenizer: one id per word (WordLevel, \
zoo/tokenizer.py), shipped as tokenizer.json
- prompt layout: the family chat template of halfv_export/core/families (as VlmPipeline builds it)

## Data recipe
Scenes of 1-4 shapes (circle, square, triangle, cross) in distinct cells of a 2x2 grid, distinct colours
(red, green, blue, yellow, purple, orange), random size {SHAPE_SIZE[0]:.0%}-{SHAPE_SIZE[1]:.0%} of the cell, light plain / checker / stripes
background. One question per scene, kind uniform over: colour ("What colour is the circle?"), shape
("Which shape is red?"), count ("How many shapes?"), horizontal ("Is the red circle left or right?"),
vertical ("... top or bottom?"). One-word answers (one token) followed by eos. Sample i of a split comes from
random.Random(split_seed * 1000003 + i); split seeds train 1, val 2, test 3.

## Training
{training}
Curves in train.json ("previous" holds the first stage when training continued from a folder).

## Measured accuracy (greedy, exact match, unpruned, PyTorch reference)
    halfv-export zoo card {name} --samples {acc['samples'] if acc['samples'] != SUBSET else SUBSET}
- test split, first {acc['samples']} questions: **{acc['accuracy']:.3f}**
- first {acc['subset']} test questions (re-measured by tests/zoo): {acc['subset_accuracy']:.3f}
- by question kind: {kinds}
Pruning results: `halfv-export eval --model {name}` (figures in the project README).
"""


def stage_text(name: str, record: dict, index: int, count: int) -> str:
    s = record["settings"]
    first = s.get("first_example", 0)
    options = "" if record.get("init") is None else (
        f" --init <stage {index} folder> --first-example {first} --examples {s['examples']} --lr {s['lr']}")
    last = record["loss_curve"][-1]["loss"] if record["loss_curve"] else float("nan")
    title = f"Stage {index + 1} of {count}" if count > 1 else "Single stage"
    vision = (f"First {record['vision_steps']} vision steps (batch {s['batch_size']}, train scenes "
              f"{first}..{first + record['vision_steps'] * s['batch_size'] - 1}): the vision tower and projector alone "
              f"learn, through a linear probe, the shape kind and colour under each visual token (the probe is "
              f"dropped after training). Then " if record.get("vision_steps") else "")
    probe = (f" + {s['token_loss_weight']} x the probe loss" if s.get("token_loss_weight") else "")
    probe += (f" + {s['place_loss_weight']} x a place loss (a linear probe names each visual token's image "
              f"quadrant from the decoder state after {PLACE_LAYER} layers; dropped after training)"
              if s.get("place_loss_weight") else "")
    probe += (f" + {s['mention_loss_weight']} x a mention loss (a linear probe names, at each text word naming a "
              f"shape, that shape's image quadrant from the decoder state after {MENTION_LAYER} layers; dropped after "
              f"training)" if s.get("mention_loss_weight") else "")
    turns = s.get("turns", 1)
    weights = s.get("follow_up_weights")
    mix = (" (kinds drawn with weights " + ", ".join(f"{k} {w:g}" for k, w in zip(QUESTION_KINDS, weights)) + ")"
           if weights else "")
    followups = (f", then up to {turns - 1} more questions about the same image as later chat turns{mix}, each with "
                 f"its one-word answer" if turns > 1 else "")
    return f"""{title}:

    halfv-export zoo train {name}{options}

{vision}{s['examples']} training examples (train indices {first}..{first + s['examples'] - 1}; a share \
{s.get('describe_share', 0.0)} of them ask "{DESCRIBE_PROMPTS['kinds']}" (answer: every shape as "kind colour row col", \
kinds in a fixed order) or "{DESCRIBE_PROMPTS['colours']}" ("colour kind row col", colours in a fixed order), the rest \
one question with its one-word answer{followups}), {s['epochs']} epoch(s), batch {s['batch_size']}, AdamW lr {s['lr']} \
(warmup {s['warmup_steps']} steps, cosine to 10%), weight decay {s['weight_decay']}, grad clip 1.0, seed {s['seed']}, \
loss on the answer tokens + eos (averaged per example){probe}, torch {record['torch']} CPU, {record['threads']} thread(s). Ran \
{record['steps']} of {record['planned_steps']} question steps in {record['train_seconds']:.0f} s wall (both parts)\
{' (stopped by the time limit)' if record['stopped_early'] else ''}; last logged answer loss {last:.4f}.
"""
