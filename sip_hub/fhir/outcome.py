"""OperationOutcome construction (the only place that shapes one)."""

from __future__ import annotations

from typing import Any

from ..errors import Issue, SipHubError
from .validation import NOT_IN_XML


def issue_json(issue: Issue) -> dict[str, Any]:
    out: dict[str, Any] = {"severity": issue.severity, "code": issue.code,
                           "diagnostics": _shown(issue.diagnostics)}
    if issue.expression:
        out["expression"] = [_shown(e) for e in issue.expression]
    return out


def _shown(text: str) -> str:
    """Diagnostics and expressions often quote the client's input: a character XML has none
    for (a NUL, U+FFFF) or a lone surrogate, which JSON cannot carry either, made the error's
    own answer a 5xx. Each becomes U+FFFD."""
    return NOT_IN_XML.sub("\ufffd", text)


def outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [issue_json(i) for i in issues]}


def from_error(err: SipHubError) -> dict[str, Any]:
    return outcome(err.issues)


def information(text: str, code: str = "informational") -> dict[str, Any]:
    return outcome([Issue(code, text, severity="information")])


def warning(text: str, code: str = "informational") -> dict[str, Any]:
    return outcome([Issue(code, text, severity="warning")])
