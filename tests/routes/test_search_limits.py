"""Search at its edges: numbers past 32 bits, many values, identifiers in the form a client
sent them, values that are blank once normalised, and strings longer than the index."""

from __future__ import annotations

import orjson

from fhirhttp import HSA, JSON_HEADERS, PNR, body, create, outcome_text, patient

HSA_ALT = "urn:oid:1.2.752.129.2.1.4.1"


def total(client, query):
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 200, r.text
    return r.json()["total"]


def ids(client, query):
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 200, r.text
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []))


def test_numbers_past_32_bits_are_a_version_mismatch_or_an_empty_page(client):
    """Versions and offsets up to 2**63-1 are accepted; none that large can exist, so a
    vread is a 404, an If-Match a 412 and an offset an empty page (PostgreSQL gave 500s)."""
    p = create(client, patient())
    url = f"/fhir/Patient/{p['id']}"
    for n in (2**31, 2**63 - 1):
        page = client.get(f"/fhir/Patient?_id={p['id']}&_offset={n}")
        assert page.status_code == 200 and page.json()["total"] == 1
        assert "entry" not in page.json()
        assert client.get(f"{url}/_history/{n}").status_code == 404
        etag = {"if-match": f'W/"{n}"'}
        r = client.put(url, content=orjson.dumps(p | {"gender": "male"}),
                       headers=JSON_HEADERS | etag)
        assert r.status_code == 412 and str(n) in outcome_text(r)
        r = client.put(f"/fhir/Patient?_id={p['id']}",
                       content=orjson.dumps(p | {"gender": "male"}),
                       headers=JSON_HEADERS | etag)
        assert r.status_code == 412
        r = client.post("/fhir/Patient", **body(patient()) | {
            "headers": JSON_HEADERS | {"if-none-exist": f"_id={p['id']}&_offset={n}"}})
        assert r.status_code in (200, 201), r.text  # a page past the match: no match
    n = 2**31
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": p | {"gender": "male"},
         "request": {"method": "PUT", "url": f"Patient/{p['id']}", "ifMatch": f'W/"{n}"'}},
        {"request": {"method": "GET", "url": f"Patient/{p['id']}/_history/{n}"}},
        {"request": {"method": "GET", "url": f"Patient?_id={p['id']}&_offset={n}"}}]}))
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["412", "404", "200"]
    assert client.get(url).json()["meta"]["versionId"] == "1"
    too_big = client.put(url, content=orjson.dumps(p), headers=JSON_HEADERS | {
        "if-match": f'W/"{2**64}"'})
    assert too_big.status_code == 400


def test_too_many_values_are_a_400_that_names_the_parameter_and_the_limit(client):
    """SQLite refused ~500 ORed values and PostgreSQL 65,536 bound ones, both as a 503 that
    asks the client to retry for ever."""
    p = create(client, patient())
    hundred = ",".join([p["id"]] + [f"x{i}" for i in range(99)])
    assert total(client, f"Patient?_id={hundred}") == 1
    for query, name in [
            ("identifier=" + ",".join(f"sys|v{i}" for i in range(101)), "identifier"),
            ("family=" + ",".join(f"x{i}" for i in range(1100)), "family"),
            ("_id=" + ",".join(f"a{i}" for i in range(70000)), "_id")]:
        r = client.post("/fhir/Patient/_search", data=dict([query.split("=", 1)]))
        assert r.status_code == 400, query[:40]
        assert f"'{name}'" in outcome_text(r) and "at most 100" in outcome_text(r)
    six = "&".join("family=" + ",".join(f"x{k}-{i}" for i in range(100)) for k in range(6))
    r = client.get(f"/fhir/Patient?{six}", headers={"prefer": "handling=lenient"})
    assert r.status_code == 400 and "at most 500" in outcome_text(r)
    many = "&".join(f"family=x{i}" for i in range(51))
    r = client.get(f"/fhir/Patient?{many}")
    assert r.status_code == 400 and "at most 50" in outcome_text(r)
    r = client.post("/fhir/Patient", **body(patient()) | {"headers": JSON_HEADERS | {
        "if-none-exist": "identifier=" + ",".join(f"sys|v{i}" for i in range(101))}})
    assert r.status_code == 400
    assert total(client, "Patient") == 1


def test_a_swedish_identifier_is_found_in_any_form_a_write_accepts(client):
    """Writes store a personnummer as 12 digits and an HSA-id upper case under one OID; a
    search (and a conditional create) by the form the client sent found nothing, so the
    conditional create stored a duplicate every time."""
    p = create(client, patient("19121212-1212"))
    assert p["identifier"][0]["value"] == "191212121212"
    for value in ("19121212-1212", "191212121212", "121212%2B1212"):  # %2B: '+'
        assert ids(client, f"Patient?identifier={PNR}|{value}") == [p["id"]], value
    create(client, {"resourceType": "CarePlan", "status": "active", "intent": "plan",
                    "subject": {"reference": f"Patient/{p['id']}"}})
    assert total(client, f"CarePlan?patient.identifier={PNR}|19121212-1212") == 1
    headers = JSON_HEADERS | {"if-none-exist": f"identifier={PNR}|19121212-1212"}
    again = client.post("/fhir/Patient", content=orjson.dumps(patient("19121212-1212")),
                        headers=headers)
    assert again.status_code == 200 and again.json()["id"] == p["id"]
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": "transaction",
                                     "entry": [{"resource": patient("19121212-1212"),
                                                "request": {"method": "POST", "url": "Patient",
                                                            "ifNoneExist": headers[
                                                                "if-none-exist"]}}]}))
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["status"].startswith("200")
    assert total(client, "Patient") == 1
    org = create(client, {"resourceType": "Organization", "name": "Karlstads kommun",
                          "identifier": [{"system": HSA_ALT, "value": "se2120001637-1"}]})
    for query in (f"{HSA_ALT}|se2120001637-1", f"{HSA}|se2120001637-1",
                  f"{HSA}|SE2120001637-1", f"{HSA_ALT}|"):
        assert ids(client, f"Organization?identifier={query}") == [org["id"]], query
    # An invalid one (a write refuses it) is searched for as sent: it matches nothing here.
    for value in ("19121212-1213", "1912121212125", "x" * 300):
        assert total(client, f"Patient?identifier={PNR}|{value}") == 0, value


def test_a_string_value_blank_once_normalised_is_a_400_not_a_match_for_all(client):
    """A space, a lone combining accent or an em space normalise to nothing, which every
    value starts with: they matched every resource, and fed conditional updates."""
    a = create(client, patient())
    create(client, patient("200001012384", "Andersson", "Alva"))
    for value in ("%20", "%CC%81", "%E2%80%83"):
        for modifier in ("", ":contains"):
            r = client.get(f"/fhir/Patient?family{modifier}={value}")
            assert r.status_code == 400, (modifier, value)
            assert "nothing to match" in outcome_text(r)
    assert client.get("/fhir/Patient?family:exact=%20").status_code == 400
    r = client.put("/fhir/Patient?family=%20", content=orjson.dumps(patient() | {
        "gender": "male"}), headers=JSON_HEADERS)
    assert r.status_code == 400
    r = client.post("/fhir/Patient", content=orjson.dumps(patient("191212121212", "Ny")),
                    headers=JSON_HEADERS | {"if-none-exist": "family=%CC%81"})
    assert r.status_code == 400
    assert total(client, "Patient") == 2
    assert "gender" not in client.get(f"/fhir/Patient/{a['id']}").json()


def test_strings_longer_than_the_index_are_matched_whole_by_exact_and_contains(client):
    """The index keeps 255 characters: :exact with a longer name found nothing, its first 255
    characters found the longer name, and :contains missed what came after."""
    name = "Lång" + "x" * 300 + "Slutet"
    long_ = create(client, patient(family=name))
    head = create(client, patient("200001012384", family=name[:255]))
    other = create(client, patient("199001012385", family=name[:300] + "Annat"))
    assert ids(client, f"Patient?family:exact={name}") == [long_["id"]]
    assert ids(client, f"Patient?family:exact={name[:255]}") == [head["id"]]
    assert ids(client, f"Patient?family:exact={name[:300]}Annat") == [other["id"]]
    assert ids(client, f"Patient?family:exact={name[:254]}") == []
    assert ids(client, "Patient?family:contains=slutet") == [long_["id"]]
    assert ids(client, "Patient?family:contains=xannat") == [other["id"]]
    assert ids(client, f"Patient?family:contains={'x' * 120}slut") == [long_["id"]]
    assert ids(client, "Patient?family=lang") == sorted(
        [long_["id"], head["id"], other["id"]])
    assert long_["id"] in ids(client, f"Patient?family={name}")
    assert ids(client, f"Patient?name:contains=slutet&_id={long_['id']}") == [long_["id"]]
    # An update re-derives the windows: what left the name is no longer found.
    r = client.put(f"/fhir/Patient/{long_['id']}",
                   **body(long_ | {"name": [{"family": name.replace("Slutet", "Annars")}]}))
    assert r.status_code == 200, r.text
    assert ids(client, "Patient?family:contains=slutet") == []
    assert ids(client, "Patient?family:contains=annars") == [long_["id"]]


def test_an_include_named_many_times_is_one_include(client):
    """A thousand copies of one _include cost a query each (0.3 s for one match); they are
    one include, and the answer is as for one."""
    from sip_hub.fhir import search
    q = search.parse("CarePlan", [("_include", "CarePlan:subject")] * 1000 +
                     [("_revinclude", "Provenance:target")] * 1000,
                     default_count=10, max_count=100)
    assert len(q.includes) == 1 and len(q.revincludes) == 1
    p = create(client, patient())
    plan = {"resourceType": "CarePlan", "status": "draft", "intent": "plan",
            "subject": {"reference": f"Patient/{p['id']}"}}
    assert client.post("/fhir/CarePlan", **body(plan)).status_code == 201
    r = client.get(f"/fhir/CarePlan?subject=Patient/{p['id']}"
                   + "&_include=CarePlan:subject" * 1000)
    assert r.status_code == 200, r.text
    assert sorted(e["resource"]["resourceType"] for e in r.json()["entry"]) == [
        "CarePlan", "Patient"]
