"""`halfv-export zoo train|data|card` and `eval`: the shapes zoo, tiny VLMs trained on procedural shapes VQA
so that pruning can be scored on accuracy.

The zoo is the separate halfv-zoo package (zoo/ in the source tree, registered into the model registry
through an entry point); halfv-export itself names none of it. zoo_module() is the one place the CLI
imports it, inside the commands, so the rest of the CLI works without it and a missing zoo is one
`error: ... needs the 'halfv-zoo' package` line.
"""

from __future__ import annotations

import importlib

import click

from ..core.errors import UserError
from ..core.extras import require
from ..core.progress import say
from . import HalfvGroup
from .options import CsvList, model_option, model_path_option, needs, positive_int, torch_threads_option

ZOO_PACKAGE, ZOO_DISTRIBUTION = "halfv_zoo", "halfv-zoo"
ZOO_NAMES = ["shapes-qwen2.5-vl", "shapes-llava"]


def zoo_module(name: str):
    """The zoo's module `name` (train, data, models, card, eval), imported now."""
    require(ZOO_DISTRIBUTION)
    return importlib.import_module(f"{ZOO_PACKAGE}.{name}")


def kind_weights(ctx, param, value):
    """'shape=4,horizontal=2' -> weights per the zoo's data.QUESTION_KINDS (kinds not named: 1); 'even' -> 'even'."""
    if value is None or value == "even":
        return value
    kinds = zoo_module("data").QUESTION_KINDS
    weights = dict.fromkeys(kinds, 1.0)
    for item in CsvList(str).convert(value, param, ctx):
        kind, _, number = item.partition("=")
        if kind.strip() not in weights:
            raise click.BadParameter(f"{item!r}: expected KIND=WEIGHT with KIND one of {', '.join(kinds)}")
        try:
            weights[kind.strip()] = float(number)
        except ValueError:
            raise click.BadParameter(f"{item!r}: the weight is not a number") from None
    if min(weights.values()) < 0 or not sum(weights.values()) > 0:
        raise click.BadParameter("weights must be >= 0, and not all 0")
    return tuple(weights.values())


@click.group(cls=HalfvGroup)
def zoo():
    """Tiny VLMs trained here on procedural shapes VQA (the halfv-zoo package in zoo/; weights in zoo/halfv_zoo/weights)."""


@zoo.command("train")
@click.argument("name", type=click.Choice(ZOO_NAMES))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="weights folder to write (default: the committed zoo/halfv_zoo/weights/NAME)")
@click.option("--examples", type=int, default=None, callback=positive_int,
              help="training examples (train-split indices first..first+N-1)")
@click.option("--epochs", type=int, default=None, callback=positive_int)
@click.option("--batch-size", type=int, default=None, callback=positive_int)
@click.option("--lr", type=float, default=None, help="peak learning rate (AdamW, warmup + cosine)")
@click.option("--seed", type=int, default=None)
@click.option("--time-limit", type=float, default=None, help="stop and save after this many seconds")
@click.option("--first-example", type=int, default=None, help="first train-split index used (default 0)")
@click.option("--describe-share", type=click.FloatRange(0, 1), default=None,
              help="share of examples that describe the whole scene instead of one question (default 0.5)")
@click.option("--turns", type=click.IntRange(min=1), default=None,
              help="questions per image in a question example: the first as at inference, then follow-ups as later "
                   "chat turns (default 5)")
@click.option("--vision-steps", type=click.IntRange(min=0), default=None,
              help="steps of the vision tower alone on the per-token labels, before the question steps "
                   "(default: shapes-llava 10000, shapes-qwen2.5-vl 4000)")
@click.option("--token-loss-weight", type=click.FloatRange(min=0), default=None,
              help="weight of the visual-token probe loss (default 1; 0 turns the probe off)")
@click.option("--place-loss-weight", type=click.FloatRange(min=0), default=None,
              help="weight of the visual-token place loss (default 1; 0 turns it off)")
@click.option("--mention-loss-weight", type=click.FloatRange(min=0), default=None,
              help="weight of the mention place loss: each text word naming a shape learns that shape's image "
                   "quadrant (default 1; 0 turns it off)")
@click.option("--follow-up-weights", default=None, callback=kind_weights,
              help="question kinds of the follow-up turns, e.g. 'shape=4,horizontal=2' (kinds not named: 1), or "
                   "'even' (default: shapes-llava even, shapes-qwen2.5-vl "
                   "colour=0.5,shape=4,count=0.5,horizontal=2,vertical=2)")
@torch_threads_option
@click.option("--init", "init", type=click.Path(file_okay=False), default=None,
              help="continue from this weights folder instead of a random init (its train.json is kept)")
@needs(ZOO_DISTRIBUTION, "export")
def zoo_train(name, out, examples, epochs, batch_size, lr, seed, time_limit, first_example, describe_share,
              turns, vision_steps, token_loss_weight, place_loss_weight, mention_loss_weight, follow_up_weights, threads,
              init):
    """Train NAME from scratch on the shapes train split (CPU, deterministic, progress on stderr)."""
    import dataclasses
    from pathlib import Path

    models, training = zoo_module("models"), zoo_module("train")
    given = dict(examples=examples, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, time_limit_s=time_limit,
                 first_example=first_example, describe_share=describe_share, turns=turns,
                 vision_steps=vision_steps, token_loss_weight=token_loss_weight,
                 place_loss_weight=place_loss_weight, mention_loss_weight=mention_loss_weight,
                 follow_up_weights=follow_up_weights, threads=threads)
    settings = dataclasses.replace(training.DEFAULTS[name], **{k: v for k, v in given.items() if v is not None})
    if follow_up_weights == "even":  # overrides a default mix: kinds drawn uniformly
        settings = dataclasses.replace(settings, follow_up_weights=None)
    if settings.batch_size > settings.examples:
        raise UserError(f"--batch-size {settings.batch_size} is larger than --examples {settings.examples}")
    if init is not None and not (Path(init) / "config.json").is_file():
        raise UserError(f"--init {init} is not a weights folder (no config.json)")
    bb, record = training.train(name, settings, progress=say, init=init)
    path = training.save(bb, name, out or models.weights_dir(name), record)
    click.echo(f"wrote {path} ({record['steps']} steps, {record['train_seconds']:.0f} s, "
               f"final answer loss {record['loss_curve'][-1]['loss']:.4f})")


@zoo.command("data")
@click.argument("name", type=click.Choice(ZOO_NAMES))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", show_default=True)
@click.option("--samples", type=int, default=64, show_default=True, callback=positive_int)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@needs(ZOO_DISTRIBUTION)
def zoo_data(name, split, samples, out):
    """Write shapes questions as a `calibrate --data` folder (images at NAME's input size + prompts.jsonl)."""
    zoo_module("data").write_folder(split, samples, zoo_module("models").image_side(name), out)
    click.echo(f"wrote {samples} {split} questions to {out}")


@zoo.command("card")
@click.argument("name", type=click.Choice(ZOO_NAMES))
@click.option("--samples", type=int, default=300, show_default=True, callback=positive_int,
              help="test questions to measure the unpruned accuracy on")
@needs(ZOO_DISTRIBUTION, "export")
def zoo_card(name, samples):
    """Measure NAME's test accuracy and write its MODEL_CARD.md (and accuracy.json) into the weights folder."""
    path, acc = zoo_module("card").write_card(name, samples)
    click.echo(f"wrote {path} (test accuracy {acc:.3f} on {samples} questions)")


@click.command("eval")
@model_option
@model_path_option
@click.option("--methods", type=CsvList(str), default="unpruned,halfv,halfv-oneshot,fastv,random", show_default=True,
              help="comma-separated: unpruned, halfv, halfv-oneshot, fastv, random")
@click.option("--keep", "keeps", type=CsvList(float, low=0, low_open=True, high=1), default="0.5,0.25,0.125",
              show_default=True, help="comma-separated visual keep budgets (HalfV ivr_keep, FastV/random keep)")
@click.option("--samples", type=int, default=200, show_default=True, callback=positive_int,
              help="test questions (the first N of the test split)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="folder for eval.json and eval.png (default: eval-out/<model>/)")
@click.option("--graphs", "graphs_dir", type=click.Path(), default=None,
              help="evaluate this exported graphs folder through ONNX Runtime instead of the PyTorch methods")
@click.option("--sweep-layers", is_flag=True,
              help="instead: HalfV accuracy for every IVR/SSR layer pair at the profile's budgets (sweep.json/png)")
@needs(ZOO_DISTRIBUTION, "export", "plots")
def eval_command(model, model_path, methods, keeps, samples, out_dir, graphs_dir, sweep_layers):
    """Shapes VQA test accuracy per pruning method and budget, relative to unpruned, vs FLOPs speedup."""
    from pathlib import Path

    from ..backbones.registry import get_entry, load_backbone
    from ..core.fileio import atomic_path, write_json

    if model not in ZOO_NAMES:
        raise UserError(f"eval needs a zoo model ({', '.join(ZOO_NAMES)}): its questions have known answers")
    zoo_eval = zoo_module("eval")
    unknown = [m for m in methods if m not in zoo_eval.METHODS]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(zoo_eval.METHODS)}")
    bb = load_backbone(model, model_path)
    out = Path(out_dir or Path("eval-out") / model)
    if sweep_layers:
        stem, draw = "sweep", zoo_eval.plot_sweep
        report = zoo_eval.sweep_layers(bb, model, get_entry(model).shipped_profile(), samples, say)
    elif graphs_dir is not None:
        stem, draw = "eval", zoo_eval.plot
        report = zoo_eval.evaluate_graphs(bb, model, graphs_dir, samples, say)
    else:
        stem, draw = "eval", zoo_eval.plot
        report = zoo_eval.evaluate(bb, model, get_entry(model).shipped_profile(), list(methods), list(keeps),
                                   samples, say)
    write_json(out / f"{stem}.json", report)
    with atomic_path(out / f"{stem}.png") as tmp:
        draw(report, tmp)
    click.echo(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.png'}")


COMMANDS = [zoo, eval_command]
