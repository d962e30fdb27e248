"""Options and parameter types shared by the `halfv-export` commands: each defined once here, reused by name.

    --model / --model-path / --random-init   which backbone and which weights (model_options)
    --graphs                                  a folder written by `halfv-export export` (graphs_option)
    --weights / --block-size / --weights-format   weight-only quantization (weights_options)
    --threads                                 two meanings, two options: ONNX Runtime intra-op threads
                                              (ort_threads_option) and torch CPU threads (torch_threads_option)
    --min-pixels ... --max-batch              the shapes TensorRT profiles cover (engine_shape_options)
    CsvList                                   every comma-separated list ('576,1024', 'vision,embed')
    needs(...)                                the extras a command needs, checked before it imports them

Nothing heavy is imported here: `halfv-export --help` must work with the base install.
"""

from __future__ import annotations

import functools

import click

from ..core.extras import require
from ..graphs.quantize import BITS, BLOCK_SIZES, FORMATS  # numpy only


def stack(*options):
    """Apply several click decorators as one (first listed = first in --help)."""
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def positive_int(ctx, param, value):
    """Callback: None or an integer > 0."""
    if value is not None and value <= 0:
        raise click.BadParameter("must be a positive integer")
    return value


class CsvList(click.ParamType):
    """'a, b,c' -> ('a', 'b', 'c'), each item converted by `item` (int, float or str); blank items are dropped.

    `low`/`high` bound numeric items (`low_open`: low itself excluded); `empty_ok` allows '' (an empty tuple).
    Messages name the whole list: "expected comma-separated integers, got '16,x'".
    """

    NOUNS = {int: "integers", float: "numbers", str: "names"}
    METAVARS = {int: "N,...", float: "X,...", str: "NAME,..."}

    def __init__(self, item: type = str, low: float | None = None, high: float | None = None,
                 low_open: bool = False, empty_ok: bool = False):
        self.item, self.low, self.high, self.low_open, self.empty_ok = item, low, high, low_open, empty_ok
        self.name = self.METAVARS[item]

    def describe(self) -> str:
        """What the items must be, in words: 'positive integers', 'numbers in (0, 1]'."""
        noun = self.NOUNS[self.item]
        if self.low is None and self.high is None:
            return noun
        if self.high is None:
            if (self.low, self.low_open) in ((1, False), (0, True)):
                return f"positive {noun}"
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        low = "-inf" if self.low is None else f"{self.low:g}"
        return f"{noun} in {'(' if self.low_open or self.low is None else '['}{low}, {self.high:g}]"

    def _in_range(self, value) -> bool:
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        return self.high is None or value <= self.high

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):  # already converted (a tuple default, or a second pass)
            return value
        try:
            items = tuple(self.item(v.strip()) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"expected comma-separated {self.NOUNS[self.item]}, got {value!r}", param, ctx)
        if not items and not self.empty_ok:
            self.fail(f"expected one or more {self.describe()}, got {value!r}", param, ctx)
        if self.item is not str and not all(self._in_range(v) for v in items):
            self.fail(f"expected {self.describe()}, got {value!r}", param, ctx)
        return items


def needs(*extras: str):
    """Decorator: the command checks that these extras (core.extras.EXTRAS/PACKAGES keys) are installed before
    its body imports them; `callback.extras` also tells the CLI's error handler which extra a stray
    ModuleNotFoundError belongs to."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for extra in extras:
                require(extra)
            return fn(*args, **kwargs)
        wrapper.extras = extras
        return wrapper
    return decorate


# -- model and graphs --------------------------------------------------------------------------------
model_option = click.option("--model", "model", required=True, metavar="NAME",
                            help="registry name (see `halfv-export models`)")
model_path_option = click.option("--model-path", type=click.Path(), default=None,
                                 help="local Hugging Face checkpoint directory (safetensors)")
random_init_option = click.option("--random-init", is_flag=True,
                                  help="build the named architecture with random weights (structure/speed work)")
model_options = stack(model_option, model_path_option, random_init_option)
graphs_option = click.option("--graphs", "graphs_dir", required=True, type=click.Path(),
                             help="folder written by `halfv-export export`")


# -- threads: one option per meaning ---------------------------------------------------------------
ort_threads_option = click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
                                  help="ONNX Runtime intra-op threads (0: ONNX Runtime decides)")
torch_threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                                    help="torch CPU threads (default 2; the same count reproduces the weights "
                                         "bit for bit)")


# -- weight-only quantization (export, build) --------------------------------------------------------
weights_options = stack(
    click.option("--weights", "weight_bits", type=click.Choice(["dtype", *BITS]), default="dtype", show_default=True,
                 help="decoder linear weights: as --dtype, or weight-only int8/int4 (RTN, symmetric)"),
    click.option("--block-size", type=click.Choice([str(b) for b in BLOCK_SIZES]), default=str(BLOCK_SIZES[0]),
                 show_default=True, help="input rows per quantization scale (--weights int8/int4)"),
    click.option("--weights-format", type=click.Choice(FORMATS), default=FORMATS[0], show_default=True,
                 help="nbits: MatMulNBits for ONNX Runtime; qdq: blocked DequantizeLinear for TensorRT "
                      "(its quantized graphs are opset 21)"),
)


def quantization_of(weight_bits: str, block_size: str, weights_format: str):
    """weights_options' values -> a graphs.quantize.Quantization, or None for --weights dtype."""
    if weight_bits == "dtype":
        return None
    from ..graphs.quantize import Quantization

    return Quantization(BITS[weight_bits], int(block_size), weights_format)


# -- TensorRT profile shapes (engine, bundle) ---------------------------------------------------------
engine_shape_options = stack(
    click.option("--min-pixels", type=int, default=None, callback=positive_int,
                 help="smallest image, in pixels (Qwen2.5-VL: 28x28 pixels per visual token; "
                      "default: the manifest's visual-token range)"),
    click.option("--max-pixels", type=int, default=None, callback=positive_int, help="largest image, in pixels"),
    click.option("--max-text", type=int, default=512, show_default=True, callback=positive_int,
                 help="longest text after the image, in tokens"),
    click.option("--max-new-tokens", type=int, default=256, show_default=True, callback=positive_int,
                 help="longest generation (sizes the decode graph's past)"),
    click.option("--max-batch", type=int, default=1, show_default=True, callback=positive_int,
                 help="largest batch"),
)
