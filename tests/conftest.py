"""Shared fixtures: the built-in tiny models (real transformers classes, random weights, seed 0).

Torch-free at import: collection must work in a base (runtime-only) install, so anything that needs torch or
transformers is imported inside the function that uses it.
"""

from __future__ import annotations

import functools
import os

import pytest

# Before torch loads OpenMP: its idle threads sleep instead of spinning. On 2 shared cores, spinning threads of
# two busy processes (another pytest, a build) made the tiny models' generation 10-20x slower (7-10 s instead of
# 0.5 s per test); passive waiting keeps a loaded machine's fast loop near the quiet one. Subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from halfv_export.core.profile import shipped_profile

# One table drives the per-family tests: two image sizes per family where the family allows it
# (LLaVA-1.5's CLIP tower has one fixed input size).
TINY_IMAGES = {
    "tiny-qwen2.5-vl": [(112, 112), (112, 168)],  # 16 and 24 visual tokens
    "tiny-llava": [(56, 56)],  # 16 visual tokens
    "tiny-llava-next": [(56, 56), (28, 56)],  # 24 and 14 visual tokens (anyres tiles + newline)
}
TINY = list(TINY_IMAGES)


@functools.lru_cache(maxsize=None)
def tiny_backbone(name: str):
    from halfv_export.backbones import load_backbone  # torch + transformers: only when a test asks for a model

    return load_backbone(name)


@pytest.fixture(params=TINY)
def tiny_name(request):
    return request.param


@pytest.fixture
def tiny(tiny_name):
    return tiny_backbone(tiny_name)


@pytest.fixture
def tiny_profile(tiny_name):
    return shipped_profile(tiny_name)


# The fast loop (`-m "not slow"`) keeps each layer covered on one shared export, tiny-qwen2.5-vl's (a tiny
# export costs about 100 s on 2 cores). A parametrized test marks the cases it leaves to the full suite with
# `@pytest.mark.slow_cases("tiny-llava", ...)`: every case whose id contains one of the strings is `slow`
# ("tiny-llava" covers "tiny-llava-next" too).
@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        for mark in item.iter_markers("slow_cases"):
            if callspec is not None and any(word in callspec.id for word in mark.args):
                item.add_marker(pytest.mark.slow)
