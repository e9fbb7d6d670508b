"""Malformed input, as a property: whatever a client sends in place of a SIP resource, a
transaction Bundle or a search, the hub answers with a 4xx OperationOutcome (never a 5xx) and
a refused write stores nothing.

The inputs are the demo SIP's own resources with a few random mutations (an element removed,
replaced by a value of another shape, or a nested element mutated the same way), the
mutations a fuzzer against the running hub found 5xx answers with: a string holding a number
as a primitive's extension, a ``fullUrl`` that is an object, a version beyond any integer the
database holds.
"""

from __future__ import annotations

import copy
from urllib.parse import quote
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

import sip_factory as f
from fhirhttp import JSON_HEADERS

Json = dict[str, Any]
ODD = [None, "", " ", 0, -1, 1.5, 10**18, True, [], {}, [None], [{}], "1.5", "7", "x" * 300,
       "\u0000", "2020-13-45", "2020-02-30T25:61:00Z", "urn:uuid:", "Patient/", "#nope",
       {"reference": 5}, {"extension": []}, [1, "a", None], {"resourceType": "Patient"},
       "19121212-1212", "191212121213", {"system": None, "value": None}]
KEYS = ["_status", "_id", "extension", "modifierExtension", "contained", "meta", "text",
        "resourceType", "foo"]
BASES = [f.patient(), f.sip_consent(), f.sip_careteam(), f.sip_careplan(), f.sip_goal()]


@st.composite
def mutated(draw: st.DrawFn, node: Any) -> Any:
    """``node`` with one random change somewhere in it."""
    if isinstance(node, dict) and node:
        key = draw(st.sampled_from(sorted(node)))
        how = draw(st.sampled_from(["drop", "replace", "add", "nest"]))
        out = dict(node)
        if how == "drop":
            del out[key]
        elif how == "replace":
            out[key] = draw(st.sampled_from(ODD))
        elif how == "add":
            out[draw(st.sampled_from(KEYS))] = draw(st.sampled_from(ODD))
        else:
            out[key] = draw(mutated(node[key]))
        return out
    if isinstance(node, list) and node:
        i = draw(st.integers(0, len(node) - 1))
        out = list(node)
        how = draw(st.sampled_from(["drop", "replace", "nest"]))
        if how == "drop":
            del out[i]
        elif how == "replace":
            out[i] = draw(st.sampled_from(ODD))
        else:
            out[i] = draw(mutated(node[i]))
        return out
    return draw(st.sampled_from(ODD))


@st.composite
def mutated_resource(draw: st.DrawFn) -> Any:
    res = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        res = draw(mutated(res))
    return res


def _stored(client: Any) -> int:
    return sum(client.get(f"/fhir/{t}", params={"_summary": "count"}).json()["total"]
               for t in ("Patient", "Consent", "CareTeam", "CarePlan", "Goal"))


def _answered_cleanly(r: Any) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.json()["resourceType"] == "OperationOutcome", r.text


FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(res=mutated_resource())
def test_a_mutated_resource_is_answered_with_an_outcome_and_refusals_store_nothing(client,
                                                                                  res):
    rtype = res.get("resourceType") if isinstance(res, dict) else None
    before = _stored(client)
    # (a resourceType that no URL may hold as it is, a NUL say, goes in percent-encoded)
    r = client.post(f"/fhir/{quote(rtype, safe='') if isinstance(rtype, str) else 'Patient'}",
                    content=orjson.dumps(res), headers=JSON_HEADERS)
    _answered_cleanly(r)
    if r.status_code >= 400:
        assert _stored(client) == before


@FUZZ
@given(entries=st.lists(mutated(
    {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", "resource": f.patient(),
     "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=x|1"}}),
    min_size=1, max_size=3))
def test_a_transaction_of_mutated_entries_is_all_or_nothing_and_never_a_5xx(client, entries):
    before = _stored(client)
    r = client.post("/fhir", content=orjson.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        headers=JSON_HEADERS)
    _answered_cleanly(r)
    if r.status_code >= 400:
        assert _stored(client) == before


@FUZZ
@given(params=st.lists(st.tuples(
    st.sampled_from(["patient", "status", "date", "_lastUpdated", "_count", "_offset", "_sort",
                     "_include", "_revinclude", "category:not", "identifier", "_id:above"]),
    st.sampled_from(["", "x", "ge2020", "eq2020-13-01", "99999999999999999999", "\u00b2", "-5",
                     "a\u0000b",
                     "|", "a|", "Patient/", "CarePlan:patient", "-date", "1,,2"])),
    min_size=1, max_size=4))
def test_odd_search_parameters_are_answered_with_an_outcome(client, params):
    for path in ("/fhir/CarePlan", "/fhir/CarePlan/_history"):
        _answered_cleanly(client.get(path, params=params))
