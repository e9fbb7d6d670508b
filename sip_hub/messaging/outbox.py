"""The transactional outbox: messages are written in the transaction of the change they tell
about, one delivery per destination organisation, and only then published by the relay.

Routing is by consent: a message about a person's SIP goes to exactly the organisations that
hold a live reading grant for the person when the message is written (``destinations_for``),
and a delivery whose organisation is no longer covered when its turn comes is withdrawn, not
delivered (rule 1: nothing more is shared with those the consent no longer covers).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest
from ..fhir import exact
from ..fhir.dates import now_utc, to_us
from ..fhir.indexing import split_reference
from ..ids import uuid7
from ..metrics import DEAD_LETTERS, DELIVERIES, count_committed
from ..store import Tx
from ..store import outbox as sql
from ..store.outbox import NOTIFICATION, RESPONSE

Json = dict[str, Any]
WITHDRAWN_REASON = "The person's consent no longer covers this organisation"
# Where the fate of deliveries is told, whichever step settles them (relay or deliverer).
delivery_log = logging.getLogger("sip_hub.delivery")


def no_endpoint_reason(org: str, source: object = None) -> str:
    """``source``: the endpoints file read (SIP_HUB_MESSAGE_ENDPOINTS_FILE, or the mappings
    folder's endpoints.json), named as configured (always mappings/endpoints.json before)."""
    where = f" ({source})" if source else ""
    return f"No message endpoint is configured for {org}{where}"


def log_dead(d: sql.Delivery, reason: str) -> None:
    """Tell operators of a dead delivery, once it is recorded (after the commit)."""
    delivery_log.warning("delivery %s of message %s to %s is dead: %s", d.id, d.message_id,
                         d.dest_org, reason, extra={  # fields of their own in JSON
                             "delivery": d.id, "message_id": d.message_id,
                             "organization": d.dest_org, "event": d.event})

__all__ = ["NOTIFICATION", "RESPONSE", "SipKey", "covered", "destinations_for", "enqueue",
           "is_covered", "log_dead", "no_endpoint_reason", "record_dead", "record_withdrawn",
           "settle_unreachable", "sip_key", "uncovered", "withdraw_uncovered"]


@dataclass(frozen=True, slots=True)
class SipKey:
    """The SIP a message concerns. Its person and the destination are the stream whose order
    is kept: the plan is '' for what is told before the plan exists (the consent the SIP
    starts under) and after it is closed, and those messages keep their place among the
    plan's."""

    patient_id: str
    careplan_id: str = ""  # '' until the SIP has a plan


def covered(tx: Tx, patient_id: str, now: int | None = None) -> set[str]:
    """The organisations that hold a live reading grant for the patient: the participants the
    active consent covers, until its end."""
    at = to_us(now_utc()) if now is None else now
    return {g.org for g in tx.grants(patient_id) if g.reads_at(at)}


def is_covered(tx: Tx, patient_id: str, org: str, now: int | None = None) -> bool:
    return org in covered(tx, patient_id, now)


def uncovered(tx: Tx, deliveries: Iterable[sql.Delivery], now: int) -> set[str]:
    """The ids of the notifications among ``deliveries`` to organisations the consent no
    longer covers (to withdraw, not deliver); the patients' grants read in one statement."""
    notes = [d for d in deliveries if d.kind == NOTIFICATION]
    tx.load_grants(d.patient_id for d in notes)
    return {d.id for d in notes if not is_covered(tx, d.patient_id, d.dest_org, now)}


def record_withdrawn(tx: Tx, d: sql.Delivery, now: int) -> bool:
    """Withdraw an open delivery the consent no longer covers; False when another copy of it
    settled it meanwhile (then it is not counted twice)."""
    if not sql.set_state(tx, d.id, sql.WITHDRAWN, now, error=WITHDRAWN_REASON,
                         only_from=sql.OPEN):
        return False
    count_committed(tx, DELIVERIES.labels("withdrawn"))
    return True


def record_dead(tx: Tx, deliveries: list[sql.Delivery], reason: str, now: int
                ) -> list[sql.Delivery]:
    """Record open deliveries dead with the reason, their attempt counted, in one statement,
    and counted for the dead-letter alert; those another copy settled meanwhile are left out
    (neither counted nor dead-lettered twice)."""
    settled = sql.mark_dead(tx, [d.id for d in deliveries], reason, now)
    dead = [d for d in deliveries if d.id in settled]
    count_committed(tx, DELIVERIES.labels("dead"), len(dead))
    for d in dead:
        count_committed(tx, DEAD_LETTERS.labels(d.kind))
    return dead


def settle_unreachable(tx: Tx, deliveries: list[sql.Delivery], now: int,
                       source: object = None) -> list[tuple[sql.Delivery, str]]:
    """Settle deliveries to organisations that have no endpoint where they are claimed, as
    the deliverer would once they came off the bus: a notification the consent no longer
    covers is withdrawn, the rest are dead with the reason (no attempt could reach an
    organisation without an address; replay sends them once it has one). Returns the dead
    ones with their reason: their copies go to the dead-letter queue."""
    withdraw = uncovered(tx, deliveries, now)
    by_org: dict[str, list[sql.Delivery]] = {}
    for d in deliveries:
        if d.id in withdraw:
            record_withdrawn(tx, d, now)
        else:
            by_org.setdefault(d.dest_org, []).append(d)
    dead: list[tuple[sql.Delivery, str]] = []
    for org, ds in by_org.items():  # a statement per organisation, not per delivery
        reason = no_endpoint_reason(org, source)
        dead += [(d, reason) for d in record_dead(tx, ds, reason, now)]
    return dead


def destinations_for(tx: Tx, patient_id: str, sender_org: str | None) -> list[str]:
    """Exactly the organisations covered for the patient now, plus the sender (for its
    response), in a stable order."""
    orgs = covered(tx, patient_id)
    if sender_org:
        orgs.add(sender_org)
    return sorted(orgs)


def sip_key(tx: Tx, bundle: Json) -> SipKey:
    """The SIP of a message Bundle, from its MessageHeader.focus (a CarePlan or the Patient),
    looking up the plan's patient when the Bundle does not carry the plan."""
    entries = bundle.get("entry") or []
    header = entries[0]["resource"] if entries else {}
    refs = [split_reference(f.get("reference", "")) for f in header.get("focus") or []]
    plan = next((t[1] for t in refs if t and t[0] == "CarePlan"), None)
    patient = next((t[1] for t in refs if t and t[0] == "Patient"), None)
    if patient is None and plan is not None:
        carried = next((e["resource"] for e in entries[1:]
                        if e.get("resource", {}).get("resourceType") == "CarePlan"
                        and e["resource"].get("id") == plan), None)
        if carried is None:
            cur = tx.current("CarePlan", plan)
            carried = cur.doc() if cur is not None and not cur.deleted else {}
        subject = split_reference((carried.get("subject") or {}).get("reference", ""))
        patient = subject[1] if subject and subject[0] == "Patient" else None
    if patient is None:
        raise BadRequest("The message names no SIP: MessageHeader.focus needs its CarePlan or "
                         "Patient")
    return SipKey(patient, plan or "")


def enqueue(tx: Tx, message_bundle: Json, destinations: Iterable[str], *,
            kind: str = NOTIFICATION, sip: SipKey | None = None,
            endpoint_url: str | None = None) -> list[str]:
    """Write the message and one pending delivery per destination in the caller's
    transaction; returns the delivery ids. They commit (and are then published) together with
    the change the message tells about, or not at all."""
    dests = sorted(set(destinations))
    if not dests:
        return []
    header = message_bundle["entry"][0]["resource"]
    key = sip or sip_key(tx, message_bundle)
    now = to_us(now_utc())
    sql.insert_message(tx, message_id=header["id"], event=header["eventCoding"]["code"],
                       kind=kind, patient_id=key.patient_id, careplan_id=key.careplan_id,
                       content=exact.dumps(message_bundle), now=now)
    seqs = sql.next_seqs(tx, key.patient_id, dests)
    rows = [sql.delivery_row(id=uuid7(), message_id=header["id"], dest_org=org,
                             patient_id=key.patient_id, careplan_id=key.careplan_id,
                             seq=seqs[org], now=now, endpoint_url=endpoint_url)
            for org in dests]
    sql.insert_deliveries(tx, rows)
    return [r["id"] for r in rows]


def withdraw_uncovered(tx: Tx, patient_id: str) -> list[str]:
    """Withdraw the patient's notifications not yet delivered to organisations the consent no
    longer covers; call after a consent (grant) change, in its transaction."""
    now = to_us(now_utc())
    return sql.withdraw(tx, patient_id, covered(tx, patient_id, now), now, WITHDRAWN_REASON)
