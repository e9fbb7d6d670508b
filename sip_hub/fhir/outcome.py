"""OperationOutcome construction (the only place that shapes one)."""

from __future__ import annotations

from typing import Any

from ..errors import Issue, SipHubError


def issue_json(issue: Issue) -> dict[str, Any]:
    out: dict[str, Any] = {"severity": issue.severity, "code": issue.code,
                           "diagnostics": issue.diagnostics}
    if issue.expression:
        out["expression"] = list(issue.expression)
    return out


def outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [issue_json(i) for i in issues]}


def from_error(err: SipHubError) -> dict[str, Any]:
    return outcome(err.issues)


def information(text: str, code: str = "informational") -> dict[str, Any]:
    return outcome([Issue(code, text, severity="information")])
