"""Messages the hub must refuse: too large, not a message, an unknown event, or out of order
(about a SIP, an invitation or a person the hub cannot apply it to). Each gets a clear 4xx or a
fatal-error response naming the problem, and leaves nothing behind: no resource written, no
message sent on, and (for 4xx) not even the ids remembered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import sip_factory as f
from conftest import issue_token
from fhirhttp import JSON_HEADERS
from harness import (BUP, SOC, URL, Hub, broker, current_plan, hub,  # noqa: F401
                     status_change, world)
from sip_hub.messaging import builder, vocabulary as vocab
from sip_hub.settings import Settings
from sip_process import (alva_case, approval, code, day, gosta_case, invitation, parameters,
                         post, ref, transition, values, write_case)

Json = dict[str, Any]
LIMIT = 32 * 1024


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The hub with a small body limit, so that an oversized message is cheap to make."""
    return Settings(env="test", data_dir=tmp_path, base_url="http://hub.test",
                    auto_migrate=False, max_body_bytes=LIMIT)


def snapshot(hub: Hub) -> tuple[list[tuple[str, str, int]], list[str]]:
    """Every stored resource version but the audit trail (refusals are audited), and every
    outbox delivery."""
    with hub.store.begin(write=False) as tx:
        rows, total = tx.history(count=100_000)
    assert total == len(rows)
    stored = sorted((s.type, s.id, s.version_id) for s in rows if s.type != "AuditEvent")
    return stored, sorted(d.id for d in hub.deliveries())


@pytest.fixture
def unchanged(world: Hub) -> Iterator[Hub]:
    """The demo SIP; the test must leave the store and the outbox as they were."""
    before = snapshot(world)
    yield world
    assert snapshot(world) == before


def refused(resp: Any) -> str:
    """The diagnostics of a fatal-error response message (asserting that it is one)."""
    assert resp.status_code == 200, resp.text
    entries = resp.json()["entry"]
    header = entries[0]["resource"]
    assert header["eventCoding"]["code"] == vocab.ACKNOWLEDGEMENT
    assert header["response"]["code"] == vocab.FATAL_ERROR, resp.text
    oo = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "OperationOutcome")
    assert oo["issue"] and all(i["severity"] in ("error", "fatal") for i in oo["issue"])
    return " | ".join(i.get("diagnostics", "") for i in oo["issue"])


def outcome(resp: Any, status: int) -> str:
    assert resp.status_code == status, resp.text
    oo = resp.json()
    assert oo["resourceType"] == "OperationOutcome" and oo["issue"][0]["severity"] == "error"
    return str(oo["issue"][0].get("diagnostics", ""))


def padded(hub: Hub) -> Json:
    """A participant's message grown past the body limit (a long note on its insats)."""
    msg = status_change(hub)
    msg["entry"][1]["resource"]["activity"][0]["detail"]["description"] = "x" * (LIMIT + 1)
    return msg


# -- too large, or not a message ------------------------------------------------------------

def test_an_oversized_message_is_413_and_not_even_its_ids_are_remembered(unchanged: Hub
                                                                          ) -> None:
    msg = padded(unchanged)
    assert "limit of 32768 bytes" in outcome(unchanged.post(BUP, URL, msg), 413)
    # Nothing was remembered: the same ids in a message of the right size are a new message.
    small = status_change(unchanged)
    small["id"], small["entry"][0]["resource"]["id"] = msg["id"], msg["entry"][0]["resource"]["id"]
    small["entry"][0]["fullUrl"] = msg["entry"][0]["fullUrl"]
    small["entry"][0]["resource"]["destination"][0]["receiver"]["identifier"]["value"] = \
        "SE2321000016-OUT1"  # refused for another reason: proves it was processed afresh
    assert "SE2321000016-OUT1" in refused(unchanged.post(BUP, URL, small))


def test_an_oversized_message_without_a_declared_length_is_413(unchanged: Hub) -> None:
    data = orjson.dumps(padded(unchanged))

    def chunks() -> Iterator[bytes]:   # streamed: no Content-Length to refuse it by
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]
    r = unchanged.client.post(URL, content=chunks(), headers=JSON_HEADERS | unchanged.headers[BUP])
    assert "limit of 32768 bytes" in outcome(r, 413)


@pytest.mark.parametrize("content, content_type, status, says", [
    (b'{"resourceType": "Bundle", "type": "message", ', "application/fhir+json", 400,
     "Malformed JSON"),
    (b"   ", "application/fhir+json", 400, "no body"),
    (b"resourceType=Bundle", "application/x-www-form-urlencoded", 415, "not supported"),
    (b'<?xml version="1.0"?><!DOCTYPE Bundle [<!ENTITY x "y">]>'
     b'<Bundle xmlns="http://hl7.org/fhir"><type value="message"/></Bundle>',
     "application/fhir+xml", 400, "DOCTYPE"),
])
def test_what_cannot_be_read_as_a_message_is_a_clear_4xx(unchanged: Hub, content: bytes,
                                                         content_type: str, status: int,
                                                         says: str) -> None:
    r = unchanged.client.post(URL, content=content, headers={
        "content-type": content_type, "accept": "application/fhir+json"} | unchanged.headers[BUP])
    assert says in outcome(r, status)


@pytest.mark.parametrize("where", ["Bundle.id", "MessageHeader.id"])
@pytest.mark.parametrize("bad_id", ["a\u0000b", "x" * 65, "two words", "\u00e5r", "abc\n"])
def test_ids_that_are_not_fhir_ids_are_a_400_before_the_inbox_is_asked(unchanged: Hub,
                                                                       where: str,
                                                                       bad_id: str) -> None:
    """The inbox keys resent messages by these ids; a NUL in one reached PostgreSQL (which
    refuses NUL in text) and answered 5xx."""
    msg = status_change(unchanged)
    if where == "Bundle.id":
        msg["id"] = bad_id
    else:
        msg["entry"][0]["resource"]["id"] = bad_id
    says = outcome(unchanged.post(BUP, URL, msg), 400)
    path = "Bundle.id" if where == "Bundle.id" else "Bundle.entry[0].resource.id"
    assert says.startswith(path) and "not a valid FHIR id" in says


def test_an_unknown_event_is_a_fatal_error_and_its_resources_are_not_applied(unchanged: Hub
                                                                              ) -> None:
    msg = status_change(unchanged)   # carries a real change to BUP's insats
    msg["entry"][0]["resource"]["eventCoding"]["code"] = "plan-exploded"
    text = refused(unchanged.post(BUP, URL, msg))
    assert "Unknown SIP event 'plan-exploded'" in text and vocab.INSATS_STATUS_CHANGED in text
    assert current_plan(unchanged)["activity"][0]["detail"]["status"] == "in-progress"


def test_a_definition_of_another_event_is_a_fatal_error_naming_it(unchanged: Hub) -> None:
    """A MessageHeader.definition naming another event's MessageDefinition (sip-closed's on
    an insats-status-changed) says the message is something else than its event: which one
    the sender meant is a guess, so it is refused, nothing applied or sent on."""
    msg = status_change(unchanged)   # carries a real change to BUP's insats
    closed = vocab.spec(vocab.SIP_CLOSED).definition_url
    msg["entry"][0]["resource"]["definition"] = closed
    r = unchanged.post(BUP, URL, msg)
    text = refused(r)
    assert closed in text
    oo = next(e["resource"] for e in r.json()["entry"]
              if e["resource"]["resourceType"] == "OperationOutcome")
    assert ["Bundle.entry[0].resource.definition"] in [i.get("expression") for i in oo["issue"]]
    assert vocab.spec(vocab.INSATS_STATUS_CHANGED).definition_url in text
    assert current_plan(unchanged)["activity"][0]["detail"]["status"] == "in-progress"


@pytest.mark.parametrize("suffix", ["", "|0.1.0"])
def test_the_events_own_definition_is_taken(world: Hub, suffix: str) -> None:
    """The event's own MessageDefinition (with or without its version) is what a message
    may name: taken, the message applied."""
    msg = status_change(world)
    own = vocab.spec(vocab.INSATS_STATUS_CHANGED).definition_url
    msg["entry"][0]["resource"]["definition"] = own + suffix
    r = world.post(BUP, URL, msg)
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["resource"]["response"]["code"] == vocab.OK, r.text


def test_a_subsetted_entry_is_a_fatal_error_and_nothing_is_applied(unchanged: Hub) -> None:
    """A message carrying a resource tagged SUBSETTED (the part a read with _summary or
    _elements returns) would replace the whole with that part: refused as a REST write of
    it is, naming the tag, the plan as it was and nothing sent on."""
    msg = status_change(unchanged)   # carries a real change to BUP's insats
    msg["entry"][1]["resource"]["meta"] = {"tag": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "SUBSETTED"}]}
    text = refused(unchanged.post(BUP, URL, msg))
    assert "SUBSETTED" in text and "Read the whole resource" in text
    assert current_plan(unchanged)["activity"][0]["detail"]["status"] == "in-progress"


def test_an_entry_of_no_known_resource_type_is_a_fatal_error_naming_it(unchanged: Hub
                                                                        ) -> None:
    msg = status_change(unchanged)
    msg["entry"].append({"fullUrl": "urn:uuid:8d1b9e3a-4c1f-4c55-9d3e-0f2f7d0c9a11",
                         "resource": {"resourceType": "Insats", "id": "x"}})
    text = refused(unchanged.post(BUP, URL, msg))
    assert "Unknown resourceType 'Insats'" in text
    assert current_plan(unchanged)["activity"][0]["detail"]["status"] == "in-progress"


# -- out of order -----------------------------------------------------------------------------

def answer_to(task_id: str, *params: Json) -> Json:
    """BUP's acceptance of the invitation ``task_id``, by message."""
    return builder.message(
        vocab.INVITATION_RESPONSE, fhir_base="https://bup.test/fhir", sender=BUP,
        reason=vocab.ACCEPT, destinations=[builder.Party(SOC, f"https://{SOC}.test/pm")],
        focus=[f"Task/{task_id}", "CarePlan/alva-sip"],
        resources=[{"resourceType": "Parameters", "id": "svar", **parameters(*params)}])


def test_an_answer_to_an_invitation_that_does_not_exist_is_a_fatal_error(hub: Hub) -> None:
    write_case(hub.client, hub.headers[SOC], alva_case())
    assert transition(hub.client, hub.headers[SOC], "alva-sip", "kartlaggning").status_code == 200
    out = post(hub.client, "CarePlan/alva-sip/$invite", hub.headers[SOC], invitation(f.BUP))
    assert out.status_code == 200, out.text
    assert [t["owner"] for t in values(out.json(), "task")] == [{"reference": f.BUP}]
    before = snapshot(hub)
    accept = (code("answer", "accept"), ref("representative", f.BUP_REPRESENTATIVE))
    assert "no-such-invitation" in refused(hub.post(BUP, URL, answer_to("no-such-invitation",
                                                                        *accept)))
    assert snapshot(hub) == before


def plan_message(hub: Hub, event: str, *extra: Json) -> Json:
    """The coordinator's message about its plan (carried as stored, with ``extra`` entries),
    to BUP."""
    plan = current_plan(hub)
    plan.pop("meta")
    return builder.message(event, fhir_base="https://soc.test/fhir", sender=SOC,
                           destinations=[builder.Party(BUP, "https://bup.test/pm")],
                           focus=["CarePlan/alva-sip"], resources=[plan, *extra])


APPROVED = {"resourceType": "Parameters", "id": "beslut",
            **parameters(*approval(f.PATIENT, f.MOTHER))}


def test_an_established_plan_for_a_sip_in_draft_without_consent_is_a_fatal_error(
        hub: Hub) -> None:
    write_case(hub.client, hub.headers[SOC],
               [r for r in alva_case() if r["resourceType"] != "Consent"])
    before = snapshot(hub)
    # As the coordinator's system would send it (the person's approval), and as a bare claim.
    for msg in (plan_message(hub, vocab.PLAN_ESTABLISHED, APPROVED),
                plan_message(hub, vocab.PLAN_ESTABLISHED)):
        refused(hub.post(SOC, URL, msg))
    # Nor can the message establish the plan by saying so: the process decides.
    claimed = plan_message(hub, vocab.PLAN_ESTABLISHED, APPROVED)
    claimed["entry"][1]["resource"]["status"] = "active"
    refused(hub.post(SOC, URL, claimed))
    assert snapshot(hub) == before


@pytest.mark.parametrize("event, extra", [(vocab.PLAN_ESTABLISHED, [APPROVED]),
                                          (vocab.FOLLOW_UP_DONE, [APPROVED]),
                                          (vocab.INSATS_STATUS_CHANGED, [])])
def test_news_of_a_phase_the_sip_is_not_in_is_refused(hub: Hub, event: str,
                                                      extra: list[Json]) -> None:
    """BUP is invited and covered; the plan is in kallelse: telling BUP that it is
    established, followed up or under way would be false."""
    write_case(hub.client, hub.headers[SOC], alva_case())
    assert transition(hub.client, hub.headers[SOC], "alva-sip", "kartlaggning").status_code == 200
    assert post(hub.client, "CarePlan/alva-sip/$invite", hub.headers[SOC],
                invitation(f.BUP)).status_code == 200
    before = snapshot(hub)
    assert "kallelse" in refused(hub.post(SOC, URL, plan_message(hub, event, *extra)))
    assert snapshot(hub) == before


def test_a_message_about_a_sip_the_hub_does_not_know_is_a_fatal_error(unchanged: Hub) -> None:
    msg = status_change(unchanged)
    msg["entry"][0]["resource"]["focus"] = [{"reference": "CarePlan/no-such-sip"}]
    msg["entry"] = msg["entry"][:1]
    assert "CarePlan/no-such-sip" in refused(unchanged.post(BUP, URL, msg))
    # Carrying the plan under a new id does not make it one: a participant writes no plan.
    msg = status_change(unchanged)
    msg["entry"][1]["resource"]["id"] = "no-such-sip"
    msg["entry"][1]["fullUrl"] = msg["entry"][1]["fullUrl"].replace("alva-sip", "no-such-sip")
    msg["entry"][0]["resource"]["focus"] = [{"reference": "CarePlan/no-such-sip"}]
    assert "CarePlan.author must be your organisation" in refused(unchanged.post(BUP, URL, msg))


def consent_changed(sender: str, focus: list[str], *resources: Json) -> Json:
    return builder.message(vocab.CONSENT_CHANGED, fhir_base=f"https://{sender}.test/fhir",
                           sender=sender, reason=vocab.GRANTED,
                           destinations=[builder.Party(BUP, "https://bup.test/pm")],
                           focus=focus, resources=list(resources))


def test_a_consent_change_for_another_persons_sip_is_a_fatal_error(world: Hub) -> None:
    hub = world
    vc = {"Authorization": "Bearer " + issue_token(hub.client, hub.store, f.VARDCENTRAL_HSA)}
    write_case(hub.client, vc, gosta_case())
    before = snapshot(hub)
    # Gösta's consent, widened to the social services by them or by BUP: not theirs to change.
    gosta = next(r for r in gosta_case() if r["resourceType"] == "Consent")
    gosta["provision"]["actor"].append({"role": gosta["provision"]["actor"][0]["role"],
                                        "reference": {"reference": f.SOCIAL_SERVICES}})
    for sender, plan in ((SOC, "CarePlan/gosta-sip"), (SOC, "CarePlan/alva-sip"),
                         (BUP, "CarePlan/alva-sip")):
        text = refused(hub.post(sender, URL, consent_changed(
            sender, ["Consent/gosta-sip-samtycke", plan], gosta)))
        assert "consent does not cover your organisation" in text
    # A new person's consent told as news of Alva's SIP would reach those Alva's consent
    # covers.
    tolvan = f.sip_consent("Patient/tolvan", actor_refs=(f.SOCIAL_SERVICES, f.BUP),
                           id="tolvan-samtycke", given_by=("Patient/tolvan",),
                           start=day(-1), end=day(300))
    text = refused(hub.post(SOC, URL, consent_changed(
        SOC, ["Consent/tolvan-samtycke", "CarePlan/alva-sip"], f.patient(), tolvan)))
    assert "carries Patient/tolvan of Patient/tolvan" in text
    # Nor may a message name one person's plan and another person's SIP.
    mixed = builder.message(vocab.INSATS_STATUS_CHANGED, fhir_base="https://soc.test/fhir",
                            sender=SOC, destinations=[builder.Party(f.VARDCENTRAL_HSA,
                                                                    "https://vc.test/pm")],
                            focus=["CarePlan/alva-sip", "Patient/gosta"], resources=[])
    assert "a message concerns one person's SIP" in refused(hub.post(SOC, URL, mixed))
    assert snapshot(hub) == before
