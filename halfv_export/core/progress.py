"""Progress for long steps: a bar on a terminal, plain timestamped lines otherwise (CI logs, pipes).

    with step("export prefill", total=nbytes, unit="B") as advance:
        for tensor in ...:
            advance(tensor.nbytes)

Torch-free. Everything goes to stderr so that stdout stays a command's answer.
"""

from __future__ import annotations

import contextlib
import sys
import time

PLAIN_INTERVAL = 10.0  # seconds between plain progress lines


def _human(value: float, unit: str) -> str:
    if unit != "B":
        return f"{value:.0f} {unit}".rstrip()
    for suffix in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or suffix == "TB":
            return f"{value:.1f} {suffix}" if suffix != "B" else f"{value:.0f} B"
        value /= 1000
    return f"{value:.1f} TB"


def say(line: str) -> None:
    """One plain progress line on stderr."""
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(desc: str, total: float | None = None, unit: str = "", enabled: bool = True):
    """Yield `advance(n)`; on a terminal a tqdm bar, otherwise a line at start, every PLAIN_INTERVAL s, and end."""
    began = time.perf_counter()
    done = 0.0
    if not enabled:
        yield lambda n=1: None
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit=unit or "it", unit_scale=unit == "B", file=sys.stderr,
                  leave=True, dynamic_ncols=True) as bar:
            yield bar.update
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
