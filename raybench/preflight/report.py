"""The pre-flight report: one finding per check, every problem listed at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from raybench.errors import UserInputError

Status = Literal["ok", "note", "FAIL"]


class PreflightError(UserInputError):
    """Pre-flight found problems: the message is the whole report."""


@dataclass
class Finding:
    status: Status
    what: str  # "datasets[0] gdxray", "backbones[1] convnext_t-dinov3", "storage", "W&B"
    message: str


@dataclass
class PreflightReport:
    """The findings of one pre-flight run and where it ran."""

    study: str
    where: str
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "FAIL"]

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, status: Status, what: str, message: str) -> None:
        self.findings.append(Finding(status, what, message))

    def format(self) -> str:
        lines = [f"pre-flight of study {self.study} on {self.where} ({self.seconds:.1f} s):"]
        for f in self.findings:
            lines.append(f"  {f.status:<4}  {f.what}: {f.message}")
        n = len(self.problems)
        if n:
            lines.append(
                f"{n} problem(s); no trial was started. Fix them (docs/preflight.md), or skip these "
                "checks with --skip-preflight."
            )
        else:
            lines.append("pre-flight passed.")
        return "\n".join(lines)
