"""Messages that do a process operation's work: an invitation answered by message goes through
``$respond`` (same rules, same effects) instead of a plain write of the Task."""

from __future__ import annotations

from typing import Any

import sip_factory as f
from harness import BUP, SOC, URL, Hub, broker, hub  # noqa: F401
from sip_hub.messaging import builder
from sip_process import (alva_case, code, invitation, parameters, post, read, ref, transition,
                         values, write_case)

Json = dict[str, Any]


def _invited(hub: Hub) -> str:
    """Alva's SIP in kallelse with BUP invited; the id of BUP's invitation Task."""
    write_case(hub.client, hub.headers[SOC], alva_case())
    assert transition(hub.client, hub.headers[SOC], "alva-sip", "kartlaggning").status_code == 200
    out = post(hub.client, "CarePlan/alva-sip/$invite", hub.headers[SOC], invitation(f.BUP))
    assert out.status_code == 200, out.text
    return next(t["id"] for t in values(out.json(), "task")
                if t["owner"]["reference"] == f.BUP)


def _answer(task_id: str, *params: Json, reason: str = "accept") -> Json:
    return builder.message(
        "invitation-response", fhir_base="https://bup.test/fhir", sender=BUP, reason=reason,
        destinations=[builder.Party(SOC, f"https://{SOC}.test/pm")],
        focus=[f"Task/{task_id}", "CarePlan/alva-sip"],
        resources=[{"resourceType": "Parameters", "id": "svar", **parameters(*params)}])


def _code(resp: Any) -> tuple[str, str]:
    assert resp.status_code == 200, resp.text
    entries = resp.json()["entry"]
    oo = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "OperationOutcome")
    return entries[0]["resource"]["response"]["code"], oo["issue"][0]["diagnostics"]


def test_an_invitation_accepted_by_message_joins_the_representative(hub: Hub) -> None:
    task_id = _invited(hub)
    msg = _answer(task_id, code("answer", "accept"), ref("representative", f.BUP_REPRESENTATIVE))
    outcome, text = _code(hub.post(BUP, URL, msg))
    assert outcome == "ok", text
    task = read(hub.client, f"Task/{task_id}", hub.headers[SOC])
    assert task["status"] == "accepted"
    team = read(hub.client, "CareTeam/alva-sip", hub.headers[SOC])
    assert any(p["member"]["reference"] == f.BUP_REPRESENTATIVE for p in team["participant"])


def test_an_answer_by_message_follows_the_operations_rules(hub: Hub) -> None:
    task_id = _invited(hub)
    msg = _answer(task_id, code("answer", "accept"))  # no representative named
    outcome, text = _code(hub.post(BUP, URL, msg))
    assert outcome == "fatal-error" and "representative" in text
    assert read(hub.client, f"Task/{task_id}", hub.headers[SOC])["status"] == "requested"
    # Only the invited organisation answers its invitation.
    other = _answer(task_id, code("answer", "decline"), reason="decline")
    other["entry"][0]["resource"]["sender"]["identifier"]["value"] = SOC
    outcome, _ = _code(hub.post(SOC, URL, other))
    assert outcome == "fatal-error"
    assert read(hub.client, f"Task/{task_id}", hub.headers[SOC])["status"] == "requested"
