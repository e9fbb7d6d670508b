"""Who may see and change what: the SIP rules of consent and participation, per request.

The rules (docs/domain.md rules 1, 3 and 8):

- Personal data are the resources in a patient's compartment (``COMPARTMENT``). An
  organisation sees such a resource if its own client created it, or if it holds a reading
  grant for the patient. Grants are derived from the SIP resources on every write that can
  change them: an organisation reads when it takes part in the person's SIP (a participant of
  the SIP CareTeam, or the coordinating organisation: the author of the SIP CarePlan) AND the
  person's active SIP Consent names it, within that consent's period (one grant per period:
  several consents cover in each of theirs, not between them). Withdrawing or narrowing the
  consent recomputes the grants in the same transaction, so access ends at once.
- One organisation coordinates a person's SIP. Once it is known, only it writes the plan, the
  consent, the care team, the goals and the kartläggning; a participating organisation may
  change only the status of its own insatser in the plan, and its own Tasks (its answers).
- The national portal reads citizen views only; admin clients see no personal data unless
  their registration grants it; audit records are never changed through the API.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from .auth import Principal
from .errors import Forbidden
from .fhir import profiles, sip
from .fhir.compartment import COMPARTMENT, patients_of
from .fhir.dates import now_utc, to_us
from .fhir.indexing import split_reference
from .service import find, tx_resolver
from .identifiers import HSA_ID
from .store import Stored, Tx
from .store.search import Grant, Visibility

# Types whose writes can change who may see a person's data.
GRANT_SOURCES = frozenset({"Consent", "CareTeam", "CarePlan"})
# SIP resources only the coordinating organisation writes.
_COORDINATED = frozenset({sip.PROFILE_CAREPLAN, sip.PROFILE_CONSENT, sip.PROFILE_CARETEAM,
                          sip.PROFILE_GOAL, sip.PROFILE_KARTLAGGNING})
_CLOSED_PLAN = frozenset({"completed", "revoked", "entered-in-error"})
NOT_COVERED = "The person's consent does not cover your organisation for this resource"


def is_personal(rtype: str) -> bool:
    return rtype in COMPARTMENT


def org_hsa(tx: Tx, ref: Any, memo: dict[str, str | None] | None = None) -> str | None:
    """The HSA-id of the Organization a Reference points at (by identifier or by id)."""
    if not isinstance(ref, dict):
        return None
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("system") == HSA_ID:
        return ident.get("value")
    target = split_reference(ref.get("reference", "")) if isinstance(ref.get("reference"),
                                                                     str) else None
    if not target or target[0] != "Organization":
        return None
    if memo is not None and target[1] in memo:
        return memo[target[1]]
    found = None
    cur = tx.current("Organization", target[1])
    if cur is not None and not cur.deleted:
        found = next((i.get("value") for i in cur.json().get("identifier", [])
                      if i.get("system") == HSA_ID), None)
    if memo is not None:
        memo[target[1]] = found
    return found


@dataclass(frozen=True, slots=True)
class Access:
    """The access decisions for one request (``principal`` None: the hub itself)."""

    principal: Principal | None
    now: int

    @classmethod
    def for_principal(cls, principal: Principal | None) -> "Access":
        return cls(principal, to_us(now_utc()))

    @property
    def unrestricted(self) -> bool:
        p = self.principal
        return p is None or (p.role == "admin" and p.personal_data)

    @property
    def org(self) -> str | None:
        return self.principal.org if self.principal else None

    # -- type-level gates -------------------------------------------------------------------
    def check(self, rtype: str, perm: str) -> None:
        """Scopes and roles, before anything is read; ``perm`` is one of c r u d s."""
        p = self.principal
        if rtype == "AuditEvent" and perm in "cud":
            raise Forbidden("Audit records cannot be created, changed or deleted through the API")
        if p is None:
            return
        p.require(rtype, perm)
        if p.role == "portal":
            raise Forbidden("The national portal client reads citizen views only "
                            "(CarePlan/$citizen-view)")
        if is_personal(rtype) and p.role == "admin" and not p.personal_data:
            raise Forbidden("Admin clients see no personal data unless registered with "
                            "--personal-data")
        if rtype == "AuditEvent" and p.role == "organization":
            raise Forbidden("Access logs are read by the person (through the portal) and by "
                            "admins handling a log extract")

    def check_history(self, rtype: str | None) -> None:
        if not self.unrestricted and (rtype is None or is_personal(rtype)):
            raise Forbidden("History across resources holding personal data is for admin "
                            "clients with personal-data access; read a resource's own history")

    def visibility(self, rtype: str) -> Visibility | None | Literal[False]:
        if self.unrestricted or not is_personal(rtype):
            return None
        if self.principal is not None and not self.principal.may(rtype, "r") and \
                not self.principal.may(rtype, "s"):
            return False
        return Visibility(self.org or "", self.now, COMPARTMENT[rtype])

    def included(self, rtype: str) -> Visibility | None | Literal[False]:
        """``visibility`` of a type the caller did not ask for by name: what a search adds
        by ``_include`` and ``_revinclude`` (``:iterate`` too). Nothing of a type it could
        neither read nor search (its scopes and role, as ``check``): included Organizations
        reached a token with only ``system/CarePlan.rs``, which a read of one refuses."""
        try:
            self.check(rtype, "r")
        except Forbidden:
            try:
                self.check(rtype, "s")
            except Forbidden:
                return False
        return self.visibility(rtype)

    # -- instance-level decisions ----------------------------------------------------------
    def can_read(self, tx: Tx, stored: Stored, content: dict[str, Any] | None = None) -> bool:
        if self.unrestricted or not is_personal(stored.type):
            return True
        if stored.owner is not None and stored.owner == self.org:
            return True
        if stored.withheld:
            return False
        if content is None and stored.content is not None:
            content = stored.doc()
        patients = patients_of(stored.type, content, stored.id, tx_resolver(tx))
        return bool(patients) and bool(tx.readable_patients(self.org or "", sorted(patients),
                                                            self.now))

    def can_read_version(self, tx: Tx, ver: Stored, cur: Stored, first: int) -> bool:
        """Whether the caller may read ``ver``, a version of the resource now at ``cur``, as
        it was: by the patients of its own content (a record corrected to another person kept
        showing the first person's versions to the second's parties), and as its owner only
        from ``first``, the first version of the resource's present life (after the last
        deletion before it). The versions of an earlier life are another record's, whose
        owner and withholding no version records: for unrestricted callers alone (an
        outsider writing a goal of its own under a deleted goal's id read the person's goal).
        A tombstone tells no patients: it is its owner's."""
        if self.unrestricted or not is_personal(ver.type):
            return True
        if ver.version_id < first:
            return False
        return self.can_read(tx, replace(ver, owner=cur.owner, withheld=cur.withheld))

    def withholds(self, tx: Tx, rtype: str, new: dict[str, Any],
                  old: dict[str, Any] | None = None, *,
                  pending: dict[tuple[str, str], dict[str, Any]] | None = None) -> bool:
        """Whether a resource this caller creates is kept from everyone but its writer: it is
        in the compartment of a person whose consent is in force, and that consent does not
        cover the writer. Rule 1: no information is exchanged between the SIP's parties
        without the person's consent, nor passed to them by one it does not name (an
        outsider's Task on the person's SIP plan reached every covered organisation). What
        is written before any consent (anyone may suggest a SIP) is shared as it was. An
        update (``old``: the version it replaces) is decided on the persons it moves the
        resource to: moving a record into a person's compartment writes into it. ``pending``:
        the resources written with it (a transaction's), which a Provenance written before
        the record it targets is about."""
        if self.unrestricted or not is_personal(rtype):
            return False
        resolve = tx_resolver(tx, pending)
        patients = sorted(patients_of(rtype, new, resolve=resolve)
                          - patients_of(rtype, old, resolve=resolve))
        if not patients:
            return False
        readable = tx.readable_patients(self.org or "", patients, self.now)
        return any(p not in readable and any(g.reads_at(self.now) for g in tx.grants(p))
                   for p in patients)

    def require_read(self, tx: Tx, stored: Stored) -> None:
        if not self.can_read(tx, stored):
            raise Forbidden(NOT_COVERED)

    def require_write(self, tx: Tx, rtype: str, old: Stored | None,
                      new: dict[str, Any] | None, *, withheld: bool = False) -> None:
        """``withheld``: whether the write would withhold ``new`` (``withholds``, decided once
        by the caller with the resources written with it, and stored as decided)."""
        if self.unrestricted:
            return
        org = self.org
        old_json = old.doc() if old is not None and old.content is not None else None
        if old is not None and not self.can_read(tx, old, old_json):
            raise Forbidden(NOT_COVERED)
        if old is not None and new is not None and old.owner != org and withheld:
            # Withheld, another organisation's record would be kept for that organisation
            # and from its writer, who moved it where the person's consent does not cover it.
            raise Forbidden(NOT_COVERED)
        if not is_personal(rtype):
            if old is not None and old.owner not in (None, org) and \
                    self.principal is not None and self.principal.role != "admin":
                raise Forbidden(f"{rtype}/{old.id} belongs to another organisation's registration")
            return
        sip_profile = profiles.applies(new) if new is not None else (
            profiles.applies(old_json) if old_json is not None else None)
        if sip_profile in _COORDINATED:
            patients = patients_of(rtype, new or old_json or {})
            coordinators = {g.org for p in patients for g in tx.grants(p)
                            if g.role == "coordinator"}
            if not coordinators:
                # Whoever writes first coordinates: decided on the grants as they are once
                # no other such write is under way (two organisations starting a SIP for
                # one person at once both became its coordinator).
                for p in sorted(patients):
                    tx.lock_patient(p)
                coordinators = {g.org for p in patients for g in tx.grants(p)
                                if g.role == "coordinator"}
            if rtype == "CarePlan" and new is not None and (old_json is None or not \
                    _only_own_activity_status(tx, old_json, new, org or "")) and \
                    org_hsa(tx, new.get("author")) != org:
                raise Forbidden("A SIP plan is written by its coordinating organisation: "
                                "CarePlan.author must be your organisation")
            if not coordinators or org in coordinators:
                return
            if rtype == "CarePlan" and old_json is not None and new is not None and \
                    _only_own_activity_status(tx, old_json, new, org or ""):
                return
            raise Forbidden("Only the coordinating organisation writes this SIP's plan, consent, "
                            "care team, goals and kartläggning; a participant may change the "
                            "status of its own insatser")
        if old is None or old.owner == org:
            return
        if rtype == "Task" and old_json is not None and \
                org_hsa(tx, old_json.get("owner")) == org:
            return
        raise Forbidden(f"Your organisation did not create {rtype}/{old.id}")


_ACTIVITY_STATUS_KEYS = frozenset({"status", "statusReason"})


def without_status(act: Any) -> Any:
    """An insats (CarePlan.activity) without its status and progress, for comparing (shares
    the rest with ``act``)."""
    if not isinstance(act, dict):
        return act
    out = {k: v for k, v in act.items() if k != "progress"}
    detail = out.get("detail")
    if isinstance(detail, dict):
        out["detail"] = {k: v for k, v in detail.items() if k not in _ACTIVITY_STATUS_KEYS}
    return out


def _only_own_activity_status(tx: Tx, old: dict[str, Any], new: dict[str, Any], org: str) -> bool:
    """Whether ``new`` differs from ``old`` only in the status of activities ``org`` performs."""
    def rest(plan: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in plan.items() if k not in ("meta", "text", "activity")}
    old_acts, new_acts = old.get("activity", []), new.get("activity", [])
    if rest(old) != rest(new) or not isinstance(old_acts, list) or \
            not isinstance(new_acts, list) or len(old_acts) != len(new_acts):
        return False
    for oa, na in zip(old_acts, new_acts):
        if oa == na:
            continue
        performers = (oa.get("detail") or {}).get("performer", []) \
            if isinstance(oa, dict) else []
        if not any(org_hsa(tx, p) == org for p in performers) or \
                without_status(oa) != without_status(na):
            return False
    return True


# -- grants ------------------------------------------------------------------------------------

def _search(tx: Tx, rtype: str, items: list[tuple[str, str]], profile: str
            ) -> list[tuple[Stored, dict[str, Any]]]:
    found = [(s, s.json()) for s in find(tx, rtype, items)]
    return [(s, r) for s, r in found if profiles.applies(r) == profile]


def _period_bound(period: Any, which: str) -> int | None:
    """A Period's ``start`` (its earliest instant) or ``end`` (its latest); None: open. A date
    is a Swedish day (``sip.swedish_range``): a consent ending today covers nothing once today
    is over in Sweden (not until UTC midnight, an hour or two later)."""
    if isinstance(period, dict) and isinstance(period.get(which), str):
        try:
            return sip.swedish_range(period[which])[0 if which == "start" else 1]
        except ValueError:
            return None
    return None


# A covering period: (from, until) in UTC microseconds, as a grant holds them (``Grant``:
# it reads while from <= now < until); None: open.
Period = tuple[int | None, int | None]


def merge_periods(periods: list[Period]) -> list[Period]:
    """The instants ``periods`` cover, as disjoint periods in order: overlapping or adjacent
    ones (one ends the microsecond before the other starts) as one; empty ones left out."""
    out: list[Period] = []
    for since, until in sorted(periods, key=lambda p: -2 ** 63 if p[0] is None else p[0]):
        if since is not None and until is not None and until < since:
            continue
        if out and (out[-1][1] is None or since is None or since <= out[-1][1] + 1):
            last_until = out[-1][1]
            out[-1] = (out[-1][0], None if last_until is None or until is None
                       else max(last_until, until))
        else:
            out.append((since, until))
    return out


def refresh_grants(tx: Tx, patient_id: str) -> bool:
    """Recompute who may see ``patient_id``'s SIP from the stored SIP resources; whether
    that changed."""
    tx.lock_patient(patient_id)
    pref = f"Patient/{patient_id}"
    plans = [(s, p) for s, p in _search(tx, "CarePlan", [("patient", pref)], sip.PROFILE_CAREPLAN)
             if p.get("status") not in _CLOSED_PLAN]
    consents = _search(tx, "Consent", [("patient", pref), ("status", "active")],
                       sip.PROFILE_CONSENT)
    teams = _search(tx, "CareTeam", [("patient", pref), ("status", "active")],
                    sip.PROFILE_CARETEAM)

    memo: dict[str, str | None] = {}
    # The plan's author coordinates; before there is a plan, whoever recorded the SIP's
    # consent or care team does.
    coordinators = {h for _, p in plans if (h := org_hsa(tx, p.get("author"), memo))}
    if not coordinators:
        coordinators = {s.owner for s, _ in consents + teams if s.owner}
    participants = set(coordinators)
    for _, team in teams:
        for part in team.get("participant", []):
            for ref in (part.get("onBehalfOf"), part.get("member")):
                if (h := org_hsa(tx, ref, memo)):
                    participants.add(h)
    # Each consent covers the organisations it names for its own period (as
    # ``process.active_consent`` counts a consent in force): several consents cover an
    # organisation in each of their periods and not between them (one grant spanning the
    # earliest start to the latest end let it read between an expired consent and one not
    # yet started). One grant per covering period, overlapping or adjacent ones as one; a
    # participant no consent covers keeps its role, reading nothing.
    periods: dict[str, list[Period]] = {}
    for _, consent in consents:
        provision = consent.get("provision") or {}
        if provision.get("type", "permit") != "permit":
            continue  # (the SIP profile refuses any other; nested provisions too)
        period = (_period_bound(provision.get("period"), "start"),
                  _period_bound(provision.get("period"), "end"))
        for actor in provision.get("actor", []):
            if (h := org_hsa(tx, actor.get("reference"), memo)):
                periods.setdefault(h, []).append(period)
    grants = []
    for org in sorted(participants):
        role = "coordinator" if org in coordinators else "participant"
        covering = merge_periods(periods.get(org, []))
        grants += [Grant(org, role, True, until, since) for since, until in covering] or \
            [Grant(org, role, False, None)]
    if set(grants) == set(tx.grants(patient_id)):
        return False
    tx.replace_grants(patient_id, grants)
    return True


def _grant_inputs(rtype: str, res: dict[str, Any] | None) -> Any:
    """The part of a resource that grants depend on; writes that keep it need no refresh."""
    if res is None:
        return None
    profile = profiles.applies(res)
    if rtype == "CarePlan":
        if profile != sip.PROFILE_CAREPLAN or res.get("status") in _CLOSED_PLAN:
            return None
        return (profile, res.get("subject"), res.get("author"))
    if rtype == "CareTeam":
        return (profile, res.get("subject"), res.get("status"),
                [(p.get("member"), p.get("onBehalfOf")) for p in res.get("participant", [])])
    return (profile, res.get("patient"), res.get("status"), res.get("provision"))


def after_write(tx: Tx, rtype: str, old: dict[str, Any] | None, new: dict[str, Any] | None
                ) -> set[str]:
    """Keep grants in step with the SIP resources, in the write's own transaction; the
    patients whose grants changed."""
    if rtype not in GRANT_SOURCES:
        return set()
    before, after = _grant_inputs(rtype, old), _grant_inputs(rtype, new)
    if before == after:
        return set()
    if rtype == "CarePlan" and old is None and new is not None and after is not None:
        # Another plan by an organisation that already coordinates changes nothing.
        author = org_hsa(tx, new.get("author"))
        patients = patients_of(rtype, new)
        if author and all(any(g.org == author and g.role == "coordinator" for g in tx.grants(p))
                          for p in patients):
            return set()
    return {patient for patient in sorted(patients_of(rtype, old) | patients_of(rtype, new))
            if refresh_grants(tx, patient)}
