"""Incoming message Bundles: identity problems are 400s, content problems are all named."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from sip_hub.errors import BadRequest, Unprocessable
from sip_hub.identifiers import HSA_ID_ALT
from sip_hub.messaging import builder, parser

SOC, BUP = "SE2120000142-SOC1", "SE2321000016-15CQ"
PLAN = {"resourceType": "CarePlan", "id": "alva-sip", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/alva"}}


def message(**changes: Any) -> dict[str, Any]:
    out = builder.message("insats-status-changed", fhir_base="https://soc.test/fhir",
                          sender=SOC, destinations=[builder.Party(BUP, "https://bup.test/pm")],
                          focus=["CarePlan/alva-sip"], resources=[copy.deepcopy(PLAN)])
    out["entry"][0]["resource"].update(changes)
    return out


def test_a_good_message_is_read_whole() -> None:
    msg = parser.parse(message())
    assert (msg.event, msg.sender_org, msg.destinations) == ("insats-status-changed", SOC,
                                                             (BUP,))
    assert (msg.patient_id, msg.careplan_id, msg.response) == ("alva", "alva-sip", None)
    assert [(f.type, f.id, f.entry) for f in msg.focus] == [("CarePlan", "alva-sip", 0)]


@pytest.mark.parametrize("breaks, expression", [
    (lambda m: {"resourceType": "Patient"}, None),
    (lambda m: m | {"type": "transaction"}, "Bundle.type"),
    (lambda m: {k: v for k, v in m.items() if k != "id"}, "Bundle.id"),
    (lambda m: m | {"entry": m["entry"][1:]}, "Bundle.entry[0].resource"),
    (lambda m: _header(m, id=None), "Bundle.entry[0].resource.id"),
    (lambda m: _header(m, sender=None), "Bundle.entry[0].resource.sender"),
    (lambda m: _header(m, sender={"identifier": {"system": "urn:other", "value": SOC}}),
     "Bundle.entry[0].resource.sender"),
])
def test_what_identifies_a_message_is_a_bad_request(breaks: Any, expression: str | None
                                                    ) -> None:
    with pytest.raises(BadRequest) as caught:
        parser.envelope(breaks(message()))
    if expression:
        assert caught.value.issues[0].expression == (expression,)


def _header(m: dict[str, Any], **changes: Any) -> dict[str, Any]:
    m = copy.deepcopy(m)
    header = m["entry"][0]["resource"]
    for k, v in changes.items():
        if v is None:
            header.pop(k, None)
        else:
            header[k] = v
    return m


def test_every_content_problem_is_reported_at_once_by_fhirpath() -> None:
    m = message()
    header = m["entry"][0]["resource"]
    header["eventCoding"]["code"] = "invitation-response"   # needs Task focus and a reason
    header["destination"] = [{"endpoint": "https://bup.test/pm"}]
    header["source"].pop("name")
    m["entry"].append({"resource": {"resourceType": "Goal"}})
    with pytest.raises(Unprocessable) as caught:
        parser.parse(m)
    found = {(i.expression[0], i.diagnostics.split(" ")[0]) for i in caught.value.issues}
    where = {e for e, _ in found}
    assert "Bundle.entry[0].resource.reason" in where
    assert "Bundle.entry[0].resource.destination[0].receiver" in where
    assert "Bundle.entry[0].resource.source.name" in where
    assert "Bundle.entry[0].resource.focus" in where          # Task 1..1 missing
    assert any(e.startswith("Bundle.entry[2]") for e in where)  # no fullUrl


def test_structure_is_checked_with_the_fhir_models() -> None:
    m = message()
    m["entry"][1]["resource"]["status"] = 7
    with pytest.raises(Unprocessable) as caught:
        parser.parse(m)
    assert caught.value.issues[0].expression[0].startswith("Bundle.entry[1].resource")


def test_unknown_event_and_unknown_focus_are_named() -> None:
    m = message()
    m["entry"][0]["resource"]["eventCoding"]["code"] = "plan-exploded"
    m["entry"][0]["resource"]["focus"].append({"reference": "urn:uuid:nowhere"})
    with pytest.raises(Unprocessable) as caught:
        parser.parse(m)
    text = " | ".join(i.diagnostics for i in caught.value.issues)
    assert "Unknown SIP event 'plan-exploded'" in text and "urn:uuid:nowhere" in text


def test_a_message_names_the_sip_it_concerns() -> None:
    m = message(focus=[{"reference": "CarePlan/alva-sip"}])
    m["entry"][0]["resource"]["eventCoding"]["code"] = "acknowledgement"
    m["entry"][0]["resource"].pop("definition")  # (the event's it was, refused beside another)
    m["entry"][0]["resource"]["response"] = {"identifier": "req-1", "code": "ok"}
    m["entry"][0]["resource"]["focus"] = []
    m["entry"][0]["resource"].pop("focus")
    with pytest.raises(Unprocessable, match="names the SIP it concerns"):
        parser.parse(m)


def test_both_hsa_oids_are_accepted_and_normalised() -> None:
    m = _header(message(), sender={"identifier": {"system": HSA_ID_ALT,
                                                  "value": SOC.lower()}})
    assert parser.envelope(m).sender_org == SOC


def test_a_new_resource_in_focus_by_urn_is_resolved_to_its_entry() -> None:
    plan = {k: v for k, v in PLAN.items() if k != "id"}
    m = builder.message("sip-initiated", fhir_base="https://soc.test/fhir", sender=SOC,
                        destinations=[builder.Party(BUP, "https://bup.test/pm")],
                        focus=[], resources=[plan])
    full = m["entry"][1]["fullUrl"]
    m["entry"][0]["resource"]["focus"] = [{"reference": full}]
    msg = parser.parse(m)
    assert [(f.type, f.id, f.entry) for f in msg.focus] == [("CarePlan", None, 0)]
    assert msg.patient_id == "alva"


_JUNK = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers()),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@given(field=st.sampled_from(["eventCoding", "destination", "sender", "source", "focus",
                              "reason", "response", "id"]),
       junk=_JUNK, entry_junk=_JUNK)
@settings(max_examples=150, deadline=None)
def test_junk_anywhere_is_a_precise_4xx_never_a_crash(field: str, junk: Any,
                                                      entry_junk: Any) -> None:
    m = message()
    m["entry"][0]["resource"][field] = junk
    m["entry"][1]["resource"]["subject"] = entry_junk
    try:
        parser.parse(m)
    except (BadRequest, Unprocessable) as err:
        assert err.status in (400, 422) and err.issues
