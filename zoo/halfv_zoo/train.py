"""Train a zoo model from scratch on the shapes VQA train split (CPU, deterministic).

Each example is laid out exactly as inference sees it (calibration.data.make_batch: the family's chat
template, the zoo word tokenizer, the family's image processor), followed by the answer word and eos:

    [chat prefix] [image span] [chat suffix with the question] | answer  eos
    labels:          -100 everywhere ...                        | answer  eos

so the answer loss is on the answer only, and greedy decoding stops at eos after the answer word. A question
example carries up to `turns - 1` more questions about the same image as later chat turns (data.follow_ups).
Three training-only losses: TokenProbe (which shape kind and colour each visual token covers, at the decoder's
input), PlaceProbe (which image quadrant it lies in, after PLACE_LAYER decoder layers) and MentionProbe (at each
text word naming a shape, that shape's quadrant, after MENTION_LAYER layers).
Requests of a batch are padded on the right (pad id, attention mask 0, label -100).
Every step draws fresh questions (train indices first..first+examples-1, shuffled by the seed).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from halfv_export.backbones.base import Backbone, MultimodalBatch
from halfv_export.calibration.data import make_batch
from halfv_export.core.fileio import atomic_dir
from halfv_export.runtime.text import prompt_ids
from . import data, tokenizer as zoo_tokenizer
from .models import EMBEDDING_STD, ZOO, image_side, tokens_per_side

IGNORE = -100
PLACE_LAYER = 2  # PlaceProbe reads the decoder's hidden state after this many layers
MENTION_LAYER = 4  # MentionProbe reads it after this many: two layers after PLACE_LAYER to fetch the place, two to answer


@dataclass(frozen=True)
class TrainSettings:
    examples: int = 48000  # training examples (train split indices first..first+examples-1)
    first_example: int = 0
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3  # 3e-3 left every question kind but count at chance after 2000 steps
    weight_decay: float = 0.01
    warmup_steps: int = 50
    describe_share: float = 0.5  # share of examples asked to describe the whole scene instead (dense caption)
    turns: int = 1  # questions per image in a question example: the test question, then turns - 1 follow-ups
    follow_up_weights: tuple[float, ...] | None = None  # follow-up kind weights, per data.QUESTION_KINDS (None: even)
    token_loss_weight: float = 1.0  # weight of the visual-token probe loss (TokenProbe); 0 turns it off
    place_loss_weight: float = 1.0  # weight of the visual-token place loss (PlaceProbe); 0 turns it off
    mention_loss_weight: float = 1.0  # weight of the mention place loss (MentionProbe); 0 turns it off
    vision_steps: int = 0  # steps of the vision tower alone on the token labels, first (pretrain_vision)
    seed: int = 0
    threads: int = 1  # torch CPU threads (results are bit-identical only for the same count)
    time_limit_s: float = 30 * 60  # safety cap: training stops (and saves) when this is spent


# Sized to end in about 26-27 minutes on 2 cores (threads=2, one model at a time): measured alone, a LLaVA question step
# takes 0.14 s and a vision step 0.03 s; Qwen's 0.27 s and 0.13 s (its 576-patch vision tower), so Qwen gets fewer
# of both. 2 threads run a question step 1.5x faster than 1, so one model on both cores gets 1.5x the steps of
# the two side by side. Five turns cost ~1.2x one.
# Qwen's follow-ups favour "Which shape is <colour>?" and the position questions (weights per data.QUESTION_KINDS):
# drawn evenly, shape questions were 13% of its question turns and it answered them at 0.65 on validation, near
# chance among the shapes present. With this mix and the place loss: 0.88 on validation, shape 1.00, but position
# 0.73 (right on one-shape scenes, near chance on four). The mention loss (MentionProbe) took it to 0.997 and LLaVA
# (even draws) from 0.92 to 1.00 (README, "Trained shapes models", for the runs in between).
QWEN_FOLLOW_UP_WEIGHTS = (0.5, 4.0, 0.5, 2.0, 2.0)
DEFAULTS = {"shapes-qwen2.5-vl": TrainSettings(examples=33600, vision_steps=4000, turns=5,
                                               follow_up_weights=QWEN_FOLLOW_UP_WEIGHTS, threads=2),
            "shapes-llava": TrainSettings(examples=68000, vision_steps=10000, turns=5, threads=2)}


def build_model(name: str, seed: int = 0) -> Backbone:
    from halfv_export.backbones.registry import get_entry

    make_config, _ = ZOO[name]
    torch.manual_seed(seed)
    entry = get_entry(name)
    bb = entry.backbone(entry.backbone.hf_class(make_config()))
    with torch.no_grad():
        bb.embed_tokens.weight.normal_(0.0, EMBEDDING_STD)  # why: models.EMBEDDING_STD
    return bb


def processor_for(bb: Backbone, side: int):
    """The family's image processor, pinned so a side x side image goes through unresized."""
    from transformers import CLIPImageProcessorPil, Qwen2VLImageProcessorPil

    vision = bb.config.vision_config
    if bb.family == "qwen2_5_vl":
        return Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=side * side,
                                        patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                                        temporal_patch_size=vision.temporal_patch_size)
    return CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})


def encode(bb: Backbone, sample: data.Sample, side: int, processor, tokenizer, with_answer: bool = True,
           follow_ups: tuple[data.Question, ...] = ()):
    """(MultimodalBatch of one request, labels [S] or None): the prompt, then answer + eos when asked, then each
    follow-up question as a later turn of the chat (the template without the image) with its answer + eos."""
    batch = make_batch(bb, sample.image(side), sample.question.prompt, tokenizer, processor)
    if not with_answer:
        return batch, None
    ids, labels = batch.input_ids[0].tolist(), [IGNORE] * batch.input_ids.shape[1]
    for turn, question in enumerate((sample.question, *follow_ups)):
        if turn:
            before, after = prompt_ids(tokenizer, bb.family, question.prompt, None)
            ids, labels = ids + before + after, labels + [IGNORE] * len(before + after)
        answer = tokenizer.encode(question.answer) + [bb.text_config.eos_token_id]
        ids, labels = ids + answer, labels + answer
    batch.input_ids = torch.tensor([ids])
    return batch, torch.tensor(labels)


def collate(bb: Backbone, items) -> dict:
    """Right-padded forward kwargs for the transformers model (loss on the labelled tokens only)."""
    length = max(b.input_ids.shape[1] for b, _ in items)
    pad = bb.text_config.pad_token_id
    ids = torch.full((len(items), length), pad, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
    for row, (b, lab) in enumerate(items):
        n = b.input_ids.shape[1]
        ids[row, :n], mask[row, :n], labels[row, :n] = b.input_ids[0], 1, lab
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if bb.family == "qwen2_5_vl":
        out["pixel_values"] = torch.cat([b.pixel_values for b, _ in items])
        out["image_grid_thw"] = torch.cat([b.image_grid_thw for b, _ in items])
        out["mm_token_type_ids"] = (ids == bb.image_token_id).int()  # M-RoPE positions, as at inference
    else:
        out["pixel_values"] = torch.cat([b.pixel_values for b, _ in items])
    return out


class TokenProbe(torch.nn.Module):
    """Training-only linear head: the shape kind and colour under each visual token, read from the token's
    embedding as the decoder receives it (labels: data.Scene.token_labels on the token grid).

    The answer loss alone reaches the vision tower through the whole decoder and one answer word; this
    dense loss tells every visual token what it covers. The head is dropped after training: the saved
    model is the plain transformers model."""

    def __init__(self, width: int):
        super().__init__()
        self.kind = torch.nn.Linear(width, len(data.SHAPES) + 1)
        self.colour = torch.nn.Linear(width, len(data.COLOURS) + 1)

    def loss(self, features: torch.Tensor, kinds: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        """features [B, N, width]; kinds, colours [B, N] class ids (0 = background)."""
        ce = torch.nn.functional.cross_entropy
        return (ce(self.kind(features).flatten(0, 1), kinds.flatten())
                + ce(self.colour(features).flatten(0, 1), colours.flatten()))


class PlaceProbe(torch.nn.Module):
    """Training-only linear head: which quadrant of the image (top/bottom half x left/right half) each visual
    token lies in, read from the decoder's hidden state after PLACE_LAYER layers.

    Position reaches the decoder only as rotary phases (Qwen: M-RoPE, whose column pairs are the slowest;
    LLaVA: 1-D RoPE over the raster order, plus whatever CLIP's position embeddings leave in the tokens), and a
    question's answer position is 10-60 tokens away: descriptions named the right row but the right column
    only 0.53 (Qwen) / 0.82 (LLaVA) of the time. This loss asks the first layers to write each token's place
    into its content, where a question can find it. Dropped after training, like TokenProbe."""

    def __init__(self, width: int, grid: int):
        super().__init__()
        self.head = torch.nn.Linear(width, 4)
        row, col = torch.arange(grid * grid).div(grid, rounding_mode="floor"), torch.arange(grid * grid) % grid
        self.register_buffer("targets", 2 * (row >= grid // 2).long() + (col >= grid // 2).long(), persistent=False)

    def loss(self, hidden: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, width] decoder states; visual [B, S] True at the visual tokens (grid*grid per row)."""
        tokens = hidden[visual].view(hidden.shape[0], self.targets.numel(), hidden.shape[-1])
        return torch.nn.functional.cross_entropy(self.head(tokens).flatten(0, 1), self.targets.repeat(hidden.shape[0]))


class MentionProbe(torch.nn.Module):
    """Training-only linear head: at every text word naming a shape of the scene (its kind or colour, in a
    question, an answer or a description), the image quadrant of that shape, read from the decoder's hidden
    state after MENTION_LAYER layers.

    A question's words fetch what they name from the image in the first layer (the kind word "circle" attends to
    the circle's tokens), before PlaceProbe's place is written there: colour and shape questions were answered
    right (0.99-1.00) and position questions at 0.73, right for every one-shape scene and near chance with
    three or four shapes. This loss asks the naming words to fetch the place too. Dropped after training."""

    def __init__(self, width: int, tokenizer):
        super().__init__()
        self.head = torch.nn.Linear(width, data.GRID * data.GRID)
        self.word_ids = {word: tokenizer.encode(word)[0] for word in (*data.SHAPES, *data.COLOURS)}  # one id per word

    def targets(self, samples: list[data.Sample], input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
        """[B, S] the quadrant (2 * row + col) of the shape each text token after the image names, IGNORE elsewhere
        (kinds and colours are distinct within a scene, so a word names one shape)."""
        out = torch.full_like(input_ids, IGNORE)
        for row, s in enumerate(samples):
            named = {self.word_ids[word]: data.GRID * t.row + t.col for t in s.scene.things
                     for word in (t.kind, t.colour)}
            after = int((input_ids[row] == image_token_id).nonzero().max()) + 1
            out[row, after:] = torch.tensor([named.get(i, IGNORE) for i in input_ids[row, after:].tolist()])
        return out

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, width] decoder states; targets [B, S] (MentionProbe.targets)."""
        named = targets != IGNORE
        if not named.any():  # a batch of count questions alone names no shape
            return hidden.sum() * 0.0
        return torch.nn.functional.cross_entropy(self.head(hidden[named]), targets[named])


def param_groups(modules: list[torch.nn.Module], settings: TrainSettings) -> list[dict]:
    """AdamW groups: weight decay on matrices only."""
    named = [item for m in modules for item in m.named_parameters()]
    return [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": settings.weight_decay},
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]


def training_sample(index: int, settings: TrainSettings) -> tuple[data.Sample, tuple[data.Question, ...]]:
    """Train sample `index` and its follow-up questions; a fixed share of indices (drawn from the index as seed)
    describe the scene instead, in one turn.

    Trained on one-word answers alone, the models stayed at the answer prior for every kind but count
    after 2000 steps; with half the examples describing the scene, LLaVA reached 0.62 in the same steps."""
    sample = data.sample("train", index)
    draw = random.Random(index)
    if draw.random() < settings.describe_share:
        return data.describe(sample, draw.choice(data.DESCRIBE_ORDERS)), ()
    return sample, tuple(data.follow_ups(sample, settings.turns - 1, settings.follow_up_weights))


def lr_at(step: int, total: int, settings: TrainSettings) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    frac = (step - settings.warmup_steps) / max(1, total - settings.warmup_steps)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def forward_inputs(bb: Backbone, items) -> tuple[torch.Tensor, dict]:
    """(visual tokens [B, N, hidden], model kwargs): the visual tokens are computed here, by the same path as
    inference, so the probe can read them; the model gets them precomputed instead of the pixels."""
    inputs = collate(bb, items)
    features = bb.image_features(MultimodalBatch(inputs["input_ids"], inputs.pop("pixel_values"),
                                                 inputs.get("image_grid_thw")))
    inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(features))}
    return features, inputs


def token_targets(chosen: list[data.Sample], side: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = [s.scene.token_labels(side, grid) for s in chosen]
    return torch.tensor([k for k, _ in labels]), torch.tensor([c for _, c in labels])


def next_labels(labels: torch.Tensor) -> torch.Tensor:
    """[B, S] the label each position predicts (the next token's), IGNORE where nothing is predicted."""
    following = torch.full_like(labels, IGNORE)
    following[:, :-1] = labels[:, 1:]
    return following


def answer_loss_per_example(logits: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over each example's labelled tokens, then over the examples.

    logits [P, vocab] at the P positions where following [B, S] (next_labels) is labelled, in row-major order:
    the model computes the vocabulary projection there only (logits_to_keep), 12% of a LLaVA step saved.
    The transformers loss averages over all labelled tokens of the batch, so a 16-word description
    outweighed a one-word answer 8 to 1 and the questions barely trained."""
    predicted = following != IGNORE
    losses = torch.nn.functional.cross_entropy(logits, following[predicted], reduction="none")
    per_example = torch.zeros(following.shape[0], dtype=losses.dtype).index_add(0, predicted.nonzero()[:, 0], losses)
    return (per_example / predicted.sum(dim=1).clamp(min=1)).mean()


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()


class StepLog:
    """Step count, loss curve and progress lines of one part of training (vision or question steps)."""

    def __init__(self, title: str, total: int, began: float, progress: Callable[[str], None]):
        self.title, self.total, self.began, self.progress = title, total, began, progress
        self.step, self.curve, self.sums, self.seen = 0, [], {}, 0

    def record(self, **losses: float) -> None:
        self.step, self.seen = self.step + 1, self.seen + 1
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        if self.step % 25 == 0 or self.step == self.total:
            elapsed = time.perf_counter() - self.began
            means = {key: total / self.seen for key, total in self.sums.items()}
            self.curve.append({"step": self.step, **means, "elapsed_s": round(elapsed, 1)})
            shown = " ".join(f"{key.replace('_', ' ')} {value:.4f}" for key, value in means.items())
            self.progress(f"{self.title} step {self.step}/{self.total} {shown} ({elapsed:.0f} s)")
            self.sums, self.seen = {}, 0


def pretrain_vision(bb: Backbone, probe: TokenProbe, settings: TrainSettings, side: int, grid: int, processor,
                    tokenizer, log: StepLog, deadline: float) -> bool:
    """Vision steps: the vision tower and projector learn the token labels alone (no decoder in the loop).

    A vision-only step costs 15% (LLaVA) to 50% (Qwen) of a full step, so the tower sees many more scenes in
    the same time: LLaVA's tower labelled 39% of shape tokens' kinds right after 600 steps and 98% after 10000,
    while 2000 full steps with the probe loss left shape questions at 0.36.
    Returns False when the time limit stopped it."""
    opt = torch.optim.AdamW(param_groups([bb.model, probe], settings), lr=settings.lr)
    for step in range(settings.vision_steps):
        first = settings.first_example + step * settings.batch_size
        chosen = [data.sample("train", i) for i in range(first, first + settings.batch_size)]
        features, _ = forward_inputs(bb, [encode(bb, s, side, processor, tokenizer) for s in chosen])
        loss = probe.loss(features, *token_targets(chosen, side, grid))
        optimizer_step(opt, loss, lr_at(step, settings.vision_steps, settings))
        log.record(token_loss=float(loss.detach()))
        if time.perf_counter() > deadline:
            return False
    return True


def train(name: str, settings: TrainSettings, progress: Callable[[str], None] = print,
          init: str | Path | None = None) -> tuple[Backbone, dict]:
    """Train from scratch (or continue from the weights folder `init`); returns the model and a record.

    First settings.vision_steps vision steps (pretrain_vision), then the question steps: the whole model on
    questions and descriptions, per-example answer loss + token_loss_weight * probe loss + place_loss_weight *
    place loss."""
    torch.set_num_threads(settings.threads)
    if init is not None:
        from halfv_export.backbones.registry import load_backbone

        bb = load_backbone(name, init)
        previous = json.loads((Path(init) / "train.json").read_text()) if (Path(init) / "train.json").is_file() else None
    else:
        bb, previous = build_model(name, settings.seed), None
    side = image_side(name)
    processor = processor_for(bb, side)
    tokenizer = zoo_tokenizer.load()
    model = bb.model.train()
    grid = tokens_per_side(name)
    probe = TokenProbe(bb.hidden_size) if settings.token_loss_weight or settings.vision_steps else None
    began = time.perf_counter()
    deadline = began + settings.time_limit_s
    vision = StepLog("vision", settings.vision_steps, began, progress)
    finished = pretrain_vision(bb, probe, settings, side, grid, processor, tokenizer, vision, deadline) \
        if settings.vision_steps else True

    place = PlaceProbe(bb.hidden_size, grid) if settings.place_loss_weight else None
    mention = MentionProbe(bb.hidden_size, tokenizer) if settings.mention_loss_weight else None
    opt = torch.optim.AdamW(param_groups([model] + [p for p in (probe, place, mention) if p], settings), lr=settings.lr)
    steps_per_epoch = settings.examples // settings.batch_size
    answers = StepLog("questions", steps_per_epoch * settings.epochs, began, progress)
    order = torch.Generator().manual_seed(settings.seed)
    for epoch in range(settings.epochs if finished else 0):
        perm = torch.randperm(settings.examples, generator=order).tolist()
        for i in range(steps_per_epoch):
            idx = perm[i * settings.batch_size:(i + 1) * settings.batch_size]
            chosen, follow_ups = zip(*(training_sample(settings.first_example + j, settings) for j in idx))
            features, inputs = forward_inputs(bb, [encode(bb, s, side, processor, tokenizer, follow_ups=f)
                                                   for s, f in zip(chosen, follow_ups)])
            following = next_labels(inputs.pop("labels"))
            out = model(**inputs, output_hidden_states=bool(place or mention), logits_to_keep=following != IGNORE)
            answer_loss = loss = answer_loss_per_example(out.logits, following)
            losses = {"loss": float(answer_loss.detach())}
            if place:
                place_loss = place.loss(out.hidden_states[PLACE_LAYER], inputs["input_ids"] == bb.image_token_id)
                loss = loss + settings.place_loss_weight * place_loss
                losses["place_loss"] = float(place_loss.detach())
            if mention:
                targets = mention.targets(chosen, inputs["input_ids"], bb.image_token_id)
                mention_loss = mention.loss(out.hidden_states[MENTION_LAYER], targets)
                loss = loss + settings.mention_loss_weight * mention_loss
                losses["mention_loss"] = float(mention_loss.detach())
            if settings.token_loss_weight:
                token_loss = probe.loss(features, *token_targets(chosen, side, grid))
                loss = loss + settings.token_loss_weight * token_loss
                losses["token_loss"] = float(token_loss.detach())
            optimizer_step(opt, loss, lr_at(answers.step, answers.total, settings))
            answers.record(**losses)
            if time.perf_counter() > deadline:
                finished = False
                break
        if not finished:
            break
    if not finished:
        progress(f"time limit {settings.time_limit_s:.0f} s reached (vision step {vision.step}, "
                 f"question step {answers.step}): stopping")
    model.eval()
    record = {"model": name, "settings": asdict(settings), "vision_steps": vision.step, "steps": answers.step,
              "planned_steps": answers.total, "stopped_early": not finished,
              "train_seconds": round(time.perf_counter() - began, 1), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "vision_curve": vision.curve, "loss_curve": answers.curve,
              "init": str(init) if init is not None else None, "previous": previous}
    return bb, record


def save(bb: Backbone, name: str, out_dir: str | Path, record: dict) -> Path:
    """config.json + model.safetensors + preprocessor_config.json + tokenizer.json + train.json, atomically."""
    side = image_side(name)
    with atomic_dir(out_dir) as tmp:
        tmp = Path(tmp)
        bb.model.save_pretrained(tmp, safe_serialization=True)
        processor_for(bb, side).save_pretrained(tmp)
        zoo_tokenizer.save(tmp)
        (tmp / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    return Path(out_dir)
