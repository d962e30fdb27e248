"""The `halfv-export` command: the click group, its -v/-q, and the one place errors become exit codes.

A thin layer: each command parses, calls into the package, prints its answer on stdout. Progress goes to
stderr through the `halfv_export` logger (core/progress.py), whose level -v (DEBUG) and -q (WARNING: no
progress lines, no bars) set.

Exit codes: 0 done; 1 a check that ran and failed (check, lint, build); 2 a usage problem: click's own
usage errors, a UserError (one `error: <message>` line on stderr), or a missing optional package
(`error: <command> needs the '<extra>' extra: pip install 'halfv-export[<extra>]'`, core/extras.py).
Anything else is a bug and keeps its traceback.

The commands live one module per group: models.py (models, random-checkpoint), export.py (export, build,
check, calibrate), run.py (run, bench), deploy.py (lint, engine, bundle, triton, serve), zoo.py (zoo ...,
eval); shared options in options.py. Every heavy import (torch, transformers, onnx, polygraphy, tritonclient,
pytriton, matplotlib) happens inside a command function, so `--help`, `models` and `run` need only the
base install.
"""

from __future__ import annotations

import logging

import click

from ..core import progress
from ..core.errors import UserError
from ..core.extras import MissingExtra, missing_extra

LOG = progress.LOGGER


class HalfvGroup(click.Group):
    """A click group whose invoke() is the one error handler of every command below it (zoo's subgroup is
    one too, so that its errors name `zoo train` in full)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MissingExtra as exc:
            if exc.command is None:
                exc.command = self._command_name(ctx)
            self._fail(ctx, exc)
        except UserError as exc:
            self._fail(ctx, exc)
        except ModuleNotFoundError as exc:  # an import no require() foresaw: still one line if it is an extra's
            missing = missing_extra(exc, self._extras(ctx), self._command_name(ctx))
            if missing is None:
                raise
            self._fail(ctx, missing)

    @staticmethod
    def _fail(ctx: click.Context, exc: Exception):
        LOG.debug("where it was raised (-v):", exc_info=exc)
        click.echo(f"error: {exc}", err=True)
        ctx.exit(2)

    @staticmethod
    def _command_name(ctx: click.Context) -> str:
        """'export', or 'zoo train' for a subgroup's command (the program's own name left out)."""
        return " ".join([*ctx.command_path.split()[1:], ctx.invoked_subcommand or ""]).strip()

    def _extras(self, ctx: click.Context) -> tuple:
        """The extras the invoked command declared with options.needs (they name which extra onnx belongs to)."""
        command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
        return getattr(getattr(command, "callback", None), "extras", ())


@click.group(cls=HalfvGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="halfv-export")
@click.option("-v", "--verbose", is_flag=True, help="debug lines too (and torch's exporter messages)")
@click.option("-q", "--quiet", is_flag=True, help="no progress lines or bars on stderr (warnings and errors only)")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool):
    """Compile multimodal LLMs into ONNX/TensorRT graphs with HalfV visual-token pruning inside the decoder."""
    if verbose and quiet:
        raise click.UsageError("-v and -q exclude each other")
    previous = progress.set_level(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    ctx.call_on_close(lambda: progress.set_level(previous))  # one invocation's level does not outlive it


def main(args=None):
    """The console script `halfv-export` (pyproject.toml [project.scripts])."""
    cli(args=args, prog_name="halfv-export")


# The command modules come last: zoo.py's subgroup is a HalfvGroup too (so errors name `zoo train`).
from . import deploy, export, models, run, zoo  # noqa: E402

for _module in (models, export, run, deploy, zoo):
    for _command in _module.COMMANDS:
        cli.add_command(_command)

__all__ = ["cli", "main"]
