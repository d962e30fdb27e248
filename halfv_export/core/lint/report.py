"""Findings and the report: one finding per line, `SEVERITY <node>: <message> [<graph file>]`.

Severities: ERROR (the parse or build fails, or the engine misbehaves; any ERROR fails the lint), WARNING
(a check that could not be completed, or a risk to verify on the device), INFO (facts worth reading, such
as the matrix-product precision). Imports nothing else from the project.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    severity: str  # "ERROR" | "WARNING" | "INFO"
    node: str  # node name (a path for nodes in subgraphs / expanded functions), or the graph file
    message: str
    graph: str = ""

    def line(self) -> str:
        where = f" [{self.graph}]" if self.graph and self.graph != self.node else ""
        return f"{self.severity} {self.node}: {self.message}{where}"


@dataclass
class LintReport:
    target: str
    graphs: list = field(default_factory=list)
    findings: list = field(default_factory=list)

    @property
    def errors(self) -> list:
        return [f for f in self.findings if f.severity == "ERROR"]

    @property
    def warnings(self) -> list:
        return [f for f in self.findings if f.severity == "WARNING"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        return (f"lint {self.target}: {len(self.graphs)} graph(s), {len(self.errors)} error(s), "
                f"{len(self.warnings)} warning(s): {verdict}")
