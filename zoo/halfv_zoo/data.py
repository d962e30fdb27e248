"""Procedural shapes VQA: a scene of 1-4 coloured shapes, one question about it, a one-word answer.

A scene is a 2x2 grid of cells; each shape sits inside its own cell (random size and offset in the
cell), so "left/right" and "top/bottom" are decided by the cell and never ambiguous. Colours are
distinct within a scene and so are shape kinds, so "the red one" and "the circle" each name exactly
one shape. Backgrounds are light neutrals, plain or textured (checker or stripes), never one of the
shape colours.

    sample(split, i) --rng(seed of split, i)--> Scene (objects, background) + Question (prompt, answer)
    Scene.render(side) --PIL--> RGB image side x side

Sample i of a split is always the same; the splits use disjoint seed streams.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
           "purple": (140, 60, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "cross")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
# light neutrals: far from every shape colour, so a pixel's class is unambiguous
BACKGROUNDS = [(245, 245, 245), (230, 230, 215), (215, 222, 232), (225, 215, 215)]
TEXTURES = ("plain", "checker", "stripes")
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}
QUESTION_KINDS = ("colour", "shape", "count", "horizontal", "vertical")
GRID = 2  # cells per side
SHAPE_SIZE = (0.5, 0.85)  # shape side as a share of its cell


@dataclass(frozen=True)
class Thing:
    """One shape: kind, colour, grid cell, and its box in unit coordinates (x0, y0, x1, y1)."""

    kind: str
    colour: str
    row: int
    col: int
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: tuple[int, int, int]
    texture: str
    period: int  # texture period in pixels at 336 px (scaled with the side)

    def render(self, side: int) -> Image.Image:
        img = Image.new("RGB", (side, side), self.background)
        draw = ImageDraw.Draw(img)
        if self.texture != "plain":
            darker = tuple(max(0, c - 14) for c in self.background)
            step = max(2, self.period * side // 336)
            for y in range(0, side, step):
                for x in range(0, side, step):
                    odd = (x // step + y // step) % 2 if self.texture == "checker" else (y // step) % 2
                    if odd:
                        draw.rectangle([x, y, x + step - 1, y + step - 1], fill=darker)
        for thing in self.things:
            _draw_thing(draw, thing, side, COLOURS[thing.colour])
        return img

    def token_labels(self, side: int, grid: int) -> tuple[list[int], list[int]]:
        """Per cell of a grid x grid split of the image (raster order, one cell per visual token): the shape
        kind and colour covering most of the cell, as 1 + index in SHAPES / sorted(COLOURS), 0 for background."""
        owner = Image.new("L", (side, side), 0)  # pixel -> 1 + index of the thing drawn there
        draw = ImageDraw.Draw(owner)
        for i, thing in enumerate(self.things):
            _draw_thing(draw, thing, side, i + 1)
        cell = side // grid
        pixels = np.asarray(owner)[:cell * grid, :cell * grid].reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3)
        counts = np.stack([(pixels == v).sum(axis=(2, 3)) for v in range(len(self.things) + 1)], axis=-1)
        majority = counts.argmax(axis=-1).reshape(-1).tolist()
        colours = sorted(COLOURS)
        kinds = [0 if m == 0 else 1 + SHAPES.index(self.things[m - 1].kind) for m in majority]
        hues = [0 if m == 0 else 1 + colours.index(self.things[m - 1].colour) for m in majority]
        return kinds, hues


@dataclass(frozen=True)
class Question:
    kind: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class Sample:
    split: str
    index: int
    scene: Scene
    question: Question

    def image(self, side: int) -> Image.Image:
        return self.scene.render(side)


def _draw_thing(draw: ImageDraw.ImageDraw, thing: Thing, side: int, fill) -> None:
    x0, y0, x1, y1 = (round(v * side) for v in thing.box)
    if thing.kind == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif thing.kind == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif thing.kind == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    else:  # cross: two bars a third of the box thick
        t = (x1 - x0) / 3
        draw.rectangle([x0 + t, y0, x1 - t, y1], fill=fill)
        draw.rectangle([x0, y0 + t, x1, y1 - t], fill=fill)


def make_scene(rng: random.Random) -> Scene:
    count = rng.randint(1, GRID * GRID)
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], count)
    colours = rng.sample(sorted(COLOURS), count)
    kinds = rng.sample(SHAPES, count)
    cell = 1 / GRID
    things = []
    for (row, col), colour, kind in zip(cells, colours, kinds):
        size = cell * rng.uniform(*SHAPE_SIZE)  # square boxes: shapes keep their proportions
        x0 = col * cell + rng.uniform(0.04 * cell, cell - size - 0.04 * cell)
        y0 = row * cell + rng.uniform(0.04 * cell, cell - size - 0.04 * cell)
        things.append(Thing(kind, colour, row, col, (x0, y0, x0 + size, y0 + size)))
    return Scene(tuple(things), rng.choice(BACKGROUNDS), rng.choice(TEXTURES), rng.choice([8, 12, 16, 24]))


QUESTION_TEMPLATES = {
    "colour": "What colour is the {kind}?",
    "shape": "Which shape is {colour}?",
    "count": "How many shapes?",
    "horizontal": "Is the {colour} {kind} left or right?",
    "vertical": "Is the {colour} {kind} top or bottom?",
}


def make_question(scene: Scene, kind: str, rng: random.Random) -> Question:
    """A question of the given kind about one randomly chosen shape; the answer is read off the scene."""
    thing = rng.choice(scene.things)
    prompt = QUESTION_TEMPLATES[kind].format(kind=thing.kind, colour=thing.colour)
    answers = {"colour": thing.colour, "shape": thing.kind, "count": COUNT_WORDS[len(scene.things)],
               "horizontal": ("left", "right")[thing.col], "vertical": ("top", "bottom")[thing.row]}
    return Question(kind, prompt, answers[kind])


def sample(split: str, index: int) -> Sample:
    rng = random.Random(SPLIT_SEEDS[split] * 1_000_003 + index)
    scene = make_scene(rng)
    return Sample(split, index, scene, make_question(scene, rng.choice(QUESTION_KINDS), rng))


def follow_ups(s: Sample, count: int, kind_weights: tuple[float, ...] | None = None) -> list[Question]:
    """Up to `count` more questions about the scene of `s`, for training-only later turns of a conversation
    (one image, several questions, as in LLaVA's conversation data): every question costs a few text tokens
    next to the image's 144 visual ones. A question that earlier turns already answer in words is skipped
    ("Which shape is red?" after "Is the red circle left or right?"): it could be read off the text.
    Question kinds are drawn uniformly, or with `kind_weights` (one per QUESTION_KINDS entry)."""
    rng = random.Random(SPLIT_SEEDS[s.split] * 7_000_003 + s.index)
    asked = [s.question]
    said = words_said(s.question)
    for _ in range(4 * count):
        if len(asked) > count:
            break
        kind = rng.choice(QUESTION_KINDS) if kind_weights is None else rng.choices(QUESTION_KINDS, kind_weights)[0]
        q = make_question(s.scene, kind, rng)
        if q.prompt in (a.prompt for a in asked) or (q.kind in ("colour", "shape") and q.answer in said):
            continue
        asked.append(q)
        said |= words_said(q)
    return asked[1:]


def words_said(q: Question) -> set[str]:
    """The words of a question and its answer, lower case."""
    return set(re.findall(r"\w+", f"{q.prompt} {q.answer}".lower()))


# Training-only descriptions, two orders. Listed kind by kind ("circle red top left square ..."), the word after
# each kind is that shape's colour: the model has to find the shape by its kind and read its colour, the lookup
# "What colour is the circle?" needs, four times per example. Colour by colour ("red circle ...") is the lookup of
# "Which shape is red?". (Reading-order descriptions never ask for that lookup: with them LLaVA answered colour
# questions at 0.45-0.56, its attention spread over every shape alike.)
DESCRIBE_PROMPTS = {"kinds": "Describe the shapes.", "colours": "Describe the colours."}
DESCRIBE_ORDERS = tuple(DESCRIBE_PROMPTS)


def describe(s: Sample, order: str = "kinds") -> Sample:
    """The same scene with a training-only question: every shape as "kind colour row col" in SHAPES order
    (order "kinds") or as "colour kind row col" in COLOURS order (order "colours")."""
    if order == "kinds":
        things = sorted(s.scene.things, key=lambda t: SHAPES.index(t.kind))
        first = [(t.kind, t.colour) for t in things]
    else:
        things = sorted(s.scene.things, key=lambda t: list(COLOURS).index(t.colour))
        first = [(t.colour, t.kind) for t in things]
    words = [f"{a} {b} {('top', 'bottom')[t.row]} {('left', 'right')[t.col]}" for (a, b), t in zip(first, things)]
    return Sample(s.split, s.index, s.scene, Question("describe", DESCRIBE_PROMPTS[order], " ".join(words)))


def samples(split: str, count: int, start: int = 0) -> list[Sample]:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLIT_SEEDS)}")
    return [sample(split, i) for i in range(start, start + count)]


def answer_vocabulary() -> list[str]:
    return sorted(set(COLOURS) | set(SHAPES) | set(COUNT_WORDS[1:]) | {"left", "right", "top", "bottom"})


def write_folder(split: str, count: int, side: int, out) -> None:
    """Images + prompts.jsonl in the `--data DIR` format of calibration (e.g. to calibrate on val questions)."""
    import json
    from pathlib import Path

    from halfv_export.core.fileio import atomic_dir

    with atomic_dir(out) as tmp:
        lines = []
        for s in samples(split, count):
            name = f"{split}-{s.index:05d}.png"
            s.image(side).save(Path(tmp) / name)
            lines.append(json.dumps({"image": name, "prompt": s.question.prompt, "answer": s.question.answer}))
        (Path(tmp) / "prompts.jsonl").write_text("\n".join(lines) + "\n")
