"""Linting a graphs folder: read its manifest, lint each graph it lists, collect one LintReport.

Graphs are read without their external weights (lint never needs the big tensors). The manifest gives
each graph's file, the visual-token range that bounds K and the dtype the graphs claim. Imports rules,
report and targets (below it in the package), core.manifest and core.errors.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from ..errors import UserError
from ..manifest import Manifest
from .report import LintReport
from .rules import lint_model
from .targets import get_target


def load_graph(path: Path) -> onnx.ModelProto:
    """The graph structure without its external weights (lint never needs the big tensors)."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise UserError(f"graph file not found: {path}") from None
    except Exception as exc:
        raise UserError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None


def lint_manifest(manifest: Manifest, target: str) -> LintReport:
    tgt = get_target(target)
    report = LintReport(target=tgt.name)
    graphs = manifest.get("graphs") or {}
    if not graphs:
        raise UserError(f"{manifest.folder}: manifest lists no graphs")
    for role, entry in graphs.items():
        path = manifest.folder / entry["file"]
        report.graphs.append(entry["file"])
        model = load_graph(path)
        report.findings.extend(lint_model(model, tgt, entry["file"], manifest.get("visual_tokens"),
                                          manifest.get("dtype"), path.parent))
    return report


def lint_graphs(graphs_dir, target: str) -> LintReport:
    """Lint every graph of a graphs folder (manifest verified first) for `target` (trt10 | trt11)."""
    get_target(target)
    return lint_manifest(Manifest.load(graphs_dir), target)
