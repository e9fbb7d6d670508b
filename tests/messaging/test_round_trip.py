"""The whole invitation round trip through the bus, as the organisations live it: the
coordinator invites over REST, the invited organisations answer by message, and every
organisation the consent covers hears exactly what happened, once and in order, through the
real relay and deliverer to its endpoint on loopback; an organisation outside the consent hears
nothing. Run on the embedded shape (SQLite, in-process bus) and the production shape
(PostgreSQL, RabbitMQ)."""

from __future__ import annotations

from typing import Any

import pytest

import sip_factory as f
from harness import (BUP, HAB, ORGS, OUTSIDER, SCHOOL, SOC, URL, Hub, Receiver,  # noqa: F401
                     broker, hub, receivers)
from harness import settled
from sip_hub.messaging import builder, vocabulary as vocab
from sip_process import (TASK_SYSTEM, alva_case, at, code, day, dt, invitation, parameters,
                         post, read, ref, string, tasks, transition, values, write_case)

Json = dict[str, Any]

BACKENDS = pytest.mark.parametrize("store, broker", [
    ("sqlite", "memory"),
    pytest.param("postgres", "rabbitmq", marks=[pytest.mark.postgres, pytest.mark.rabbitmq]),
], indirect=True, ids=["sqlite-memory", "postgres-rabbitmq"])

ORG_REF = {BUP: f.BUP, SCHOOL: f.SCHOOL, HAB: f.HABILITATION}


def alva_with_four_parties() -> list[Json]:
    """Alva's SIP before the invitations, with a consent that also names habilitation."""
    out = []
    for r in alva_case():
        if r["resourceType"] == "Consent":
            out.append(f.habilitation())
            r = f.sip_consent(actor_refs=(f.SOCIAL_SERVICES, f.BUP, f.SCHOOL, f.HABILITATION,
                                          f.MOTHER), start=day(-10), end=day(365))
        out.append(r)
    return out


def answer(sender: str, task_id: str, reason: str, *params: Json) -> Json:
    """An invitation-response message carrying the ``$respond`` Parameters, to the
    coordinator."""
    return builder.message(
        vocab.INVITATION_RESPONSE, fhir_base=f"https://{sender}.test/fhir", sender=sender,
        reason=reason, destinations=[builder.Party(SOC, f"https://{SOC}.test/pm")],
        focus=[f"Task/{task_id}", "CarePlan/alva-sip"],
        resources=[{"resourceType": "Parameters", "id": "svar", **parameters(*params)}])


def response_code(resp: Any) -> str:
    assert resp.status_code == 200, resp.text
    header = resp.json()["entry"][0]["resource"]
    assert header["eventCoding"]["code"] == vocab.ACKNOWLEDGEMENT
    return str(header["response"]["code"])


def story(r: Receiver) -> list[tuple[str, str | None, str, str]]:
    """What an organisation was told, in the order it arrived: (event, reason, sender, the
    owner of the invitation Task the message is about)."""
    out = []
    for m in r.received:
        header = m["entry"][0]["resource"]
        reason = header.get("reason", {}).get("coding", [{}])[0].get("code")
        (task,) = [e["resource"] for e in m["entry"][1:]
                   if e["resource"]["resourceType"] == "Task"]
        out.append((header["eventCoding"]["code"], reason,
                    header["sender"]["identifier"]["value"], task["owner"]["reference"]))
    return out


@BACKENDS
def test_an_invitation_round_trip_reaches_exactly_the_covered_organisations(
        hub: Hub, receivers: Any) -> None:
    endpoint = {org: receivers() for org in ORGS}
    hub.configure({org: r.url for org, r in endpoint.items()})
    soc = hub.headers[SOC]
    write_case(hub.client, soc, alva_with_four_parties())
    assert transition(hub.client, soc, "alva-sip", "kartlaggning").status_code == 200

    # The coordinator invites three organisations, as its system would: over REST.
    out = post(hub.client, "CarePlan/alva-sip/$invite", soc,
               invitation(f.BUP, f.SCHOOL, (f.HABILITATION, "arbetsterapeut")))
    assert out.status_code == 200, out.text
    task_of = {t["owner"]["reference"]: t["id"] for t in values(out.json(), "task")}
    assert set(task_of) == {f.BUP, f.SCHOOL, f.HABILITATION}
    appointment_id = values(out.json(), "appointment")[0]["id"]

    # Each answers by message: one accepts with its representative, one proposes a new time,
    # one declines.
    new_start, new_end = at(days=14), at(days=14, hours=1)
    answers = [
        (BUP, vocab.ACCEPT, [code("answer", "accept"),
                             ref("representative", f.BUP_REPRESENTATIVE)]),
        (SCHOOL, vocab.NEW_TIME_PROPOSED, [code("answer", "propose-time"),
                                           dt("start", new_start), dt("end", new_end)]),
        (HAB, vocab.DECLINE, [code("answer", "decline"),
                              string("reason", "Ingen arbetsterapeut ledig den veckan")]),
    ]
    for sender, reason, params in answers:
        msg = answer(sender, task_of[ORG_REF[sender]], reason, *params)
        assert response_code(hub.post(sender, URL, msg)) == vocab.OK, sender

    hub.rounds(lambda: settled(hub), seconds=60)

    # The SIP holds the answers.
    team = read(hub.client, "CareTeam/alva-sip", soc)
    members = {p.get("onBehalfOf", p["member"])["reference"]: p["member"]["reference"]
               for p in team["participant"]}
    assert members[f.BUP] == f.BUP_REPRESENTATIVE
    assert members[f.SCHOOL] == f.SCHOOL and members[f.HABILITATION] == f.HABILITATION
    assert team["status"] == "active"

    appt = read(hub.client, f"Appointment/{appointment_id}", soc)
    invited = {e["valueReference"]["reference"]: p for p in appt["participant"]
               for e in p.get("extension", [])}
    assert invited[f.BUP]["status"] == "accepted"
    assert invited[f.BUP]["actor"] == {"reference": f.BUP_REPRESENTATIVE}
    assert invited[f.SCHOOL]["status"] == "tentative"
    assert invited[f.HABILITATION]["status"] == "declined"
    assert appt["status"] == "pending"   # not everyone who must come has accepted

    task = {org: read(hub.client, f"Task/{tid}", soc) for org, tid in task_of.items()}
    assert task[f.BUP]["status"] == "accepted"
    assert task[f.BUP]["output"][0]["valueReference"] == {"reference": f.BUP_REPRESENTATIVE}
    assert task[f.SCHOOL]["status"] == "in-progress"
    assert task[f.SCHOOL]["output"][0]["valuePeriod"] == {"start": new_start, "end": new_end}
    assert task[f.HABILITATION]["status"] == "rejected"
    assert task[f.HABILITATION]["statusReason"]["text"] == \
        "Ingen arbetsterapeut ledig den veckan"
    # Invited organisations must attend: the decline opened a Task for the coordinator.
    (follow_up,) = tasks(hub.client, f"code={TASK_SYSTEM}|invitation-declined"
                                     f"&owner={f.SOCIAL_SERVICES}&status=requested", soc)
    assert follow_up["focus"] == {"reference": f"Task/{task_of[f.HABILITATION]}"}

    # Everyone covered heard exactly what happened, once each, in order; the outsider nothing.
    invitations = [(vocab.INVITATION, None, SOC, org) for org in (f.BUP, f.SCHOOL,
                                                                    f.HABILITATION)]
    responses = {sender: (vocab.INVITATION_RESPONSE, reason, sender, ORG_REF[sender])
                 for sender, reason, _ in answers}
    assert story(endpoint[SOC]) == [responses[BUP], responses[SCHOOL], responses[HAB]]
    assert story(endpoint[BUP]) == invitations + [responses[SCHOOL], responses[HAB]]
    assert story(endpoint[SCHOOL]) == invitations + [responses[BUP], responses[HAB]]
    assert story(endpoint[HAB]) == invitations + [responses[BUP], responses[SCHOOL]]
    assert endpoint[OUTSIDER].received == []
    for org in (SOC, BUP, SCHOOL, HAB):
        r = endpoint[org]
        assert len(set(r.header_ids)) == len(r.received) and r.applied == r.header_ids, org
        for m in r.received:
            to = [d["receiver"]["identifier"]["value"]
                  for d in m["entry"][0]["resource"]["destination"]]
            assert org in to and OUTSIDER not in to
    deliveries = hub.deliveries()
    assert {d.state for d in deliveries} == {"delivered"}
    assert sorted(d.dest_org for d in deliveries) == sorted(
        [SOC] * 3 + [BUP] * 5 + [SCHOOL] * 5 + [HAB] * 5)
