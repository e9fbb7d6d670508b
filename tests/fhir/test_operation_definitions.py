"""The hub's FHIR operations: each route ``/fhir/...$op`` has one published OperationDefinition
and each published OperationDefinition has its route, so the CapabilityStatement (derived from
the definitions) neither claims an operation that does not exist nor hides one."""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi import routing

from sip_hub.app import create_app
from sip_hub.fhir import profiles, sip
from sip_hub.settings import Settings

Json = dict[str, Any]

# /fhir/$op, /fhir/Type/$op, /fhir/Type/{id}/$op
_OPERATION_PATH = re.compile(
    r"^/fhir(?:/(?P<type>[A-Z][A-Za-z]+)(?P<instance>/\{[^}/]+\})?)?/\$(?P<code>[a-z][a-z0-9-]*)$")


@dataclass(frozen=True)
class Route:
    path: str
    code: str
    level: str  # system | type | instance
    resource: str | None
    methods: frozenset[str]


def _paths(app: Any) -> Iterator[tuple[str, frozenset[str]]]:
    """(path, methods) of every route of the app, included routers flattened."""
    contexts = getattr(routing, "iter_route_contexts", None)
    routes = contexts(app.routes) if contexts is not None else app.routes
    for route in routes:
        path = getattr(route, "path", None)
        if isinstance(path, str):
            yield path, frozenset(getattr(route, "methods", None) or ())


def operation_routes() -> list[Route]:
    """The app's operation routes (at collection time, to parametrize the tests by them)."""
    found: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory() as data_dir:  # the app writes its dev signing key here
        app = create_app(Settings(env="test", data_dir=Path(data_dir),
                                  base_url="http://hub.test", auto_migrate=False))
        for path, methods in _paths(app):
            if path.startswith("/fhir/") and "$" in path:
                found.setdefault(path, set()).update(methods)
    out = []
    for path, methods in sorted(found.items()):
        m = _OPERATION_PATH.match(path)
        assert m is not None, f"{path}: not an operation path the test understands"
        level = "instance" if m["instance"] else "type" if m["type"] else "system"
        out.append(Route(path, m["code"], level, m["type"], frozenset(methods - {"HEAD"})))
    return out


def operation_definitions() -> list[Json]:
    return [d for d in profiles.definitions() if d["resourceType"] == "OperationDefinition"]


def _defined_for(d: Json) -> set[tuple[str, str, str | None]]:
    """(code, level, resource) of every way the definition may be invoked."""
    out: set[tuple[str, str, str | None]] = set()
    if d.get("system"):
        out.add((d["code"], "system", None))
    for level in ("type", "instance"):
        if d.get(level):
            out |= {(d["code"], level, r) for r in d.get("resource", [])}
    return out


ROUTES = operation_routes()
DEFINITIONS = operation_definitions()


def test_the_hub_has_operations_and_publishes_them() -> None:
    codes = {r.code for r in ROUTES}
    assert {"transition", "invite", "respond", "propose-revision", "approve-revision",
            "citizen-view"} <= codes
    assert {d["code"] for d in DEFINITIONS} >= codes


@pytest.mark.parametrize("route", ROUTES, ids=[r.path for r in ROUTES])
def test_every_operation_route_has_exactly_one_definition(route: Route) -> None:
    key = (route.code, route.level, route.resource)
    matching = [d for d in DEFINITIONS if key in _defined_for(d)]
    assert len(matching) == 1, (f"{route.path}: {len(matching)} OperationDefinitions for "
                                f"{key}; publish exactly one in sip_hub/fhir/definitions/")
    d = matching[0]
    # A state-changing operation is invoked with POST only; a GET route is one without effects.
    if "GET" in route.methods:
        assert d["affectsState"] is False, route.path
    if d["affectsState"]:
        assert route.methods == {"POST"}, route.path
    # Every operation is invoked with POST (operations.html: "Servers SHALL support POST
    # method for all operations"); GET is the extra form of one without effects.
    assert "POST" in route.methods, route.path


@pytest.mark.parametrize("definition", DEFINITIONS, ids=[d["id"] for d in DEFINITIONS])
def test_every_definition_has_its_route(definition: Json) -> None:
    routed = {(r.code, r.level, r.resource) for r in ROUTES}
    declared = _defined_for(definition)
    assert declared, f"{definition['id']} says neither system, type nor instance"
    assert declared <= routed, (f"{definition['id']} declares {sorted(declared - routed, key=str)}"
                                " but the hub has no such route")


def test_definitions_follow_the_conventions() -> None:
    assert Counter(d["code"] for d in DEFINITIONS).most_common(1)[0][1] == 1
    for d in DEFINITIONS:
        assert d["url"] == f"{sip.CANONICAL}/OperationDefinition/{d['id']}"
        assert d["kind"] == "operation" and not d["code"].startswith("$")
        assert d["parameter"], d["id"]
        for p in d["parameter"]:
            _check_parameter(d["id"], p)


def _check_parameter(where: str, p: Json) -> None:
    assert p["use"] in ("in", "out") and p.get("documentation"), (where, p["name"])
    assert ("type" in p) != ("part" in p), (where, p["name"])
    for part in p.get("part", []):
        assert part["use"] == p["use"]
        _check_parameter(f"{where}.{p['name']}", part)
    vs = (p.get("binding") or {}).get("valueSet", "")
    if vs.startswith(sip.CANONICAL):
        assert vs in {d["url"] for d in profiles.definitions()}, (where, vs)


def test_sip_phase_parameters_are_bound_to_the_phase_valueset() -> None:
    transition = next(d for d in DEFINITIONS if d["code"] == "transition")
    bound = {(p["name"], p["use"]): p.get("binding", {}).get("valueSet")
             for p in transition["parameter"]}
    assert bound[("to", "in")] == bound[("to", "out")] == bound[("from", "out")] == sip.VS_PHASE


def test_capability_statement_lists_exactly_the_published_operations(anonymous) -> None:
    r = anonymous.get("/fhir/metadata")
    assert r.status_code == 200, r.text
    rest = r.json()["rest"][0]
    listed: set[tuple[str, str, str | None]] = {
        (op["name"], op["definition"], res["type"])
        for res in rest["resource"] for op in res.get("operation", [])}
    listed |= {(op["name"], op["definition"], None) for op in rest.get("operation", [])}
    expected: set[tuple[str, str, str | None]] = set()
    for d in DEFINITIONS:
        for _code, level, rtype in _defined_for(d):
            expected.add((d["code"], d["url"], rtype if level != "system" else None))
    assert listed == expected
    by_type = {res["type"]: {op["name"] for op in res.get("operation", [])}
               for res in rest["resource"]}
    assert by_type["CarePlan"] >= {"transition", "invite", "propose-revision",
                                   "approve-revision", "citizen-view"}
    assert "respond" in by_type["Task"]
    assert "respond" not in by_type["CarePlan"]


@pytest.mark.parametrize("definition", DEFINITIONS, ids=[d["id"] for d in DEFINITIONS])
def test_each_definition_is_readable(client, definition: Json) -> None:
    r = client.get(f"/fhir/OperationDefinition/{definition['id']}")
    assert r.status_code == 200, r.text
    served = r.json()
    assert {k: v for k, v in served.items() if k != "meta"} == definition
    found = client.get(f"/fhir/OperationDefinition?url={definition['url']}")
    assert found.status_code == 200, found.text
    assert [e["resource"]["id"] for e in found.json().get("entry", [])] == [definition["id"]]
