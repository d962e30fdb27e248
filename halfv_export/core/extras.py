"""Optional dependencies: which pip extra provides which import, and the one error that says one is missing.

The base install (numpy, onnxruntime, pillow, tokenizers, click, tqdm) runs `run` and `models`; the other
commands need an extra of pyproject.toml's [project.optional-dependencies]. A command asks with require()
before it imports anything heavy, and the CLI maps a ModuleNotFoundError that still escapes a command to
its extra (missing_extra), so a missing package is always one line:

    error: export needs the 'export' extra: pip install 'halfv-export[export]'

Torch-free; nothing here imports an optional package (importlib.util.find_spec only locates one).
"""

from __future__ import annotations

import importlib.util

from .errors import UserError

# extra -> the top-level import names it provides (pyproject.toml's lists, as imported).
EXTRAS = {
    "export": ("torch", "transformers", "huggingface_hub", "safetensors", "onnx", "onnxscript", "onnx_ir",
               "onnx_graphsurgeon", "polygraphy"),
    "lint": ("onnx",),  # `lint` and `bundle` read graphs with onnx alone
    "triton": ("pytriton", "tritonclient"),
    "plots": ("matplotlib",),
    # onnxruntime-gpu installs the same `onnxruntime` import as the base's CPU build: no import name tells
    # them apart, so nothing maps to `gpu` here (the CUDA provider is what a GPU run would check).
    "gpu": (),
}
# Separate distributions, not extras of halfv-export: distribution -> (its import name, how to install it).
PACKAGES = {"halfv-zoo": ("halfv_zoo", "pip install ./zoo (the zoo/ folder of the halfv-export source)")}


class MissingExtra(UserError):
    """An optional package a command needs is not installed: names the extra (or separate package) to install."""

    def __init__(self, extra: str, module: str, command: str | None = None):
        self.extra, self.module, self.command = extra, module, command
        super().__init__(extra, module, command)

    def __str__(self) -> str:
        who = self.command or "this"
        if self.extra in PACKAGES:
            return f"{who} needs the '{self.extra}' package: {PACKAGES[self.extra][1]}"
        return f"{who} needs the '{self.extra}' extra: pip install 'halfv-export[{self.extra}]'"


def installed(module: str) -> bool:
    """Whether `module` can be imported here (located, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder refusing it, or a half-initialised parent package
        return False


def require(extra: str, *modules: str, command: str | None = None) -> None:
    """Raise MissingExtra unless `modules` (default: every import of `extra`, an EXTRAS or PACKAGES key)
    are installed."""
    names = modules or (PACKAGES[extra][:1] if extra in PACKAGES else EXTRAS[extra])
    for module in names:
        if not installed(module):
            raise MissingExtra(extra, module, command)


def extra_of(module: str, prefer: tuple = ()) -> str | None:
    """The extra (or separate package) that provides `module` (a dotted name: its top level counts); an
    extra in `prefer` (the command's own) wins where several provide it (onnx: `lint` for lint, else `export`)."""
    top = module.split(".")[0]
    for distribution, (name, _) in PACKAGES.items():
        if top == name:
            return distribution
    for extra in (*prefer, *EXTRAS):
        if top in EXTRAS.get(extra, ()):
            return extra
    return None


def missing_extra(exc: ModuleNotFoundError, prefer: tuple = (), command: str | None = None) -> MissingExtra | None:
    """The MissingExtra behind a ModuleNotFoundError, or None when the module is no optional package's
    (a missing module of halfv_export itself is a bug, and keeps its traceback)."""
    name = getattr(exc, "name", None)
    extra = extra_of(name, prefer) if name else None
    return MissingExtra(extra, name.split(".")[0], command) if extra else None
