"""Who an insats or a plan names, as the citizen reads it (HTML, PDF, GetCarePlans): an
organisation's name, a person's HumanName, a practitioner role, a care team, the reference's
display. A contained Practitioner as an insats's performer made the HTML and PDF views 500 and
GetCarePlans a soap:Server fault (probe 3, bug 1: its name, a list of HumanName, was joined as
text); odd data is left out, never an error."""

from __future__ import annotations

import base64
import io

import pytest
from pypdf import PdfReader

import sip_factory as f
from sip_hub import identifiers
from sip_hub.routes.render import party_name, plan_view
from sip_process import write_case
import test_getcareplans
from test_getcareplans import CORE, call, plans, result

# (the official schemas, and the hub's HSA-id set before the app starts)
schemas, _hub_hsa_id = test_getcareplans.schemas, test_getcareplans._hub_hsa_id

VIEW = "/fhir/CarePlan/$citizen-view"
ALVA = f"{VIEW}?patient={identifiers.PERSONNUMMER}|{f.DEMO_PNR}"


def _case(contained: list[dict], *performers: dict) -> list[dict]:
    case = f.demo_case()
    plan = next(r for r in case if r["resourceType"] == "CarePlan")
    plan["contained"] = contained
    plan["activity"][0]["detail"].setdefault("performer", []).extend(performers)
    return case


BERG = {"resourceType": "Practitioner", "id": "p",
        "name": [{"use": "old", "family": "Gammal"}, {"family": "Berg", "given": ["Eva", "Li"]}]}


@pytest.fixture
def contained_practitioner(client):
    write_case(client, {}, _case([BERG], {"reference": "#p"}))


def test_a_contained_practitioner_is_named_in_html(client, contained_practitioner, portal):
    r = client.get(ALVA, headers={**portal, "Accept": "text/html"})
    assert r.status_code == 200, r.text
    assert "Eva Li Berg" in r.text and "Gammal" not in r.text and "#p" not in r.text


def test_a_contained_practitioner_is_named_in_the_pdf(client, contained_practitioner, portal):
    r = client.get(ALVA, headers={**portal, "Accept": "application/pdf"})
    assert r.status_code == 200, r.text
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(r.content)).pages)
    assert "Eva Li Berg" in " ".join(text.split())


def test_a_contained_practitioner_is_named_in_getcareplans(client, contained_practitioner,
                                                            portal, schemas):
    out = call(client, portal, schemas)
    assert result(out)[0] == "OK"
    [cp] = plans(out)
    contents = {c.findtext(f"{{{CORE}}}mediaType"): base64.b64decode(
        c.findtext(f"{{{CORE}}}value")) for c in cp.iter(f"{{{CORE}}}content")}
    assert set(contents) == {"text/html", "application/pdf"}
    assert "Eva Li Berg" in contents["text/html"].decode()


LINKED = {
    "Organization/bup": {"resourceType": "Organization", "id": "bup", "name": "BUP Nord"},
    "Practitioner/a": {"resourceType": "Practitioner", "id": "a",
                       "name": [{"text": "Dr. Anna Ek"}, {"family": "Fel"}]},
    "PractitionerRole/r": {"resourceType": "PractitionerRole", "id": "r",
                           "practitioner": {"reference": "Practitioner/a"},
                           "organization": {"reference": "Organization/bup"}},
    "CareTeam/t": {"resourceType": "CareTeam", "id": "t", "name": "Teamet kring Alva"},
    "RelatedPerson/m": {"resourceType": "RelatedPerson", "id": "m",
                        "name": [{"use": "official", "family": "Andersson", "given": ["Maria"]},
                                 {"use": "usual", "given": ["Mia"]}]},
    "PractitionerRole/loop": {"resourceType": "PractitionerRole", "id": "loop",
                              "organization": {"reference": "PractitionerRole/loop"}},
}


@pytest.mark.parametrize(("ref", "shown"), [
    ({"reference": "Organization/bup"}, "BUP Nord"),
    ({"reference": "Practitioner/a"}, "Dr. Anna Ek"),
    ({"reference": "PractitionerRole/r"}, "Dr. Anna Ek, BUP Nord"),
    ({"reference": "CareTeam/t"}, "Teamet kring Alva"),
    ({"reference": "RelatedPerson/m"}, "Mia"),
    ({"reference": "Practitioner/gone", "display": "Per Holm"}, "Per Holm"),
    ({"reference": "Organization/unknown"}, "Organization/unknown"),
    ({"reference": "#missing"}, ""),
    ({"display": "Bara text"}, "Bara text"),
    ({"reference": "PractitionerRole/loop", "display": "Rollen"}, "Rollen"),
    ({"reference": 7, "display": ["x"]}, ""),
    ("Organization/bup", ""),
    (None, ""),
])
def test_every_party_is_shown_as_text(ref, shown):
    assert party_name(LINKED, ref) == shown


@pytest.mark.parametrize("name", [
    [], [None], ["Berg"], [{"family": ["Berg"]}], [{"given": "Eva"}], [{"given": [1, None]}],
    [{"use": ["usual"], "family": "Berg"}], [{"text": {"x": 1}}], {"family": "Berg"}, 42,
])
def test_odd_names_never_raise(name):
    linked = {"#p": {"resourceType": "Practitioner", "id": "p", "name": name}}
    got = party_name(linked, {"reference": "#p", "display": "Visat namn"})
    assert isinstance(got, str) and got in ("Visat namn", "Berg")


def test_a_plan_with_contained_people_as_every_party_is_viewed():
    plan = {"resourceType": "CarePlan", "contained": [BERG, {"resourceType": "CareTeam",
                                                             "id": "t", "name": "Team"}],
            "author": {"reference": "#p"},
            "activity": [{"detail": {"description": "Stöd", "performer": [
                {"reference": "#p"}, {"reference": "#t"}, {"reference": "#x"}, "odd"]}}]}
    view = plan_view(plan, {})
    assert view["author"] == "Eva Li Berg"
    assert view["activities"][0]["who"] == "Eva Li Berg, Team"
