"""A narrative the hub stores is one it can pass on safely and serve in every format.

Organisations and the citizen portal show Resource.text.div as HTML: a link, image or citation
whose URL runs script there is refused (FHIR R4 narrative: it "SHALL NOT contain scripts"),
in JSON and in XML input, whatever spelling a browser would still read as the scheme. A div
is the XHTML element alone: one with an XML declaration (or anything else around it) was
stored and then made every FHIR XML answer holding it a 500. Safe URLs stay accepted.
"""

from __future__ import annotations

from typing import Any

import pytest

from fhirhttp import body, outcome_text

XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'
XML_IN = {"content-type": "application/fhir+xml", "accept": "application/fhir+json"}
XML_OUT = {"accept": "application/fhir+xml"}
DIV = "Organization.text.div"

# Browsers strip leading spaces and controls, drop tabs and newlines inside the scheme and
# read it in any case, so each of these runs script (or a document of its own) when shown.
SCRIPT_URLS = {
    "a-href": '<a href="javascript:alert(document.cookie)">Läs mer</a>',
    "a-href-spaced-mixed-case": '<a href=" JaVaScRiPt:alert(1)">Läs mer</a>',
    "a-href-char-ref": '<a href="&#106;avascript:alert(1)">Läs mer</a>',
    "a-href-tab-in-scheme": '<a href="java&#9;script:alert(1)">Läs mer</a>',
    "a-href-newlines": '<a href="&#10; java&#10;script&#13;:alert(1)">Läs mer</a>',
    "a-href-vbscript": '<a href="vbscript:msgbox(1)">Läs mer</a>',
    "a-href-data-html": '<a href="data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;">x</a>',
    "a-href-data-image": '<a href="data:image/svg+xml,&lt;svg/&gt;">x</a>',
    "area-href": '<map name="m"><area href="javascript:alert(1)" alt="x"/></map>Karta',
    "img-src": '<img src="javascript:alert(1)" alt="x"/>',
    "img-src-data-html": '<img src="data:text/html,x" alt="x"/>',
    "img-longdesc": '<img src="#bild" alt="x" longdesc="javascript:alert(1)"/>',
    "blockquote-cite": '<blockquote cite="javascript:alert(1)">Citat</blockquote>',
    "q-cite": '<q cite="JAVASCRIPT:alert(1)">Citat</q>',
}

SAFE_URLS = {
    "https-link": '<a href="https://www.1177.se/">1177</a>',
    "relative-link": '<a href="Patient/alva">Alva</a>',
    "local-anchor": '<a href="#mal">Mål</a>',
    "mail-link": '<a href="mailto:bup@example.se">BUP</a>',
    "word-before-colon-in-path": '<a href="/docs?q=javascript:x">Sök</a>',
    "data-image": '<img src="data:image/png;base64,iVBORw0KGgo=" alt="bild"/>',
    "citation": '<blockquote cite="https://www.socialstyrelsen.se/">Citat</blockquote>',
}

# Beside the div, whatever the parser drops unseen (the div is kept as sent).
NOT_ALONE = {
    "xml-declaration": f'<?xml version="1.0" encoding="UTF-8"?><div {XHTML}>Vårdcentralen</div>',
    "xml-declaration-no-encoding": f'<?xml version="1.0"?><div {XHTML}>Vårdcentralen</div>',
    "processing-instruction": f'<?xml-stylesheet href="s.xsl"?><div {XHTML}>Text</div>',
    "comment-before": f"<!-- utkast --><div {XHTML}>Text</div>",
    "comment-after": f"<div {XHTML}>Text</div><!-- utkast -->",
    "processing-instruction-after": f"<div {XHTML}>Text</div><?x y?>",
}


def _organization(div: str) -> dict[str, Any]:
    return {"resourceType": "Organization", "name": "Vårdcentralen",
            "text": {"status": "generated", "div": div}}


def _as_xml(div: str) -> str:
    return (f'<Organization xmlns="http://hl7.org/fhir"><text><status value="generated"/>'
            f'{div}</text><name value="Vårdcentralen"/></Organization>')


def _count(client: Any) -> int:
    return client.get("/fhir/Organization?_summary=count").json()["total"]


def _refused(r: Any) -> str:
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert r.json()["issue"][0]["expression"] == [DIV], r.text[:300]
    return outcome_text(r)


@pytest.mark.parametrize("markup", list(SCRIPT_URLS.values()), ids=list(SCRIPT_URLS))
def test_a_narrative_url_that_runs_script_is_refused(client, markup: str) -> None:
    r = client.post("/fhir/Organization",
                    **body(_organization(f"<div {XHTML}><p>Text</p>{markup}</div>")))
    assert "SHALL NOT contain scripts" in _refused(r)
    assert _count(client) == 0


@pytest.mark.parametrize("markup", [SCRIPT_URLS[k] for k in
                                    ("a-href-char-ref", "a-href-tab-in-scheme", "img-src")],
                         ids=["a-href-char-ref", "a-href-tab-in-scheme", "img-src"])
def test_a_narrative_url_that_runs_script_is_refused_from_xml(client, markup: str) -> None:
    r = client.post("/fhir/Organization", headers=XML_IN,
                    content=_as_xml(f"<div {XHTML}><p>Text</p>{markup}</div>").encode())
    assert "SHALL NOT contain scripts" in _refused(r)
    assert _count(client) == 0


@pytest.mark.parametrize("markup", list(SAFE_URLS.values()), ids=list(SAFE_URLS))
def test_a_narrative_with_safe_urls_is_stored_and_served_as_xml(client, markup: str) -> None:
    r = client.post("/fhir/Organization",
                    **body(_organization(f"<div {XHTML}><p>Text</p>{markup}</div>")))
    assert r.status_code == 201, r.text[:300]
    read = client.get(f"/fhir/Organization/{r.json()['id']}", headers=XML_OUT)
    assert read.status_code == 200, read.text[:300]


@pytest.mark.parametrize("div", list(NOT_ALONE.values()), ids=list(NOT_ALONE))
def test_a_narrative_that_is_not_the_div_alone_is_refused(client, div: str) -> None:
    assert "the <div> element alone" in _refused(
        client.post("/fhir/Organization", **body(_organization(div))))
    assert _count(client) == 0


def test_a_narrative_from_xml_is_the_div_alone(client) -> None:
    """In FHIR XML the div is an element of the document: what the parser drops beside it
    (a comment, a processing instruction) is not kept, and the stored div serves as XML."""
    xml = _as_xml(f"<!-- utkast --><div {XHTML}>Vårdcentralen</div><?x y?>")
    r = client.post("/fhir/Organization", headers=XML_IN, content=xml.encode())
    assert r.status_code == 201, r.text[:300]
    stored = r.json()
    assert stored["text"]["div"] == f"<div {XHTML}>Vårdcentralen</div>"
    read = client.get(f"/fhir/Organization/{stored['id']}", headers=XML_OUT)
    assert read.status_code == 200 and "Vårdcentralen" in read.text, read.text[:300]
    found = client.get(f"/fhir/Organization?_id={stored['id']}&_format=xml")
    assert found.status_code == 200, found.text[:300]
