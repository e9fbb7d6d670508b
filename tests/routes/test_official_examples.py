"""The official FHIR R4 examples for CarePlan, CareTeam and Consent go in and come back intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from fhirhttp import body
from sip_hub.fhir.dates import parse_range

EXAMPLES = sorted((Path(__file__).parent.parent / "fixtures" / "r4-examples").glob("*.json"))


def test_examples_are_present():
    kinds = {p.name.split("-")[0] for p in EXAMPLES}
    assert kinds == {"CarePlan", "CareTeam", "Consent"}
    assert len(EXAMPLES) == 24


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_official_example_round_trips_unchanged_apart_from_meta(client, path):
    original = json.loads(path.read_text())
    r = client.put(f"/fhir/{original['resourceType']}/{original['id']}", **body(original))
    assert r.status_code == 201, r.text
    back = client.get(f"/fhir/{original['resourceType']}/{original['id']}").json()
    meta = back.pop("meta")
    assert meta["versionId"] == "1"
    original.pop("meta", None)
    assert back == original


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_official_example_round_trips_through_xml_with_the_same_meaning(client, path):
    original = json.loads(path.read_text())
    client.put(f"/fhir/{original['resourceType']}/{original['id']}", **body(original))
    xml = client.get(f"/fhir/{original['resourceType']}/{original['id']}?_format=xml").content
    r = client.put(f"/fhir/{original['resourceType']}/{original['id']}", content=xml,
                   headers={"content-type": "application/fhir+xml"})
    assert r.status_code == 200, r.text
    back = r.json()
    back.pop("meta")
    original.pop("meta", None)
    assert _semantic(back) == _semantic(original)


def _semantic(node):
    """XML is another serialisation: compare XHTML canonically and instants by value."""
    if isinstance(node, dict):
        return {k: (_c14n(v) if k == "div" else _semantic(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_semantic(v) for v in node]
    if isinstance(node, str) and len(node) > 10 and node[4:5] == "-" and "T" in node:
        try:
            return parse_range(node)
        except ValueError:
            return node
    return node


def _c14n(div: str) -> bytes:
    return etree.tostring(etree.fromstring(div), method="c14n")
