"""`halfv-export models` (the registry as a table) and `random-checkpoint` (backbones.random_checkpoint).

`models` runs on the base install: the registry itself is built from transformers configs, so without the
export extra it lists what the shipped profiles (core/profiles/*.json, torch-free) say and notes on stderr
what is left out.
"""

from __future__ import annotations

import click

from ..core.extras import missing_extra
from ..core.profile import PROFILES_DIR, Profile
from ..core.progress import say
from .options import model_option, needs

HEADER = ("name", "family", "layers", "hidden", "profile (ivr/ssr/mode)", "weights")


def table(rows: list[tuple]) -> list[str]:
    """Left-aligned columns, two spaces apart, no trailing blanks."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _profile_cell(name: str, prof: Profile) -> str:
    return f"{name} ({prof.ivr_layer}/{prof.ssr_layer}/{prof.ssr_mode}, {prof.source})"


def registry_rows(entries) -> list[tuple]:
    """One row per registry entry (needs transformers: the layer count and width come from its config)."""
    rows = []
    for entry in entries:
        text = entry.make_config().text_config
        rows.append((entry.name, entry.backbone.family, str(text.num_hidden_layers), str(text.hidden_size),
                     _profile_cell(entry.profile, entry.shipped_profile()),
                     "built-in (random, seed 0)" if entry.tiny else entry.hf_repo or "zoo (trained here)"))
    return rows


def profile_rows() -> list[tuple]:
    """One row per shipped profile, from the JSON alone: the torch-free part of the table."""
    rows = []
    for path in sorted(PROFILES_DIR.glob("*.json")):
        prof = Profile.load(path)
        rows.append((prof.model or path.stem, prof.backbone, str(prof.num_layers), "-", _profile_cell(path.stem, prof), "-"))
    return rows


@click.command()
def models():
    """List the known backbones and the profile each uses."""
    try:
        from ..backbones.registry import models as registered
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc, command="the full table (hidden sizes, weights, plugin models such as the zoo)")
        if missing is None:
            raise
        rows = profile_rows()
        say(f"note: shipped profiles only; {missing}")
    else:
        rows = registry_rows(registered().values())
    for line in table([HEADER, *rows]):
        click.echo(line)


@click.command("random-checkpoint")
@model_option
@click.option("--out", "out", required=True, type=click.Path(), help="new folder for the checkpoint (must not "
              "exist or be empty)")
@click.option("--layers", type=int, default=None, help="decoder layers (default: the release's)")
@click.option("--vision-depth", type=int, default=None, help="vision-tower blocks (default: the release's)")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True,
              help="dtype of the written weights")
@click.option("--seed", type=int, default=0, show_default=True, help="same seed, same bytes")
@needs("export")
def random_checkpoint(model, out, layers, vision_depth, dtype, seed):
    """Write a Hugging Face checkpoint with the release architecture and random weights (rehearse a deployment)."""
    from ..backbones.random_checkpoint import write_random_checkpoint

    written = write_random_checkpoint(model, out, layers=layers, vision_depth=vision_depth, dtype=dtype, seed=seed)
    params = f"{written.parameters / 1e9:.2f} B" if written.parameters >= 1e9 else f"{written.parameters / 1e6:.2f} M"
    size = f"{written.nbytes / 1e9:.2f} GB" if written.nbytes >= 1e9 else f"{written.nbytes / 1e6:.1f} MB"
    click.echo(f"{model}: {params} parameters, {size} of {dtype} weights in {written.shards} safetensors "
               f"file(s), {written.seconds:.1f} s")
    click.echo(f"checkpoint: {written.path}")


COMMANDS = [models, random_checkpoint]
