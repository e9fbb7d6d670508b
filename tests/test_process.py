"""The SIP process as a state machine, and the rules its definitions publish (units; the HTTP
side is in tests/routes/test_process_api.py)."""

from __future__ import annotations

import copy
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

import sip_factory as f
from sip_hub import parameters, process as sp
from sip_hub.errors import BadRequest, Conflict, IssueCollector, Unprocessable
from sip_hub.fhir import models, profiles, sip
from sip_hub.fhir.dates import now_utc
from sip_hub.interactions import Context
from sip_hub.operation import Operation
from sip_hub.parameters import Param

Json = dict

# The process as the issue states it: forward one step; follow-up back to established or
# again; any open phase to closed.
EXPECTED = {
    ("behov-uppmarksammat", "kartlaggning"), ("kartlaggning", "kallelse"),
    ("kallelse", "mote"), ("mote", "upprattad"), ("upprattad", "uppfoljning"),
    ("uppfoljning", "upprattad"), ("uppfoljning", "uppfoljning"),
    *((p, "avslutad") for p in sp.PHASES if p != "avslutad"),
}


@pytest.mark.parametrize("frm", sp.PHASES)
@pytest.mark.parametrize("to", sp.PHASES)
def test_transition_table(frm: str, to: str) -> None:
    assert sp.allowed(frm, to) is ((frm, to) in EXPECTED)


@pytest.mark.parametrize(("to", "frm", "status"), [
    ("kartlaggning", "behov-uppmarksammat", "draft"), ("kallelse", "kartlaggning", "draft"),
    ("mote", "kallelse", "draft"), ("upprattad", "mote", "active"),
    ("uppfoljning", "upprattad", "active"), ("upprattad", "uppfoljning", "active"),
    ("avslutad", "behov-uppmarksammat", "revoked"), ("avslutad", "mote", "revoked"),
    ("avslutad", "upprattad", "completed"), ("avslutad", "uppfoljning", "completed"),
])
def test_the_status_follows_the_phase(to: str, frm: str, status: str) -> None:
    assert sp.status_for(to, frm) == status
    assert status in sip.PHASE_STATUSES[to]


def test_phases_are_the_published_code_system() -> None:
    by_url = {d["url"]: d for d in profiles.definitions()}
    codes = [c["code"] for c in by_url[sip.CS_PHASE]["concept"]]
    assert codes == list(sp.PHASES) == list(sip.PHASE_STATUSES)
    assert {c for _, c in profiles.valueset_codes(sip.VS_PHASE)} == set(codes)
    tasks = {c["code"] for c in by_url[sip.CS_TASK]["concept"]}
    assert tasks == {sp.TASK_INVITATION, *sp.DEADLINE_TASKS}
    assert {c["code"] for c in by_url[sip.CS_TASK_PARAMETER]["concept"]} == {
        "wished-profession", "representative", "proposed-time"}
    assert {c for _, c in profiles.valueset_codes(sip.VS_MEETING_SUPPORT)} == {
        "interpreter", "picture-support", "other"}


@pytest.mark.parametrize(("url", "context", "value"), [
    (sip.EXT_PHASE, "CarePlan", "code"),
    (sip.EXT_MEETING_WISHES, "Appointment", None),
    (sip.EXT_INVITED_ORGANIZATION, "Appointment.participant", "Reference"),
])
def test_process_extensions_are_published(url: str, context: str, value: str | None) -> None:
    sd = {d["url"]: d for d in profiles.definitions()}[url]
    assert (sd["kind"], sd["type"], sd["context"]) == (
        "complex-type", "Extension", [{"type": "element", "expression": context}])
    root_value = next(e for e in sd["differential"]["element"] if e["id"] == "Extension.value[x]")
    if value is None:
        assert root_value["max"] == "0"
    else:
        assert root_value["type"][0]["code"] == value
    if url == sip.EXT_PHASE:
        assert root_value["binding"] == {"strength": "required",
                                         "description": "SIP-fas / SIP phase",
                                         "valueSet": sip.VS_PHASE}


def test_phase_of_a_plan_without_the_extension_follows_its_status() -> None:
    assert sp.phase_of({"status": "draft"}) == "behov-uppmarksammat"
    assert sp.phase_of({"status": "active"}) == "upprattad"
    assert sp.phase_of({"status": "on-hold"}) == "upprattad"
    assert sp.phase_of({"status": "revoked"}) == "avslutad"
    plan = sp.with_phase(f.sip_careplan(status="draft"), "kallelse")
    assert sp.phase_of(plan) == "kallelse" and sp.phase_ext(plan) == "kallelse"
    again = sp.with_phase(plan, "mote")
    assert [e["valueCode"] for e in again["extension"] if e["url"] == sip.EXT_PHASE] == ["mote"]
    assert sp.phase_ext(sp.with_phase(again, None)) is None
    assert sp.phase_ext(plan) == "kallelse"  # copies, the input is left alone


@pytest.mark.parametrize(("pnr", "born"), [
    (f.DEMO_PNR, date(2011, 3, 14)),
    (f.DEMO_SAMORDNINGSNUMMER, date(2011, 3, 14)),  # day of birth + 60
    (f.DISCHARGE_PNR, date(1942, 5, 6)),
])
def test_birth_date_from_the_personal_identity_number(pnr: str, born: date) -> None:
    assert sp.birth_date(f.patient(pnr)) == born


def test_birth_date_falls_back_to_birth_date() -> None:
    assert sp.birth_date({"birthDate": "1990-01-02"}) == date(1990, 1, 2)
    assert sp.birth_date({"birthDate": "1990"}) is None
    assert sp.birth_date({}) is None


@pytest.mark.parametrize(("born", "day", "age"), [
    (date(2011, 3, 14), date(2029, 3, 13), 17),
    (date(2011, 3, 14), date(2029, 3, 14), 18),   # adult on the 18th birthday
    (date(2008, 2, 29), date(2026, 2, 28), 17),   # born on a leap day: adult on 1 March
    (date(2008, 2, 29), date(2026, 3, 1), 18),
])
def test_age(born: date, day: date, age: int) -> None:
    assert sp.age_on(born, day) == age


def test_local_date_is_swedish() -> None:
    late = datetime(2026, 11, 22, 23, 30, tzinfo=timezone.utc)
    assert sp.local_date(late) == date(2026, 11, 23)


def test_what_a_plan_decides_leaves_out_notes_and_insats_status() -> None:
    plan = f.sip_careplan()
    other = copy.deepcopy(plan)
    other["note"] = [{"text": "ringt"}]
    other["meta"] = {"versionId": "9"}
    other["activity"][0]["detail"]["status"] = "completed"
    other["activity"][0]["progress"] = [{"text": "går bra"}]
    assert sp.decided(plan) == sp.decided(other)
    other["activity"][0]["detail"]["description"] = "annat"
    assert sp.decided(plan) != sp.decided(other)
    # It leaves the plan itself as it was.
    before = copy.deepcopy(other)
    sp.decided(other)
    assert other == before


# -- the profile's process rules ------------------------------------------------------------

def check(resource: Json) -> list[tuple[str, str]]:
    c = IssueCollector()
    profiles.check(resource, c, f.demo_resolver())
    return [(i.expression[0], i.diagnostics) for i in c.issues]


def test_phase_and_status_must_agree() -> None:
    plan = sp.with_phase(f.sip_careplan(status="draft"), "upprattad")
    [(expr, text)] = check(plan)
    assert expr == "CarePlan.status" and "sip-cp-13" in text
    assert check(sp.with_phase(f.sip_careplan(), "upprattad")) == []
    assert check(sp.with_phase(f.sip_careplan(status="revoked"), "avslutad")) == []
    assert check(sp.with_phase(f.sip_careplan(status="entered-in-error"), "kallelse")) == []


def test_unknown_phase_is_refused() -> None:
    [(expr, text)] = check(sp.with_phase(f.sip_careplan(status="draft"), "planering"))
    assert expr == f"CarePlan.extension('{sip.EXT_PHASE}')" and "not a valid code" in text


def test_a_proposed_revision_replaces_a_plan_of_the_same_person() -> None:
    proposal = f.sip_careplan(status="draft", id="forslag")
    proposal["intent"] = "proposal"
    [(expr, text)] = check(proposal)
    assert expr == "CarePlan.intent" and "sip-cp-12" in text
    proposal["replaces"] = [{"reference": "CarePlan/alva-sip/_history/3", "type": "CarePlan"}]
    assert check(proposal) == []
    tolvan = copy.deepcopy(proposal)
    tolvan["subject"] = {"reference": "Patient/tolvan"}
    resolve = f.resolver([*f.demo_case(), f.patient()])
    c = IssueCollector()
    profiles.check(tolvan, c, resolve)
    assert any("another individual" in i.diagnostics for i in c.issues)


def test_an_invited_organisation_is_a_participant_until_it_names_its_representative() -> None:
    team = f.sip_careteam(representatives=[(f.BUP_REPRESENTATIVE, f.BUP)])
    team["participant"].append(f.participant(f.SCHOOL, sip.ROLE_ORGANISATION_REPRESENTATIVE))
    assert check(team) == []
    team["participant"].append(f.participant("Practitioner/johan",
                                             sip.ROLE_ORGANISATION_REPRESENTATIVE, f.SCHOOL))
    [(_, text)] = check(team)
    assert "sip-ct-2" in text


@pytest.mark.node
def test_published_process_invariants_agree_with_the_enforcement(tmp_path: Path,
                                                                 fhir_validator) -> None:
    cases: list[tuple[Json, list[str]]] = []
    for to in sp.PHASES:
        for status in ("draft", "active", "completed", "revoked"):
            plan = sp.with_phase(f.sip_careplan(status=status), to)
            cases.append((plan, [] if status in sip.PHASE_STATUSES[to] else ["sip-cp-13"]))
    proposal = f.sip_careplan(status="draft")
    proposal["intent"] = "proposal"
    cases.append((copy.deepcopy(proposal), ["sip-cp-12"]))
    proposal["replaces"] = [{"reference": "CarePlan/alva-sip/_history/3", "type": "CarePlan"}]
    cases.append((proposal, []))
    team = f.sip_careteam(representatives=[(f.BUP_REPRESENTATIVE, f.BUP)])
    team["participant"].append(f.participant(f.SCHOOL, sip.ROLE_ORGANISATION_REPRESENTATIVE))
    cases.append((copy.deepcopy(team), []))
    team["participant"].append(f.participant("Practitioner/johan",
                                             sip.ROLE_ORGANISATION_REPRESENTATIVE, f.SCHOOL))
    cases.append((team, ["sip-ct-2"]))
    assert fhir_validator.failing_constraints(tmp_path, profiles.DEFINITIONS_DIR,
                                              [c for c, _ in cases]) == [keys for _, keys in cases]
    for resource, keys in cases:
        text = " ".join(d for _, d in check(resource))
        assert all(k in text for k in keys) and (keys or text == ""), (keys, text)


# -- Parameters -------------------------------------------------------------------------------

SPEC = (Param("to", ("valueCode",), required=True), Param("who", ("valueReference",),
                                                          repeats=True),
        Param("group", parts=(Param("a", ("valueString",), required=True),)))


def test_parameters_are_read_strictly() -> None:
    p = parameters.read({"resourceType": "Parameters", "parameter": [
        {"name": "to", "valueCode": "x"}, {"name": "who", "valueReference": {"reference": "A/1"}},
        {"name": "who", "valueReference": {"reference": "A/2"}},
        {"name": "group", "part": [{"name": "a", "valueString": " b "}]}]}, "$op", SPEC)
    assert p.code("to") == "x" and len(p.references("who")) == 2
    assert p.parts("group")[0].string("a") == "b"
    assert p.parts("group")[0].where("a") == (
        "Parameters.parameter.where(name='group').part.where(name='a')")


@pytest.mark.parametrize(("params", "fragment"), [
    ([], "needs 'to'"),
    ([{"name": "to", "valueString": "x"}], "takes valueCode"),
    ([{"name": "to", "valueCode": "x"}, {"name": "to", "valueCode": "y"}], "once"),
    ([{"name": "to", "valueCode": "x"}, {"name": "nope", "valueCode": "y"}], "no parameter"),
    ([{"name": "to", "valueCode": "x"}, {"name": "group", "valueString": "y"}], "made of parts"),
    ([{"name": "to", "valueCode": "x"}, {"name": "group", "part": [
        {"name": "b", "valueString": "y"}]}], "no parameter 'b'"),
])
def test_bad_parameters_are_400(params: list[Json], fragment: str) -> None:
    body: Json = {"resourceType": "Parameters", **({"parameter": params} if params else {})}
    with pytest.raises(BadRequest) as err:
        parameters.read(body, "$op", SPEC)
    assert fragment in " ".join(i.diagnostics for i in err.value.issues)


def test_a_parameters_body_must_be_valid_fhir() -> None:
    with pytest.raises(Unprocessable):
        parameters.read({"resourceType": "Parameters", "parameter": [{"valueCode": "x"}]},
                        "$op", SPEC)
    # JSON nulls and empty lists, which fhir.resources lets through (a null list was a 5xx)
    for params in (None, [], [{"name": "to", "valueCode": "x"}, {"name": "group", "part": None}]):
        with pytest.raises(Unprocessable):
            parameters.read({"resourceType": "Parameters", "parameter": params}, "$op", SPEC)
    with pytest.raises(BadRequest):
        parameters.read({"resourceType": "Bundle"}, "$op", SPEC)


def test_output_parameters_are_valid_fhir() -> None:
    out = parameters.out(parameters.value("to", "valueCode", "x"), None,
                         parameters.resource("r", f.patient()))
    models.validate(out)
    assert [p["name"] for p in out["parameter"]] == ["to", "r"]


# -- the operations' writes ---------------------------------------------------------------------

def test_operations_never_overwrite_a_concurrent_change(store) -> None:
    with store.begin() as tx:
        tx.update({"resourceType": "Organization", "id": "o", "name": "A"}, "o")
    with store.begin() as tx:
        op = Operation(tx, Context("http://hub.test/fhir"), now_utc())
        seen = tx.current("Organization", "o")
        assert seen is not None
        tx.update({"resourceType": "Organization", "id": "o", "name": "B"}, "o")
        with pytest.raises(Conflict, match="changed concurrently"):
            op.update(seen.json() | {"name": "C"})
        assert op.update(tx.current("Organization", "o").json() | {"name": "C"}).version_id == 3
