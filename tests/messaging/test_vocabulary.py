"""The published message vocabulary: the sip-event CodeSystem and its MessageDefinitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sip_hub.errors import IssueCollector
from sip_hub.fhir import models, profiles, sip, validation
from sip_hub.messaging import builder, parser, vocabulary as vocab

PROCESS_MESSAGE = profiles.DEFINITIONS_DIR / "OperationDefinition-sip-process-message.json"
EVENTS = ["sip-initiated", "invitation", "invitation-response", "invitation-cancelled",
          "meeting-rescheduled", "meeting-cancelled", "plan-established", "plan-revision-proposed",
          "revision-approved", "insats-status-changed", "consent-changed",
          "follow-up-scheduled", "follow-up-done", "sip-closed", "acknowledgement"]


def test_the_code_system_has_the_events_and_their_sub_codes() -> None:
    cs = vocab.code_system()
    assert cs["url"] == vocab.CS_EVENT == f"{sip.CANONICAL}/CodeSystem/sip-event"
    assert [c["code"] for c in cs["concept"]] == EVENTS
    children = {c["code"]: [k["code"] for k in c.get("concept", [])] for c in cs["concept"]}
    assert children["invitation-response"] == ["accept", "new-time-proposed", "decline"]
    assert children["consent-changed"] == ["granted", "narrowed", "withdrawn"]
    assert cs["count"] == len(EVENTS) + 6 and cs["hierarchyMeaning"] == "is-a"
    # Published with the rest of the model (seeded and served as a CodeSystem).
    assert vocab.CS_EVENT in {d["url"] for d in profiles.definitions()}


def test_one_message_definition_per_event() -> None:
    defs = vocab.message_definitions()
    assert sorted(d["eventCoding"]["code"] for d in defs) == sorted(EVENTS)
    for d in defs:
        assert d["url"] == f"{sip.CANONICAL}/MessageDefinition/{d['id']}"
        assert (d["version"], d["status"], d["publisher"]) == ("0.1.0", "active", "sip_hub")
        assert d["eventCoding"]["system"] == vocab.CS_EVENT and d["date"]
        assert d["category"] in ("consequence", "notification")
        assert d["responseRequired"] in ("always", "on-error", "never")
        assert "**Svenska:**" in d["description"] and "**English:**" in d["description"]
        for focus in d["focus"]:
            assert focus["code"] and focus["profile"] and focus["min"] >= 0
            assert focus["max"] == "*" or int(focus["max"]) >= max(1, focus["min"])
        spec = vocab.spec(d["eventCoding"]["code"])
        assert any(f.type in ("CarePlan", "Patient") for f in spec.focus)
        if d["eventCoding"]["code"] == "acknowledgement":
            assert d["responseRequired"] == "never" and "allowedResponse" not in d
        else:
            assert [r["message"] for r in d["allowedResponse"]] == [
                vocab.spec("acknowledgement").definition_url]


def test_definitions_are_valid_r4_and_every_canonical_they_use_is_defined() -> None:
    known = {d["url"] for d in profiles.definitions()} | {
        d["url"] for d in vocab.message_definitions()}
    for d in vocab.message_definitions() + [vocab.code_system()]:
        models.validate(d)
        issues = IssueCollector()
        validation.check(d, issues)
        assert issues.issues == [], d["id"]
        used = {v for v in _strings(d) if v.startswith(sip.CANONICAL + "/")}
        assert used - known == set(), d["id"]


def _strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) and " " not in node else []


@pytest.mark.node
def test_independent_validators_accept_the_vocabulary(fhir_validator, tmp_path: Path) -> None:
    files = sorted(str(p) for p in profiles.DEFINITIONS_DIR.glob("MessageDefinition-*.json"))
    files.append(str(profiles.DEFINITIONS_DIR / "CodeSystem-sip-event.json"))
    files.append(str(PROCESS_MESSAGE))
    done = fhir_validator.validate(*files)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_every_event_builds_a_message_our_parser_accepts() -> None:
    plan = {"resourceType": "CarePlan", "id": "p1", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/alva"}}
    extra = {"Task": {"resourceType": "Task", "id": "t1", "status": "requested",
                      "intent": "order"},
             "Appointment": {"resourceType": "Appointment", "id": "a1", "status": "proposed",
                             "participant": [{"status": "accepted",
                                              "actor": {"reference": "Patient/alva"}}]},
             "Consent": {"resourceType": "Consent", "id": "c1", "status": "active",
                         "scope": {"text": "privacy"}, "category": [{"text": "SIP"}],
                         "patient": {"reference": "Patient/alva"},
                         "policyRule": {"text": "opt-in"}}}
    for code in EVENTS:
        spec = vocab.spec(code)
        resources, focus = [], []
        for rule in spec.focus:
            if rule.type == "CarePlan":
                resources.append(plan)
                focus.append("CarePlan/p1")
            elif rule.type in extra and rule.min:
                resources.append(extra[rule.type])
                focus.append(f"{rule.type}/{extra[rule.type]['id']}")
        reason = sorted(spec.reasons)[0] if spec.reasons else None
        if code == "acknowledgement":
            bundle = builder.response("req-1", "ok", fhir_base="http://hub.test/fhir",
                                      destination=builder.Party("SE2321000016-15CQ", "urn:x"),
                                      focus=["CarePlan/p1"], hub_org="SE2321000016-HUB1")
        else:
            bundle = builder.message(code, fhir_base="http://hub.test/fhir",
                                     sender="SE2120000142-SOC1",
                                     destinations=[builder.Party("SE2321000016-15CQ",
                                                                 "https://bup.test/fhir")],
                                     focus=focus, resources=resources, reason=reason)
        msg = parser.parse(json.loads(json.dumps(bundle)))
        assert (msg.event, msg.reason, msg.careplan_id) == (code, reason, "p1")


def test_the_process_message_operation_definition_is_published() -> None:
    d = json.loads(PROCESS_MESSAGE.read_text("utf-8"))
    models.validate(d)
    issues = IssueCollector()
    validation.check(d, issues)
    assert issues.issues == []
    assert d["url"] == f"{sip.CANONICAL}/OperationDefinition/{d['id']}"
    assert (d["code"], d["kind"], d["system"], d["type"], d["instance"], d["affectsState"]) == (
        "process-message", "operation", True, False, False, True)
    assert (d["version"], d["status"], d["publisher"]) == ("0.1.0", "active", "sip_hub")
    assert "**Svenska:**" in d["description"] and "**English:**" in d["description"]
    for p in d["parameter"]:
        assert p["use"] in ("in", "out") and p["documentation"] and "type" in p
    assert {p["name"] for p in d["parameter"]} == {"content", "async", "response-url", "return"}
