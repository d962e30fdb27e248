"""Progress for long steps, through the one logger `halfv_export`: a bar on a terminal, plain timestamped
lines otherwise (CI logs, pipes).

    with step("export prefill", total=nbytes, unit="B") as advance:
        for tensor in ...:
            advance(tensor.nbytes)
    say("[export] wrote graphs/tiny-llava")

Every progress line is an INFO record of `logging.getLogger("halfv_export")` (LOGGER), and the modules'
own loggers (`logging.getLogger(__name__)`) are its children. Its one handler writes to stderr, so stdout
stays a command's answer. The level decides what shows: INFO (the default) progress lines and bars,
WARNING (`halfv-export -q`) neither, DEBUG (`-v`) also debug records. A program that embeds halfv_export
and wants these lines elsewhere replaces LOGGER's handler. Torch-free.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

PLAIN_INTERVAL = 10.0  # seconds between plain progress lines
LOGGER = logging.getLogger("halfv_export")


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is when a record is written: click's CliRunner and pytest's
    capsys swap sys.stderr after this module is imported."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property always answers sys.stderr
        pass


class _Formatter(logging.Formatter):
    """The message alone; a warning says so (`warning: ...`), as the CLI's lines always have."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno == logging.WARNING and not text.startswith("warning:") else text


def _install() -> None:
    """One stderr handler on LOGGER, installed once per process (a re-imported module finds it in place).
    LOGGER does not propagate: an application's root handlers would print every line a second time."""
    if not any(isinstance(h, _StderrHandler) for h in LOGGER.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Formatter("%(message)s"))
        LOGGER.addHandler(handler)
    if LOGGER.level == logging.NOTSET:
        LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


_install()


def set_level(level: int) -> int:
    """Set LOGGER's level (logging.DEBUG/INFO/WARNING); returns the previous one, to put back."""
    previous = LOGGER.level
    LOGGER.setLevel(level)
    return previous


def shown() -> bool:
    """Whether progress (INFO) is shown at the current level."""
    return LOGGER.isEnabledFor(logging.INFO)


def _human(value: float, unit: str) -> str:
    if unit != "B":
        return f"{value:.0f} {unit}".rstrip()
    for suffix in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or suffix == "TB":
            return f"{value:.1f} {suffix}" if suffix != "B" else f"{value:.0f} B"
        value /= 1000
    return f"{value:.1f} TB"


def say(line: str) -> None:
    """One progress line (INFO on LOGGER: on stderr unless -q)."""
    LOGGER.info(line)


def _bar():
    """tqdm's bar class on a terminal, or None (a pipe, or tqdm not installed): then plain lines."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm


@contextlib.contextmanager
def step(desc: str, total: float | None = None, unit: str = "", enabled: bool = True):
    """Yield `advance(n)`; on a terminal a tqdm bar, otherwise a line at start, every PLAIN_INTERVAL s, and end.
    Nothing at all when `enabled` is False or the level hides progress (-q)."""
    began = time.perf_counter()
    done = 0.0
    if not enabled or not shown():
        yield lambda n=1: None
        return
    bar = _bar()
    if bar is not None:
        with bar(total=total, desc=desc, unit=unit or "it", unit_scale=unit == "B", file=sys.stderr,
                 leave=True, dynamic_ncols=True) as progress_bar:
            yield progress_bar.update
        return
    last = began
    say(f"[{desc}] started" + (f" ({_human(total, unit)})" if total else ""))

    def advance(n: float = 1) -> None:
        nonlocal done, last
        done += n
        now = time.perf_counter()
        if now - last >= PLAIN_INTERVAL:
            last = now
            of = f" / {_human(total, unit)}" if total else ""
            say(f"[{desc}] {_human(done, unit)}{of}, {now - began:.0f} s")

    yield advance
    say(f"[{desc}] done: {_human(done, unit)} in {time.perf_counter() - began:.1f} s")
