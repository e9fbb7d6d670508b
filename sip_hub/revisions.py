"""Revisions of an established SIP: no change without the person's approval (rule 3).

``POST /fhir/CarePlan/{id}/$propose-revision`` (the coordinating organisation). Input:
``revision`` (resource CarePlan, 1..1: the plan as it would read after the revision),
``reason`` (string, 0..1). Output: ``revision``, the stored proposal: a CarePlan with intent
``proposal``, status ``draft``, ``replaces`` the plan's current version, the same individual,
not yet in effect and labelled NOPATIENT so that the national portal never shows it as the
person's plan. It is checked at once as the plan it would become, so a revision that lacks the
law's required content fails now, not at approval.

``POST /fhir/CarePlan/{id}/$approve-revision`` (the coordinating organisation, recording the
person's approval). Input: ``revision`` (Reference(CarePlan), 1..1), ``approvedBy``
(Reference(Patient|RelatedPerson), 1..*), ``approvedAt`` (dateTime, 1..1), ``reason`` (string,
0..1). Output: ``carePlan`` (the plan's new version), ``provenance``, ``revision`` (the
proposal, now completed). A proposal made for an older version of the plan is refused: the
person approved a change to a plan that has changed since.
"""

from __future__ import annotations

import copy
from typing import Any

from . import deadlines, parameters, process as sp
from .fhir import sip
from .fhir.dates import parse_range
from .operation import Operation, audited, version_ref
from .parameters import Param
from .service import prepare, tx_resolver
from .store import Stored
from .transitions import revoke_proposals, sip_plan

Json = dict[str, Any]

PROPOSE = (Param("revision", ("resource",), required=True), Param("reason", ("valueString",)))
APPROVE = (Param("revision", ("valueReference",), required=True),
           Param("approvedBy", ("valueReference",), required=True, repeats=True),
           Param("approvedAt", ("valueDateTime",), required=True),
           Param("reason", ("valueString",)))
_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
_ENTERED_US = 24 * 3_600_000_000  # a revision agreed at a meeting may be entered after it
_KEPT_META = ("profile", "security", "tag")
# What the established plan keeps whatever the revision says: what it is, not what it decides.
_KEPT = ("identifier", "replaces")


def _established(op: Operation, plan_id: str, what: str, if_match: str | None
                 ) -> tuple[Stored, Json]:
    stored, plan = sip_plan(op, plan_id, if_match)
    sp.require_coordinator(op.tx, op.ctx, plan, what)
    phase = sp.phase_of(plan)
    if phase not in (sp.ESTABLISHED, sp.FOLLOW_UP):
        raise sp.business_rule(f"Only an established plan (upprattad, uppfoljning) is revised; "
                               f"this SIP is in '{phase}'"
                               + ("; change the draft with a PUT" if phase != sp.CLOSED else ""))
    sp.require_consent(op.tx, plan, op.now, f"{what} of the SIP")
    return stored, plan


def applied(plan: Json, proposal: Json) -> Json:
    """The established plan as it reads once ``proposal`` is applied to it."""
    out: Json = {"resourceType": "CarePlan", "id": plan["id"]}
    # versionId: the version the revision is applied to (the write is conditional on it).
    meta = {k: v for k, v in (plan.get("meta") or {}).items()
            if k in (*_KEPT_META, "versionId")}
    if meta:
        out["meta"] = copy.deepcopy(meta)
    for key, value in proposal.items():
        if key not in ("resourceType", "id", "meta", *_KEPT):
            out[key] = copy.deepcopy(value)
    for key in _KEPT:
        if key in plan:
            out[key] = copy.deepcopy(plan[key])
    out = sp.with_phase(out, sp.phase_ext(plan))
    out.update(intent="plan", status=plan.get("status"))
    return out


@audited("$propose-revision")
def propose(op: Operation, plan_id: str, body: Any, if_match: str | None) -> Json:
    params = parameters.read(body, "$propose-revision", PROPOSE)
    stored, plan = _established(op, plan_id, "$propose-revision", if_match)
    revision = params.resource("revision")
    if not isinstance(revision, dict) or revision.get("resourceType") != "CarePlan":
        raise params.invalid("revision", "the revision is the revised CarePlan")
    if sp.ref_target(revision.get("subject")) != sp.ref_target(plan.get("subject")) or \
            (sp.ref_target(plan.get("subject")) is None
             and revision.get("subject") != plan.get("subject")):
        raise params.invalid("revision", "a revision is about the same individual (subject)")
    proposal = sp.with_phase({k: copy.deepcopy(v) for k, v in revision.items()
                              if k not in ("id", "meta")}, None)
    # The version the person is asked to approve a change of; `type` spelled out because a
    # versioned reference does not end in its type.
    proposal.update(intent="proposal", status="draft",
                    replaces=[{"reference": version_ref(stored), "type": "CarePlan"}])
    proposal.setdefault("author", sp.coordinator_ref(plan))
    proposal["meta"] = {"security": [sip.NOPATIENT.coding()]}
    # Checked as the plan it would become (which claims the SIP profile, so a revision without
    # the SIP category fails here too): the law's required content, the references.
    candidate = applied(plan, proposal)
    if sp.decided(candidate) == sp.decided(plan):
        raise params.invalid("revision", "the revision changes nothing the plan decides")
    prepare(copy.deepcopy(candidate), tx_resolver(op.tx), expected_type="CarePlan")
    written = op.create(proposal)
    return parameters.out(parameters.resource("revision", written.json()))


@audited("$approve-revision")
def approve(op: Operation, plan_id: str, body: Any, if_match: str | None) -> Json:
    params = parameters.read(body, "$approve-revision", APPROVE)
    stored, plan = _established(op, plan_id, "$approve-revision", if_match)
    target = sp.ref_target(params.reference("revision"))
    if not target or target[0] != "CarePlan":
        raise params.invalid("revision", "must reference the proposed revision (a CarePlan)")
    proposal_stored = op.current("CarePlan", target[1])
    proposal = proposal_stored.json()
    replaced = next((r.get("reference", "") for r in proposal.get("replaces", [])), "")
    if not sp.is_proposal(proposal) or sp.ref_target({"reference": replaced}) != (
            "CarePlan", plan_id):
        raise params.invalid("revision", f"CarePlan/{target[1]} is not a proposed revision of "
                                         f"CarePlan/{plan_id}")
    if proposal.get("status") != "draft":
        raise sp.business_rule(f"The proposed revision is {proposal.get('status')}; propose a "
                               "new one")
    if replaced != version_ref(stored):
        raise sp.business_rule(f"The plan has changed since the revision was proposed (it "
                               f"revises {replaced}; the plan is at version "
                               f"{stored.version_id}): propose the revision again")
    approved = params.when("approvedAt")
    assert approved is not None
    if approved[1] > op.now:
        raise params.invalid("approvedAt", "the approval cannot lie in the future")
    # A revision of the established plan is not approved before the plan was established
    # (1900 was taken): its period.start, a date, as early as any zone has it (-14 hours).
    start = (plan.get("period") or {}).get("start")  # (a profiled plan: period an object)
    began = sp.time_of(start)
    if began is not None and parse_range(approved[0])[1] < began - sp.ZONE_US:
        raise params.invalid("approvedAt", f"the approval lies before the plan was established "
                                           f"({start}, CarePlan.period.start)")
    # Nor before the change was proposed: the proposal as it reads now (its current version),
    # less a day for a change agreed at a meeting and entered in the hub afterwards.
    slack = _ENTERED_US + (0 if "T" in approved[0] else sp.ZONE_US)
    if parse_range(approved[0])[1] < proposal_stored.last_updated - slack:
        raise sp.business_rule(
            f"The approval ({approved[0]}) lies before the revision was proposed "
            f"(CarePlan/{proposal_stored.id} as it reads now, "
            f"{proposal_stored.last_updated_instant}; an approval is taken up to a day "
            "before the proposal was entered): the person approves a proposed change",
            params.where("approvedAt"))
    approvers = params.references("approvedBy")
    sp.check_approvers(op.tx, plan, approvers, approved[1], params.where("approvedBy"))

    written = op.update(applied(plan, proposal))
    if op.ctx.messaging is not None:  # (a revision of the follow-up date alone, too)
        op.ctx.messaging.revision_approved(op.tx, op.ctx, plan, written.json())
    proposal["status"] = "completed"
    closed = op.update(proposal)
    _activate_new_goals(op, plan, written.json())
    revoke_proposals(op, plan_id)
    prov = op.create(op.provenance(
        written, {"coding": [{"system": _DATA_OPERATION, "code": "UPDATE", "display": "revise"}],
                  "text": "Revidering godkänd av den enskilde / revision approved"},
        org_ref=sp.coordinator_ref(plan), reason=params.string("reason"), occurred=approved[0],
        attesters=approvers, entities=[("source", proposal_stored), ("revision", stored)]))
    deadlines.reconcile(op, written)
    return parameters.out(parameters.resource("carePlan", written.json()),
                          parameters.resource("provenance", prov.json()),
                          parameters.resource("revision", closed.json()))


def _activate_new_goals(op: Operation, old: Json, new: Json) -> None:
    """Goals the revision added as proposals are in effect now that the person approved."""
    before = {sp.ref_target(g) for g in old.get("goal", [])}
    for g in new.get("goal", []):
        target = sp.ref_target(g)
        if target is None or target in before or target[0] != "Goal":
            continue
        goal = sp.current_json(op.tx, *target)
        if goal is not None and goal.get("lifecycleStatus") == "proposed":
            goal["lifecycleStatus"] = "active"
            op.update(goal)

