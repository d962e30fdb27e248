"""Shapes VQA: deterministic from the seed, splits disjoint, and every answer readable off the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from halfv_zoo import data

pytestmark = pytest.mark.zoo

SIDE = 168


def test_samples_are_deterministic():
    a, b = data.samples("train", 20), data.samples("train", 20)
    assert a == b
    assert np.array_equal(np.asarray(a[3].image(SIDE)), np.asarray(b[3].image(SIDE)))


def test_splits_differ():
    scenes = {split: [s.scene for s in data.samples(split, 50)] for split in data.SPLIT_SEEDS}
    assert scenes["train"] != scenes["val"] != scenes["test"]
    assert not set(scenes["train"]) & set(scenes["test"])


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        data.samples("dev", 1)


def test_question_kinds_and_answers_cover_the_vocabulary():
    rows = data.samples("train", 400)
    assert {s.question.kind for s in rows} == set(data.QUESTION_KINDS)
    assert {s.question.answer for s in rows} == set(data.answer_vocabulary())


def colour_mask(image: np.ndarray, colour: str) -> np.ndarray:
    """Pixels within a small distance of a palette colour (backgrounds are far from every colour)."""
    return np.abs(image.astype(int) - np.array(data.COLOURS[colour])).sum(axis=-1) < 30


def shape_fill(mask: np.ndarray) -> float:
    """Filled share of the mask's bounding box: square ~1, circle ~0.79, cross ~0.56, triangle ~0.5."""
    ys, xs = np.nonzero(mask)
    return mask.sum() / ((ys.ptp() + 1) * (xs.ptp() + 1))


FILL = {"square": (0.93, 1.01), "circle": (0.72, 0.86), "cross": (0.54, 0.62), "triangle": (0.4, 0.535)}


def assert_answer_read_off_pixels(s: data.Sample, q: data.Question) -> None:
    """Read the answer of a question about the scene of s back from the rendered pixels."""
    image = np.asarray(s.image(336))
    present = {c: colour_mask(image, c) for c in data.COLOURS}
    present = {c: m for c, m in present.items() if m.sum() > 200}
    if q.kind == "count":
        assert data.COUNT_WORDS.index(q.answer) == len(present), (s, q)
        return
    # the question names a colour, a shape or both; find the one pixel region it means
    colour = next((c for c in data.COLOURS if c in q.prompt.split() or f"{c}?" in q.prompt), None)
    if q.kind == "colour":
        kind = q.prompt.rstrip("?").split()[-1]
        matches = [c for c, m in present.items() if FILL[kind][0] <= shape_fill(m) <= FILL[kind][1]]
        assert matches == [q.answer], (s, q, {c: shape_fill(m) for c, m in present.items()})
        return
    mask = present[colour]
    if q.kind == "shape":
        lo, hi = FILL[q.answer]
        assert lo <= shape_fill(mask) <= hi, (s, q, shape_fill(mask))
        return
    ys, xs = np.nonzero(mask)
    centre = xs.mean() if q.kind == "horizontal" else ys.mean()
    expected = ("left", "right") if q.kind == "horizontal" else ("top", "bottom")
    assert q.answer == expected[int(centre >= image.shape[0] / 2)], (s, q)


@pytest.mark.parametrize("split", ["train", "test"])
def test_answers_are_right_by_construction(split):
    """Read each answer back from the rendered pixels, independently of the scene description."""
    for s in data.samples(split, 100):
        assert_answer_read_off_pixels(s, s.question)


@pytest.mark.slow
def test_follow_up_questions_are_right_and_not_given_away_by_earlier_turns():
    """Follow-ups (training-only later turns) are deterministic, right by the pixels, never repeat a
    question, and never ask for a colour or shape that earlier turns already say in words."""
    import re

    lengths = []
    for s in data.samples("train", 60):
        ups = data.follow_ups(s, 4)
        assert ups == data.follow_ups(s, 4) and len(ups) <= 4
        lengths.append(len(ups))
        said: set[str] = set()
        for q in (s.question, *ups):
            assert_answer_read_off_pixels(s, q)
            if q.kind in ("colour", "shape"):
                assert q.answer not in said, (s, ups)
            said |= set(re.findall(r"\w+", f"{q.prompt} {q.answer}".lower()))
        prompts = [q.prompt for q in (s.question, *ups)]
        assert len(set(prompts)) == len(prompts)
    assert sum(lengths) / len(lengths) > 3  # most conversations get all four
    assert data.follow_ups(data.sample("train", 0), 0) == []


def test_follow_up_kind_weights_pick_the_kinds_asked():
    """Weighted follow-ups are deterministic and keep the rules above; a kind of weight 0 is never drawn, and
    favouring shape questions asks more of them than even draws."""
    only_shape = (0.0, 1.0, 0.0, 0.0, 0.0)
    counts = {"even": 0, "weighted": 0}
    for s in data.samples("train", 60):
        ups = data.follow_ups(s, 4, only_shape)
        assert ups == data.follow_ups(s, 4, only_shape)
        assert all(q.kind == "shape" and q.answer not in data.words_said(s.question) for q in ups)
        assert len(ups) == len({q.prompt for q in ups})
        counts["even"] += sum(q.kind == "shape" for q in data.follow_ups(s, 4))
        counts["weighted"] += sum(q.kind == "shape" for q in data.follow_ups(s, 4, (0.5, 4.0, 0.5, 2.0, 1.0)))
    assert counts["weighted"] > 1.5 * counts["even"], counts


@pytest.mark.parametrize("order", data.DESCRIBE_ORDERS)
def test_descriptions_are_right_by_construction(order):
    """The training-only description names every shape present, kind by kind (SHAPES order) or colour by colour
    (COLOURS order), with its place, as the pixels show it."""
    for s in data.samples("train", 40):
        described = data.describe(s, order)
        assert described.scene == s.scene and described.question.prompt == data.DESCRIBE_PROMPTS[order]
        words = described.question.answer.split()
        assert len(words) == 4 * len(s.scene.things)
        image = np.asarray(s.image(336))
        keys = []
        for first, second, row, col in zip(words[0::4], words[1::4], words[2::4], words[3::4]):
            kind, colour = (first, second) if order == "kinds" else (second, first)
            keys.append(data.SHAPES.index(kind) if order == "kinds" else list(data.COLOURS).index(colour))
            mask = colour_mask(image, colour)
            lo, hi = FILL[kind]
            assert mask.sum() > 200 and lo <= shape_fill(mask) <= hi, (s, colour, kind)
            ys, xs = np.nonzero(mask)
            assert row == ("top", "bottom")[int(ys.mean() >= 168)] and col == ("left", "right")[int(xs.mean() >= 168)]
        assert keys == sorted(keys)


@pytest.mark.parametrize("side,grid", [(168, 12), (336, 12)])
def test_token_labels_are_read_off_the_pixels(side, grid):
    """Each visual token's label is the palette colour covering most of its cell (background when none does),
    and its kind is the kind of the shape with that colour."""
    colours = sorted(data.COLOURS)
    for s in data.samples("train", 30):
        kinds, hues = s.scene.token_labels(side, grid)
        image = np.asarray(s.image(side))
        cell = side // grid
        by_colour = {t.colour: t for t in s.scene.things}
        for i, (kind, hue) in enumerate(zip(kinds, hues)):
            r, c = divmod(i, grid)
            block = image[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
            shares = {name: colour_mask(block, name).mean() for name in colours}
            background_share = 1 - sum(shares.values())
            if hue == 0:
                assert kind == 0 and background_share >= max(shares.values()), (s, i)
            else:
                name = colours[hue - 1]
                assert shares[name] == max(shares.values()) and shares[name] >= background_share, (s, i)
                assert data.SHAPES[kind - 1] == by_colour[name].kind
        assert {colours[h - 1] for h in hues if h} == set(by_colour)  # every shape owns a token
