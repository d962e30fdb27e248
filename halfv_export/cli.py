"""The `halfv-export` command: a thin click layer that parses, calls into the package, and prints.

User errors (UserError) print one line and exit 2; anything else is a bug and keeps its traceback.
Options shared by several commands are defined once below and reused.
"""

from __future__ import annotations

import functools
import sys

import click

from .errors import UserError


def user_errors(fn):
    """Turn UserError into `error: <message>` and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    return wrapper


# -- shared options ---------------------------------------------------------------------------------
model_option = click.option("--model", "model", required=True, metavar="NAME",
                            help="registry name (see `halfv-export models`)")
model_path_option = click.option("--model-path", type=click.Path(), default=None,
                                 help="local Hugging Face checkpoint directory (safetensors)")
random_init_option = click.option("--random-init", is_flag=True,
                                  help="build the named architecture with random weights (structure/speed work)")
graphs_option = click.option("--graphs", "graphs_dir", required=True, type=click.Path(),
                             help="folder written by `halfv-export export`")


def positive_int(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter("must be a positive integer")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="halfv-export")
def cli():
    """Compile multimodal LLMs into ONNX/TensorRT graphs with HalfV visual-token pruning inside the decoder."""


@cli.command()
@user_errors
def models():
    """List the known backbones and the profile each uses."""
    from .backbones.registry import MODELS
    from .profile import shipped_profile

    rows = [("name", "family", "layers", "hidden", "profile (ivr/ssr/mode)", "weights")]
    for entry in MODELS.values():
        text = entry.make_config().text_config
        prof = shipped_profile(entry.profile)
        rows.append((entry.name, entry.backbone.family, str(text.num_hidden_layers), str(text.hidden_size),
                     f"{entry.profile} ({prof.ivr_layer}/{prof.ssr_layer}/{prof.ssr_mode}, {prof.source})",
                     "built-in (random, seed 0)" if entry.tiny else entry.hf_repo))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


# -- calibrate (halfv_export.calibration) -----------------------------------------------------------

# -- export (halfv_export.graphs) -------------------------------------------------------------------

# -- check (halfv_export.parity) --------------------------------------------------------------------

# -- run / build ------------------------------------------------------------------------------------

# -- bench (halfv_export.bench) ---------------------------------------------------------------------

# -- lint / engine / bundle (halfv_export.graphs.lint, halfv_export.engines, halfv_export.deploy) ----


def main():
    cli(prog_name="halfv-export")


if __name__ == "__main__":
    main()
