"""TensorRT lint: would each graph of a graphs folder get through a TensorRT version's ONNX parser?

Runs on the CPU with onnx only (no TensorRT, no torch). One module per concern; each imports only the
ones listed before it:

  targets   what each TensorRT version's parser accepts (opsets, ops, dtypes, block dtypes)
  report    Finding (one line per finding, ERROR / WARNING / INFO) and LintReport
  walker    nodes of every subgraph, local functions expanded, the scope of every tensor
  shapes    the evaluator of symbolic dims and of K computed from shapes
  rules     the per-op checks (check_<Op>) and lint_model
  graphs    a graphs folder: its manifest, each graph read and linted, one LintReport

TensorRT's TopK K limit and the HalfV profile bound export checks before tracing live in core.limits
(torch- and onnx-free); they are re-exported here for the callers that lint.
"""

from __future__ import annotations

from ..limits import TOPK_MAX_K, check_topk_bound
from .graphs import lint_graphs, lint_manifest, load_graph
from .report import Finding, LintReport
from .rules import lint_model
from .shapes import Unresolved, eval_dim
from .targets import TARGETS, Target, get_target

__all__ = ["TARGETS", "TOPK_MAX_K", "Finding", "LintReport", "Target", "Unresolved", "check_topk_bound",
           "eval_dim", "get_target", "lint_graphs", "lint_manifest", "lint_model", "load_graph"]
