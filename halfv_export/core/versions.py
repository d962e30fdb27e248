"""Installed versions of the libraries an artifact depends on (recorded in manifests, profiles, build.json)."""

from __future__ import annotations

import importlib.metadata


def library_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions(names) -> dict:
    return {name: library_version(name) for name in names}
