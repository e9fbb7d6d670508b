"""One root exception; typed leaves say what went wrong and whether retrying can help.

The HTTP edge turns them into an OperationOutcome with ``status``; the bus edge into
ack / retry / dead-letter using ``retryable``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue: ``code`` from http://hl7.org/fhir/issue-type."""

    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()
    severity: str = "error"


class SipHubError(Exception):
    status: int = 500
    code: str = "exception"
    retryable: bool = False

    def __init__(self, diagnostics: str, *, issues: list[Issue] | None = None,
                 expression: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.issues: list[Issue] = issues or [
            Issue(self.code, diagnostics, (expression,) if expression else ())
        ]
        self.headers = headers or {}


class BadRequest(SipHubError):
    status, code = 400, "invalid"


class NotSupported(SipHubError):
    status, code = 400, "not-supported"


class Unauthorized(SipHubError):
    status, code = 401, "login"


class Forbidden(SipHubError):
    status, code = 403, "forbidden"


class NotFound(SipHubError):
    status, code = 404, "not-found"


class MethodNotAllowed(SipHubError):
    status, code = 405, "not-supported"


class NotAcceptable(SipHubError):
    status, code = 406, "not-supported"


class Conflict(SipHubError):
    status, code = 409, "conflict"


class ConcurrentChange(Conflict):
    """Another request wrote the same resources at the same moment and the database gave way
    to it (on PostgreSQL a deadlock or a serialization failure): nothing of this request was
    applied, and sent again it can succeed. A conflict, not an unavailable database."""

    retryable = True

    def __init__(self) -> None:
        super().__init__("The resources were changed concurrently by another request; nothing "
                         "was applied, and the request may be retried")


class Gone(SipHubError):
    status, code = 410, "deleted"


class PreconditionFailed(SipHubError):
    status, code = 412, "conflict"


class PayloadTooLarge(SipHubError):
    status, code = 413, "too-costly"


class UnsupportedMediaType(SipHubError):
    status, code = 415, "not-supported"


class Unprocessable(SipHubError):
    """The content is well-formed but breaks a FHIR or SIP rule."""

    status, code = 422, "processing"


class InternalError(SipHubError):
    """A fault of the hub's own (a bug), not of the request: nothing was applied, and a retry
    of the same request would meet it again."""

    status, code = 500, "exception"


class TransientError(SipHubError):
    status, code = 503, "transient"
    retryable = True


@dataclass(slots=True)
class IssueCollector:
    """Gathers validation issues so a client sees every problem at once."""

    issues: list[Issue] = field(default_factory=list)

    def add(self, expression: str, diagnostics: str, code: str = "invariant",
            severity: str = "error") -> None:
        self.issues.append(Issue(code, diagnostics, (expression,), severity))

    def raise_if_any(self, message: str = "Resource failed validation") -> None:
        errors = [i for i in self.issues if i.severity in ("error", "fatal")]
        if errors:
            raise Unprocessable(f"{message}: {errors[0].diagnostics}", issues=errors)
