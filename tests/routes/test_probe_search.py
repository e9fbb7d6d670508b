"""Probes of FHIR R4 search semantics (https://hl7.org/fhir/R4/search.html) with values at
their edges, on SQLite and PostgreSQL: strings, tokens, dates, references, chains, escaping,
result parameters and paging links. Each test holds behaviour a client relies on."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from fhirhttp import PNR, create, outcome_text, patient, plain_careplan
from sip_hub.fhir import sip

LENIENT = {"prefer": "handling=lenient"}


def get(client, query: str, headers=None) -> dict:
    r = client.get(f"/fhir/{query}", headers=headers)
    assert r.status_code == 200, (query, r.text)
    b = r.json()
    assert b["resourceType"] == "Bundle" and b["type"] == "searchset"
    return b


def ids(client, query: str, headers=None) -> list[str]:
    return sorted(e["resource"]["id"] for e in get(client, query, headers).get("entry", [])
                  if e["search"]["mode"] == "match")


def ordered(client, query: str) -> list[str]:
    return [e["resource"]["id"] for e in get(client, query).get("entry", [])
            if e["search"]["mode"] == "match"]


def refused(client, query: str, *fragments: str) -> str:
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 400, (query, r.status_code, r.text)
    text = outcome_text(r)
    for f in fragments:
        assert f in text, (query, text)
    return text


# -- string ---------------------------------------------------------------------------------

@pytest.fixture
def people(client):
    def person(family, given, **extra):
        return create(client, {"resourceType": "Patient", "name": [
            {"family": family, "given": given} | extra]})["id"]
    return {
        "angstrom": person("Ångström", ["Åsa", "Märta"]),
        "strasse": person("Straße", ["Jörg"]),
        "eloise": person("Éloïse-Öberg", ["Zoë"], prefix=["Dr."], text="Dr. Zoë Éloïse-Öberg"),
    }


@pytest.mark.parametrize("query,who", [
    ("name=angs", "angstrom"), ("name=ÅNGS", "angstrom"), ("family=Ångström", "angstrom"),
    ("given=asa", "angstrom"), ("given=mart", "angstrom"), ("given=MÄRTA", "angstrom"),
    ("family=strasse", "strasse"), ("family=STRAß", "strasse"), ("given=jorg", "strasse"),
    ("family=eloise-ob", "eloise"), ("name=dr", "eloise"), ("name=dr. zoe", "eloise"),
    ("given=zoe", "eloise"), ("name:exact=Zoë", "eloise"), ("name:contains=OBERG", "eloise"),
    ("name:contains=ngstr", "angstrom"), ("family:exact=Straße", "strasse"),
])
def test_string_search_is_case_and_accent_insensitive_on_every_name_part(
        client, people, query, who):
    assert ids(client, f"Patient?{query}") == [people[who]]


@pytest.mark.parametrize("query", ["name=ngstr", "family:exact=straße", "name:exact=Zoe",
                                   "given=sa", "name:exact=Åsa Märta"])
def test_string_search_finds_nothing_where_the_spec_says_no_match(client, people, query):
    assert ids(client, f"Patient?{query}") == []


# -- token ----------------------------------------------------------------------------------

@pytest.fixture
def tokens(client):
    p = create(client, patient())["id"]

    def plan(*codings, **extra):
        cat = [{"coding": [c]} for c in codings]
        return create(client, plain_careplan(p, **({"category": cat} if cat else {}),
                                             **extra))["id"]
    return {
        "p": p,
        "with_system": plan({"system": "urn:ex:cs", "code": "VP"}),
        "no_system": plan({"code": "VP"}),
        "lower": plan({"system": "urn:ex:cs", "code": "vp"}),
        "none": plan(),
        "pipe": plan({"system": "urn:ex:cs", "code": "a|b"}),
        "comma": plan({"system": "urn:ex:cs", "code": "a,b"}),
        "backslash": plan({"system": "urn:ex:cs", "code": "a\\b"}),
    }


def test_token_forms_system_code_bar_code_system_bar_and_code(client, tokens):
    t = tokens
    assert ids(client, "CarePlan?category=urn:ex:cs|VP") == [t["with_system"]]
    assert ids(client, "CarePlan?category=|VP") == [t["no_system"]]
    assert ids(client, "CarePlan?category=VP") == sorted([t["with_system"], t["no_system"]])
    assert ids(client, "CarePlan?category=urn:ex:cs|") == sorted(
        [t["with_system"], t["lower"], t["pipe"], t["comma"], t["backslash"]])
    assert ids(client, "CarePlan?category=vp") == [t["lower"]]  # codes are case-sensitive


def test_token_not_includes_resources_without_a_value(client, tokens):
    t = tokens
    got = ids(client, "CarePlan?category:not=urn:ex:cs|VP")
    assert t["none"] in got and t["no_system"] in got and t["with_system"] not in got
    assert ids(client, "CarePlan?category:missing=true") == [t["none"]]


def test_escaped_characters_in_a_token_are_part_of_the_code(client, tokens):
    """FHIR: ``\\|``, ``\\,`` and ``\\\\`` are a literal bar, comma and backslash."""
    t = tokens
    assert ids(client, quote("CarePlan?category=urn:ex:cs|a\\,b", safe="?=")) == [t["comma"]]
    assert ids(client, quote("CarePlan?category=urn:ex:cs|a\\\\b", safe="?=")) == [
        t["backslash"]]
    assert ids(client, quote("CarePlan?category=urn:ex:cs|a\\|b", safe="?=")) == [t["pipe"]]
    assert ids(client, quote("CarePlan?category=a\\|b", safe="?=")) == [t["pipe"]]


def test_personnummer_in_both_forms(client):
    p = create(client, patient("191212121212"))["id"]
    for v in ("19121212-1212", "191212121212"):
        assert ids(client, f"Patient?identifier={PNR}|{v}") == [p]
    assert ids(client, f"Patient?identifier:not={PNR}|19121212-1212") == []


# -- date -----------------------------------------------------------------------------------

@pytest.fixture
def births(client):
    def born(d):
        return create(client, {"resourceType": "Patient", "birthDate": d})["id"]
    return {"2011": born("2011"), "2011-05": born("2011-05"), "2011-05-03": born("2011-05-03"),
            "2012-01-01": born("2012-01-01"), "2010-12-31": born("2010-12-31")}


@pytest.mark.parametrize("value,want", [
    ("2011", ["2011", "2011-05", "2011-05-03"]),
    ("eq2011-05", ["2011-05", "2011-05-03"]),
    ("2011-05-03", ["2011-05-03"]),
    ("ne2011", ["2010-12-31", "2012-01-01"]),
    ("gt2011-05", ["2011", "2012-01-01"]),
    ("lt2011-05", ["2010-12-31", "2011"]),
    ("ge2011-05", ["2011", "2011-05", "2011-05-03", "2012-01-01"]),
    ("le2011-05", ["2010-12-31", "2011", "2011-05", "2011-05-03"]),
    ("sa2011", ["2012-01-01"]),
    ("eb2011", ["2010-12-31"]),
    ("sa2011-05", ["2012-01-01"]),
    ("eb2011-05", ["2010-12-31"]),
    ("ap2011-05-03", ["2011", "2011-05", "2011-05-03"]),
    ("2011-05-03T12:00:00Z", []),
    ("ge2011-12-31T23:00:00-02:00", ["2012-01-01"]),
    # (Swedish midnight, where the Swedish year 2011 begins: a date is a Swedish day)
    ("lt2011-01-01T00:00+01:00", ["2010-12-31"]),
    ("lt2011-01-01T00:00Z", ["2010-12-31", "2011"]),
])
def test_birthdate_prefixes_against_every_precision(client, births, value, want):
    got = ids(client, f"Patient?birthdate={quote(value)}")
    assert got == sorted(births[w] for w in want), value


@pytest.fixture
def periods(client):
    p = create(client, patient())["id"]

    def plan(**period):
        return create(client, plain_careplan(p, period=period))["id"]
    return {"closed": plan(start="2024-01-01", end="2024-12-31"),
            "open_end": plan(start="2024-06-01"),
            "open_start": plan(end="2024-03-31"),
            "instant": plan(start="2024-05-05T10:00:00+02:00", end="2024-05-05T11:00:00+02:00")}


@pytest.mark.parametrize("value,want", [
    ("2024", ["closed", "instant"]),
    ("ge2025", ["open_end"]),
    ("gt2024", ["open_end"]),
    ("le2023", ["open_start"]),
    ("lt2024", ["open_start"]),
    ("sa2023", ["closed", "instant", "open_end"]),
    ("eb2025", ["closed", "instant", "open_start"]),
    ("ap2024-05-05T08:30:00Z", ["closed", "instant"]),
    ("eq2024-05-05", ["instant"]),
    ("2024-05-05T08:00Z", []),
    ("ne2024", ["open_end", "open_start"]),
])
def test_period_ranges_with_open_ends(client, periods, value, want):
    got = ids(client, f"CarePlan?date={quote(value)}")
    assert got == sorted(periods[w] for w in want), value


@pytest.mark.parametrize("value", ["2024-02-30", "2024-13", "24", "ge", "2024-01-01T24:00:00Z",
                                   "2024-01-01T10:00:00+15:00", "xx2024", "2024-1-1",
                                   "2024-01-01T10", "GE2024"])
def test_an_invalid_date_is_a_400_naming_the_parameter(client, value):
    refused(client, f"CarePlan?date={quote(value)}", "date")
    refused(client, f"CarePlan?_lastUpdated={quote(value)}", "_lastUpdated")


# -- reference and chains ----------------------------------------------------------------------

@pytest.fixture
def refs(client):
    p1 = create(client, patient())
    p2 = create(client, patient("200001012384", "Andersson", "Alva"))
    org = create(client, {"resourceType": "Organization", "name": "Karlstads kommun"})
    a = create(client, plain_careplan(p1["id"], author={"reference": f"Organization/{org['id']}"}))
    b = create(client, plain_careplan(p2["id"]))
    return {"p1": p1["id"], "p2": p2["id"], "org": org["id"], "a": a["id"], "b": b["id"]}


def test_chain_keeps_the_modifier_of_the_chained_parameter(client, refs):
    """``patient.identifier:not=X`` is not ``patient.identifier=X``, and ``patient.name:exact``
    is exact, ``patient.family:missing`` asks of the patient: the modifier is the chained
    parameter's."""
    a, b = refs["a"], refs["b"]
    assert ids(client, f"CarePlan?patient.identifier={PNR}|191212121212") == [a]
    assert ids(client, f"CarePlan?patient.identifier:not={PNR}|191212121212") == [b]
    assert ids(client, "CarePlan?patient.family:exact=Tolvansson") == [a]
    assert ids(client, "CarePlan?patient.family:exact=tolvansson") == []
    assert ids(client, "CarePlan?patient.family:contains=SSON") == sorted([a, b])
    assert ids(client, "CarePlan?patient.gender:missing=true") == sorted([a, b])
    assert ids(client, "CarePlan?patient:Patient.family:exact=Andersson") == [b]
    assert ids(client, "CarePlan?subject:Patient.family:exact=Andersson") == [b]


def test_a_chain_through_a_type_the_parameter_cannot_refer_to_is_refused(client, refs):
    refused(client, "CarePlan?patient:Organization.name=karl", "patient", "Organization")


def test_type_modifier_on_a_parameter_that_refers_to_any_type(client):
    """AuditEvent.entity may refer to any type: ``entity:Patient=<id>`` is a search (it was
    refused as a type the parameter cannot refer to), and the chain through it too."""
    p = create(client, patient())["id"]
    get(client, f"Patient?_id={p}")  # (an audited read of personal data)
    found = [e["resource"] for e in get(client, f"AuditEvent?entity:Patient={p}")["entry"]]
    assert found and all(f"Patient/{p}" in [x.get("what", {}).get("reference")
                                            for x in ev.get("entity", [])] for ev in found)
    refused(client, f"AuditEvent?entity:Patient=Organization/{p}", "entity")


def test_reference_spellings(client, refs):
    a = refs["a"]
    for v in (refs["org"], f"Organization/{refs['org']}",
              f"http://hub.test/fhir/Organization/{refs['org']}"):
        assert ids(client, f"CarePlan?author={quote(v)}") == [a], v
    assert ids(client, f"CarePlan?author:Organization={refs['org']}") == [a]
    assert ids(client, f"CarePlan?author:Patient={refs['org']}") == []
    refused(client, f"CarePlan?author:Patient=Organization/{refs['org']}", "author")


# -- OR, AND, _id, _lastUpdated, sort ----------------------------------------------------------

def test_or_and_and(client, refs):
    a, b = refs["a"], refs["b"]
    assert ids(client, f"CarePlan?_id={a},{b}&_id={b}") == [b]
    assert ids(client, f"CarePlan?patient={refs['p1']},{refs['p2']}") == sorted([a, b])
    assert ids(client, f"CarePlan?patient={refs['p1']}&patient={refs['p2']}") == []


# -- paging links ---------------------------------------------------------------------------

def test_paging_links_keep_every_parameter_with_its_encoding(client):
    for _ in range(3):
        create(client, {"resourceType": "Organization", "name": "Vård, omsorg & skola"})
    query = "Organization?name:exact=" + quote("Vård\\, omsorg & skola") + "&_count=1&_sort=_id"
    first = get(client, query)
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    items = parse_qsl(urlsplit(nxt).query)
    assert ("name:exact", "Vård\\, omsorg & skola") in items
    assert ("_sort", "_id") in items and ("_count", "1") in items
    second = get(client, nxt.replace("http://hub.test/fhir/", ""))
    assert second["total"] == 3 and len(second["entry"]) == 1
    assert second["entry"][0]["resource"]["id"] != first["entry"][0]["resource"]["id"]


def test_count_zero_and_one(client, refs):
    b = get(client, "CarePlan?_count=0")
    assert b["total"] == 2 and "entry" not in b
    assert [link["relation"] for link in b["link"]] == ["self"]
    b = get(client, "CarePlan?_count=1")
    assert len(b["entry"]) == 1 and b["total"] == 2


def test_unknown_parameter_is_a_400_naming_it_and_lenient_ignores_it(client, refs):
    refused(client, "CarePlan?colour=blue", "colour")
    b = get(client, f"CarePlan?colour=blue&patient={refs['p1']}", LENIENT)
    assert [e["resource"]["id"] for e in b["entry"] if e["search"]["mode"] == "match"] == [
        refs["a"]]


@pytest.mark.parametrize("query,name", [
    ("CarePlan?patient=Patient/", "patient"),
    ("CarePlan?patient=Patient/a/b/c", "patient"),
    ("CarePlan?date=ge", "date"),
    ("CarePlan?_sort=-", "_sort"),
    ("CarePlan?status:text=x", "status"),
    ("CarePlan?patient.foo=x", "foo"),
    ("CarePlan?patient.identifier.system=x", "patient"),
    ("CarePlan?_has:Task:focus:status=x", "_has"),
])
def test_every_bad_input_is_a_400_operation_outcome_naming_the_parameter(client, query, name):
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert name in outcome_text(r)


# -- second round: modifiers at their edges, _lastUpdated, sort, result parameters -----------

def test_contains_treats_like_wildcards_as_characters(client):
    odd = create(client, {"resourceType": "Organization", "name": "Sure 100%_ok"})["id"]
    plain = create(client, {"resourceType": "Organization", "name": "Sure 1000 ok"})["id"]
    assert ids(client, "Organization?name:contains=" + quote("0%_o")) == [odd]
    assert ids(client, "Organization?name:contains=" + quote("0_")) == []
    assert ids(client, "Organization?name:contains=" + quote("%")) == [odd]
    assert ids(client, "Organization?name=" + quote("sure 100%")) == [odd]
    assert plain not in ids(client, "Organization?name=" + quote("sure 10%"))


def test_last_updated_with_every_prefix_at_the_instant_of_a_write(client):
    p = create(client, patient())
    at = p["meta"]["lastUpdated"]  # microseconds, UTC
    me = [p["id"]]
    for prefix, want in (("", me), ("eq", me), ("ge", me), ("le", me), ("ap", me),
                         ("gt", []), ("lt", []), ("sa", []), ("eb", []), ("ne", [])):
        assert ids(client, f"Patient?_lastUpdated={prefix}{quote(at)}") == want, prefix
    day = sip.swedish_day(at)  # (a date is a Swedish day, not the UTC one)
    assert ids(client, f"Patient?_lastUpdated={day}") == me
    assert ids(client, f"Patient?_lastUpdated=sa{day}") == []


def test_a_time_given_to_the_millisecond_covers_that_millisecond(client):
    """FHIR: a date's precision implies its range; ``10:00:00.123Z`` is the whole of that
    millisecond, as ``10:00:00Z`` is the whole of that second (a client with millisecond
    clocks found nothing by the lastUpdated it was given, to the microsecond)."""
    p = create(client, patient())
    at = p["meta"]["lastUpdated"]
    assert len(at) == len("2024-01-01T10:00:00.123456Z")
    for cut in (at[:23] + "Z", at[:22] + "Z", at[:21] + "Z", at[:19] + "Z"):
        assert ids(client, f"Patient?_lastUpdated={quote(cut)}") == [p["id"]], cut
        assert ids(client, f"Patient?_lastUpdated=gt{quote(cut)}") == [], cut


def test_sort_by_string_token_date_and_several_keys(client):
    def who(family, birth, gender):
        return create(client, {"resourceType": "Patient", "gender": gender,
                               "name": [{"family": family}], "birthDate": birth})["id"]
    b = who("Berg", "1990-01-01", "male")
    a = who("Åberg", "1980-05-05", "female")  # accents set aside: sorts as "aberg"
    c = who("Cedergren", "1990-01-01", "female")
    n = create(client, {"resourceType": "Patient"})["id"]  # no values: last either way
    assert ordered(client, "Patient?_sort=family") == [a, b, c, n]
    assert ordered(client, "Patient?_sort=-family") == [c, b, a, n]
    assert ordered(client, "Patient?_sort=birthdate,family") == [a, b, c, n]
    assert ordered(client, "Patient?_sort=-birthdate,-family") == [c, b, a, n]
    assert ordered(client, "Patient?_sort=gender,-birthdate") == [c, a, b, n]
    assert ordered(client, "Patient?_sort=_id") == sorted([a, b, c, n])
    assert ordered(client, "Patient?_sort=-_id") == sorted([a, b, c, n], reverse=True)
    assert ordered(client, "Patient?_sort=_lastUpdated") == [b, a, c, n]
    assert ordered(client, "Patient?_sort=-_lastUpdated") == [n, c, a, b]


def test_sorted_pages_follow_one_another_without_gaps_or_repeats(client):
    made = [create(client, patient(given=f"G{i % 3}"))["id"] for i in range(7)]
    seen, url = [], "Patient?_sort=given&_count=3"
    while url:
        page = get(client, url)
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next((link["url"].replace("http://hub.test/fhir/", "")
                    for link in page["link"] if link["relation"] == "next"), None)
    assert sorted(seen) == sorted(made) and len(seen) == 7


@pytest.mark.parametrize("query", ["_total=accurate", "_total=estimate"])
def test_total_modes(client, refs, query):
    assert get(client, f"CarePlan?{query}&_count=1")["total"] == 2


def test_a_reference_holding_only_an_identifier_is_not_missing(client):
    """``:missing=true`` finds the resources with no value for the parameter; a reference
    given by its identifier alone is a value (the plan's author is known, by HSA id)."""
    p = create(client, patient())["id"]
    by_id = create(client, plain_careplan(p, author={"identifier": {
        "system": "urn:oid:1.2.752.29.4.19", "value": "SE2120001637-1"}}))["id"]
    none = create(client, plain_careplan(p))["id"]
    assert ids(client, "CarePlan?author:identifier=urn:oid:1.2.752.29.4.19|SE2120001637-1") == [
        by_id]
    assert ids(client, "CarePlan?author:missing=true") == [none]
    assert ids(client, "CarePlan?author:missing=false") == [by_id]


def test_a_parameter_ignored_under_lenient_handling_is_left_out_of_the_self_link(client, refs):
    b = get(client, f"CarePlan?colour=blue&patient={refs['p1']}", LENIENT)
    self_link = next(link["url"] for link in b["link"] if link["relation"] == "self")
    assert "patient=" in self_link
    assert "colour" not in self_link


# -- third round: chains with OR and _id, identifiers in references, meta parameters ----------

def test_chain_with_or_and_id_and_last_updated(client, refs):
    a, b = refs["a"], refs["b"]
    assert ids(client, "CarePlan?patient.family=tolv,ander") == sorted([a, b])
    assert ids(client, f"CarePlan?patient._id={refs['p2']}") == [b]
    assert ids(client, f"CarePlan?patient:Patient._id={refs['p1']},{refs['p2']}") == sorted(
        [a, b])
    assert ids(client, "CarePlan?patient._lastUpdated=gt2000") == sorted([a, b])
    assert ids(client, "CarePlan?author:Organization.name=karl") == [a]
    # (author refers to several types: which one is named, as FHIR suggests)
    refused(client, "CarePlan?author.name=karl", "type modifier", "author:")


def test_a_personnummer_in_a_reference_identifier_is_found_in_both_forms(client):
    p = create(client, patient())["id"]
    plan = create(client, plain_careplan(p) | {"subject": {
        "reference": f"Patient/{p}", "identifier": {"system": PNR, "value": "19121212-1212"}}})
    for v in ("19121212-1212", "191212121212"):
        assert ids(client, f"CarePlan?subject:identifier={PNR}|{v}") == [plan["id"]], v


def test_meta_tag_security_and_profile(client):
    prof = "http://example.org/StructureDefinition/x"
    tagged = create(client, patient() | {"meta": {
        "tag": [{"system": "urn:ex:tags", "code": "Åtgärd"}],
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                      "code": "R"}],
        "profile": [prof]}})["id"]
    other = create(client, patient("200001012384"))["id"]
    assert ids(client, "Patient?_tag=urn:ex:tags|" + quote("Åtgärd")) == [tagged]
    assert ids(client, "Patient?_tag=" + quote("åtgärd")) == []  # codes: case-sensitive
    assert ids(client, "Patient?_tag:not=urn:ex:tags|" + quote("Åtgärd")) == [other]
    assert ids(client, "Patient?_security=R") == [tagged]
    assert ids(client, f"Patient?_profile={quote(prof)}") == [tagged]
    assert ids(client, f"Patient?_profile={quote(prof + 'x')}") == []
    assert ids(client, "Patient?_profile:missing=true") == [other]


def test_post_search_reads_escapes_as_get_does(client, tokens):
    r = client.post("/fhir/CarePlan/_search", data={"category": "a\\|b,urn:ex:cs|a\\,b"})
    assert r.status_code == 200, r.text
    assert sorted(e["resource"]["id"] for e in r.json()["entry"]) == sorted(
        [tokens["pipe"], tokens["comma"]])


def test_next_link_keeps_include_and_chain(client, refs):
    q = "CarePlan?patient.family=tolv,ander&_include=CarePlan:patient&_count=1&_sort=_id"
    first = get(client, q)
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    items = parse_qsl(urlsplit(nxt).query)
    assert ("patient.family", "tolv,ander") in items
    assert ("_include", "CarePlan:patient") in items
    second = get(client, nxt.replace("http://hub.test/fhir/", ""))
    modes = sorted((e["resource"]["resourceType"], e["search"]["mode"])
                   for e in second["entry"])
    assert modes == [("CarePlan", "match"), ("Patient", "include")]


ODD = ["patient:=x", ":exact=x", "name:=x", ".=x", "patient.=x", "patient..name=x",
       "patient:Patient.=x", "patient:.name=x", "patient:Patient=", "_sort=,,", "_sort=-,",
       "_include=CarePlan:patient:", "_include=:", "_revinclude=CarePlan::",
       "patient.identifier:missing=maybe", "date=ge2024&date=le", "status=%5C", "status=%7C",
       "status=%7C%7C", "category=a%5C", "_id=%5C", "patient=%5C", "patient=Patient%5C/1",
       "date=2024-05-05T10:00:00.1234567890123Z", "date=9999-12-31T23:59:59-14:00",
       "date=0001-01-01T00:00:00%2B14:00", "_lastUpdated=ap0001", "date=sa9999",
       "patient:Patient:Patient=1", "subject:Bogus=1", "subject:bogus=1",
       "patient.name:Patient=x", "care-team.patient.name=x", "_count=1.5", "_offset=-0",
       "_total=ACCURATE", "_summary=true", "_elements=id", "date:missing=",
       "name:contains=%25%25", "name=%C3%A5%CC%8A", "_has=x", "_type=Patient"]


@pytest.mark.parametrize("query", ODD)
def test_odd_search_input_is_answered_never_a_5xx(client, query):
    r = client.get(f"/fhir/CarePlan?{query}")
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.json()["resourceType"] == "OperationOutcome"


def test_a_token_of_a_bar_alone_names_nothing_and_is_refused(client, tokens):
    """``|`` alone is none of FHIR's token forms (it matched every value without a system:
    here every plan, by its status)."""
    refused(client, "CarePlan?status=%7C", "status")
    refused(client, "CarePlan?category=urn:ex:cs|VP,%7C", "category")


@pytest.mark.parametrize("query", ["patient:=x", "patient:.name=x", "name:=x",
                                   "patient:missing.name=true", "patient:not.gender=male"])
def test_an_empty_or_misplaced_modifier_is_refused_not_dropped(client, query):
    refused(client, f"CarePlan?{query}")


def test_an_unknown_element_is_refused_strict_and_ignored_for_whole_resources_lenient(
        client, refs):
    refused(client, "CarePlan?_elements=statuz", "_elements")
    b = get(client, f"CarePlan?_elements=statuz&patient={refs['p1']}", LENIENT)
    match = [e["resource"] for e in b["entry"] if e["search"]["mode"] == "match"]
    assert [m["id"] for m in match] == [refs["a"]] and "subject" in match[0]
    outcome = [e["resource"] for e in b["entry"] if e["search"]["mode"] == "outcome"]
    assert "_elements" in outcome[0]["issue"][0]["diagnostics"]
