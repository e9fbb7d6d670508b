"""One run of a SIP process operation: one transaction, the caller, and the hub.

Every write goes through ``interactions`` so it passes the same pipeline, access rules, grant
refresh and audit as a REST write. The caller's own writes are made as the caller. Follow-on
writes the caller could not make itself (an invited organisation's representative joining the
coordinator's CareTeam, the hub's deadline Tasks) are made by the hub (``as_hub``) and audited
for the caller, so the person's access log names who caused them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from . import interactions as ix
from .audit import CLIENT_SYSTEM
from .errors import Conflict, Forbidden, Gone, NotFound, PreconditionFailed, SipHubError
from .fhir import sip
from .fhir.dates import format_instant
from .identifiers import HSA_ID
from .store import Stored, Tx

Json = dict[str, Any]
_Run = TypeVar("_Run", bound=Callable[..., Json])


@dataclass(slots=True)
class Operation:
    tx: Tx
    ctx: ix.Context
    now: datetime
    inactive_days: int = 90
    hub: ix.Context = field(init=False)
    # What the operation read of the person's data on the caller's behalf (``current``), and
    # whether a refusal of it is audited already: a refusal after the read is audited too.
    read: list[Stored] = field(init=False, default_factory=list)
    refusal_audited: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        # The hub's own context: unrestricted and unaudited (its writes are audited for ctx).
        self.hub = ix.Context(self.ctx.base_url, messaging=self.ctx.messaging)

    @property
    def instant(self) -> str:
        return format_instant(self.now)

    def current(self, rtype: str, rid: str, if_match: str | None = None) -> Stored:
        """The current version, which the caller must be allowed to read; with ``if_match``
        (an ETag), only when it is still the version the client has seen."""
        ix.check_id(rid)
        cur = self.tx.current(rtype, rid)
        if cur is None:
            raise NotFound(f"{rtype}/{rid} is not known")
        if cur.deleted:
            raise Gone(f"{rtype}/{rid} was deleted")
        try:
            self.ctx.access.require_read(self.tx, cur)
        except Forbidden as err:
            self.ctx.refused("read", cur, rtype, err, reads=self.tx)
            self.refusal_audited = True
            raise
        self.read.append(cur)
        if ix.expected_version(if_match, cur, f"{rtype}/{rid}") not in (None, cur.version_id):
            raise PreconditionFailed(f"Version conflict: {rtype}/{rid} is at version "
                                     f"{cur.version_id}, If-Match asked for {if_match}")
        return cur

    def unchanged(self, stored: Stored) -> Stored:
        """``stored``, which the operation read and answers with as it is (it wrote no new
        version, which would be audited): a read of the person's data, audited with the
        operation's writes, and in its refusal's record should it be refused later."""
        self.read.append(stored)
        self.ctx.record("read", [stored], tx=self.tx)
        return stored

    def refused(self, what: str, err: SipHubError) -> None:
        """Audit the operation's refusal (outcome 4; 8 for a failure of the hub's) once it has
        read the person's data: the caller learnt something of it (a 409 tells the SIP's
        phase). Recorded outside the operation's transaction, which is rolled back."""
        if self.refusal_audited or not self.read:
            return
        self.refusal_audited = True
        seen = list({(s.type, s.id): s for s in self.read}.values())
        # (whose a Provenance read is, resolved in the transaction unless the hub failed:
        # the database may be what failed)
        self.ctx.record("operation", seen, outcome="4" if err.status < 500 else "8",
                        detail=f"{what}: {err.diagnostics}",
                        reads=self.tx if err.status < 500 else None)

    def create(self, res: Json, *, as_hub: bool = False) -> Stored:
        """Create ``res``; the process operations keep the process rules themselves (an
        invitation Task is $invite's to create), so the plain-create hook is not run."""
        ctx = self.hub if as_hub else self.ctx
        stored = ix.create(self.tx, ctx, res["resourceType"], res, process_rules=False).stored
        assert stored is not None
        if as_hub:
            self.ctx.record("create", [stored], tx=self.tx)
        return stored

    def update(self, res: Json, *, as_hub: bool = False) -> Stored:
        """Write ``res`` (with its id) as a new version; the process operations keep the
        process rules themselves, so the plain-update hook is not run.

        ``res`` read from the store still carries the ``meta.versionId`` it was read at: the
        write is conditional on it, so a concurrent change is never overwritten unseen.
        """
        ctx = self.hub if as_hub else self.ctx
        version = (res.get("meta") or {}).get("versionId")
        try:
            result = ix.update(self.tx, ctx, res["resourceType"], res["id"], res,
                               if_match=f'W/"{version}"' if version else None,
                               process_rules=False)
        except PreconditionFailed:
            raise Conflict(f"{res['resourceType']}/{res['id']} was changed concurrently; "
                           "retry") from None
        assert result.stored is not None
        if as_hub:
            self.ctx.record("create" if result.status == 201 else "update", [result.stored],
                            tx=self.tx)
        return result.stored

    # -- provenance ----------------------------------------------------------------------------
    def agents(self, org_ref: Json | None) -> list[Json]:
        """The organisation (literal reference when known) and its API client."""
        p = self.ctx.access.principal
        if p is None:
            return [{"type": _agent_type("assembler"), "who": {"display": "sip_hub"}}]
        org = org_ref or {"identifier": {"system": HSA_ID, "value": p.org},
                          "type": "Organization"}
        return [
            {"type": _agent_type("author"), "who": org},
            {"type": _agent_type("enterer"),
             "who": {"identifier": {"system": CLIENT_SYSTEM, "value": p.client_id},
                     "type": "Device", "display": "API-klient / API client"},
             "onBehalfOf": org},
        ]

    def provenance(self, target: Stored, activity: Json, *, org_ref: Json | None,
                   reason: str | None = None, occurred: str | None = None,
                   attesters: Sequence[Json] = (), informants: Sequence[Json] = (),
                   entities: Sequence[tuple[str, Stored]] = ()) -> Json:
        """A Provenance of ``target``'s new version: who did what, why, on whose approval."""
        agents = self.agents(org_ref)
        agents += [{"type": _agent_type("attester"), "who": a} for a in attesters]
        agents += [{"type": _agent_type("informant"), "who": i} for i in informants]
        out: Json = {"resourceType": "Provenance",
                     "target": [{"reference": version_ref(target)}]}
        if occurred:
            out["occurredDateTime"] = occurred
        out["recorded"] = self.instant
        if reason:
            out["reason"] = [{"text": reason}]
        out["activity"] = activity
        out["agent"] = agents
        if entities:
            out["entity"] = [{"role": role, "what": {"reference": version_ref(s)}}
                             for role, s in entities]
        return out


def audited(what: str) -> Callable[[_Run], _Run]:
    """An operation ``fn(op, ...)`` whose refusals are audited (``Operation.refused``)."""
    def wrap(fn: _Run) -> _Run:
        @functools.wraps(fn)
        def run(op: Operation, *args: Any, **kwargs: Any) -> Json:
            try:
                return fn(op, *args, **kwargs)
            except SipHubError as err:
                op.refused(what, err)
                raise
        return run  # type: ignore[return-value]
    return wrap


def _agent_type(code: str) -> Json:
    return {"coding": [{"system": sip.PROVENANCE_AGENT, "code": code}]}


def version_ref(stored: Stored) -> str:
    return f"{stored.type}/{stored.id}/_history/{stored.version_id}"


def ref(stored: Stored) -> Json:
    return {"reference": f"{stored.type}/{stored.id}"}
