"""The citizen view as a PDF (docs/interface.md: ``application/pdf`` on Accept): what the
national portal hands the person to keep or print. Read back with pypdf, an independent PDF
reader: it says what the HTML view says, in Swedish, with every letter of the person's
language printed (the font embedded), and leaves out what the citizen never sees."""

from __future__ import annotations

import copy
import io
import re
from datetime import datetime, timezone

import pytest
from pypdf import PdfReader

import sip_factory as f
from sip_hub import identifiers
from sip_hub.routes import pdf as pdf_module
from sip_process import write_case

VIEW = "/fhir/CarePlan/$citizen-view"
ALVA = f"{VIEW}?patient={identifiers.PERSONNUMMER}|{f.DEMO_PNR}"
PDF = {"Accept": "application/pdf"}
# Northern, Lule and South Sami letters, Finnish and Meänkieli, and others of Sweden's names
NAMES = "Áile Čalmmi Đuoddar Ŋuolla Šiellat Ŧuvla Žanet, Ääpö Mäkinen, Øystein Łukasz"


def _case(*, status: str = "active", activities: list | None = None,
          coordination: str | None = None) -> list[dict]:
    case = f.demo_case()
    plan = next(r for r in case if r["resourceType"] == "CarePlan")
    plan["status"] = status
    if activities is not None:
        plan["activity"] = activities
    if coordination is not None:
        ext = next(e for e in plan["extension"] if e["url"].endswith("coordination"))
        ext["valueMarkdown"] = coordination
    return case if status == "active" else [r for r in case
                                            if r["resourceType"] != "Provenance"]


def activities(descriptions: list[str]) -> list[dict]:
    """The demo plan's first insats once for each description."""
    out = []
    for text in descriptions:
        a = copy.deepcopy(f.demo_activities()[0])
        a["detail"]["description"] = text
        out.append(a)
    return out


def _read(r) -> tuple[PdfReader, str]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf", r.headers
    assert r.content.startswith(b"%PDF-")
    pdf = PdfReader(io.BytesIO(r.content))
    return pdf, "\n".join(page.extract_text() for page in pdf.pages)


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_the_pdf_says_what_the_plan_says_and_nothing_the_citizen_never_sees(
        client, portal):
    write_case(client, {}, f.demo_case())
    pdf, text = _read(client.get(ALVA, headers=portal | PDF))
    flat = _flat(text)
    assert "SIP för Alva Andersson" in flat
    assert "Planen är skriven av" in flat
    for heading in ("Dina behov i dag", "Mål", "Insatser", "Huvudansvar",
                    "Så samordnas insatserna", "Uppföljning"):
        assert heading in flat
    assert "Alva har hög skolfrånvaro sedan i våras" in flat
    assert "Kommunen har det övergripande ansvaret för planen." in flat
    assert "Samtalsbehandling (KBT)" in flat
    assert "Planen följs upp 2027-02-15." in flat
    for goal in f.demo_goals():
        assert _flat(goal["description"]["text"]) in flat
    assert "Somnar sent" not in flat  # the kartläggning's answers never reach the citizen
    assert f.DEMO_PNR not in flat
    meta = pdf.metadata
    assert meta.title == "Samordnad individuell plan"
    assert pdf.trailer["/Root"]["/Lang"] == "sv-SE"
    assert pdf.trailer["/Root"]["/ViewerPreferences"]["/DisplayDocTitle"]
    # The fonts travel with the document (a reader without them prints the same letters)
    fonts = [font.get_object() for page in pdf.pages
             for font in page["/Resources"]["/Font"].values()]
    for font in fonts:
        descendant = font["/DescendantFonts"][0].get_object() if "/DescendantFonts" in font \
            else font
        assert "/FontFile2" in descendant["/FontDescriptor"], font


def test_every_letter_of_a_persons_name_is_printed(client, portal):
    write_case(client, {}, _case(coordination=f"Kontaktpersoner: {NAMES}."))
    _, text = _read(client.get(ALVA, headers=portal | PDF))
    assert f"Kontaktpersoner: {NAMES}." in _flat(text)


def test_a_long_plan_runs_over_pages_with_every_insats_and_the_table_head_again(
        client, portal):
    write_case(client, {}, _case(activities=activities(
        [f"Insats nummer {i:02d}: stöd i vardagen " + "och " * 12 for i in range(60)])))
    pdf, text = _read(client.get(ALVA, headers=portal | PDF))
    assert len(pdf.pages) > 1
    flat = _flat(text)
    for i in range(60):
        assert f"Insats nummer {i:02d}:" in flat
    # The table's head is repeated on the pages it continues on, and each page is numbered
    heads = [p.extract_text() for p in pdf.pages]
    assert sum("Ansvarig" in t for t in heads) >= 2
    for n, t in enumerate(heads, 1):
        assert f"Sida {n}" in t


def test_markup_in_the_plan_is_printed_as_written(client, portal):
    text = 'Mamma & Alva <b>tillsammans</b> "varje" vecka; <br/> <font size=40>x</font>'
    write_case(client, {}, _case(coordination=text))
    _, out = _read(client.get(ALVA, headers=portal | PDF))
    assert _flat(text) in _flat(out)


def test_with_no_approved_plan_the_pdf_says_so(client, portal):
    write_case(client, {}, _case(status="draft"))
    _, text = _read(client.get(ALVA, headers=portal | PDF))
    assert "Det finns ingen godkänd samordnad individuell plan att visa." in _flat(text)
    assert "SIP för Alva" not in text


@pytest.mark.parametrize(("utc", "swedish"), [
    (datetime(2026, 12, 31, 23, 30, tzinfo=timezone.utc), "2027-01-01 00:30"),  # UTC+1
    (datetime(2027, 6, 30, 22, 30, tzinfo=timezone.utc), "2027-07-01 00:30"),  # UTC+2
])
def test_the_pdf_says_when_it_was_printed_in_swedish_time(client, portal, monkeypatch, utc,
                                                          swedish):
    """The footer says when the document was made as a reader in Sweden counts it (every
    time the citizen is given is Swedish local time): in UTC it was the day before around
    midnight."""
    write_case(client, {}, f.demo_case())
    monkeypatch.setattr(pdf_module, "_clock", lambda: utc)
    _, text = _read(client.get(ALVA, headers=portal | PDF))
    assert f"Samordnad individuell plan, utskriven {swedish}" in _flat(text)
    assert "UTC" not in text


@pytest.mark.parametrize(("accept", "ctype"), [
    ("application/pdf", "application/pdf"),
    ("application/pdf, application/fhir+json", "application/pdf"),
    ("application/pdf;q=0.5, application/fhir+json", "application/fhir+json"),
    ("application/fhir+json;q=0.5, application/pdf", "application/pdf"),
    ("text/html, application/pdf", "text/html"),
    ("text/html;q=0.8, application/pdf", "application/pdf"),
    ("application/pdf;q=0", None),  # (nothing the hub speaks is acceptable: a 406)
    ("application/*", "application/fhir+json"),
])
def test_the_pdf_is_chosen_by_accept(client, portal, accept, ctype):
    write_case(client, {}, f.demo_case())
    r = client.get(ALVA, headers=portal | {"Accept": accept})
    assert r.status_code == (200 if ctype else 406), r.text
    if ctype:
        assert r.headers["content-type"].startswith(ctype), (accept, r.headers)


def test_a_format_parameter_asks_for_fhir_whatever_accept_says(client, portal):
    write_case(client, {}, f.demo_case())
    r = client.get(f"{ALVA}&_format=json", headers=portal | PDF)
    assert r.status_code == 200 and r.json()["resourceType"] == "Bundle"


def test_the_pdf_is_the_persons_own_and_its_reading_is_audited(client, portal, anonymous):
    write_case(client, {}, f.demo_case())
    audit = anonymous.app.state.audit

    def portal_reads() -> int:
        audit.flush()
        log = client.get("/fhir/AuditEvent?patient=alva&_count=100").json()
        return sum(any(a["who"].get("identifier", {}).get("value") == "SE2321000016-1177"
                       for a in e["resource"]["agent"]) for e in log.get("entry", []))
    before = portal_reads()
    r = client.get(ALVA, headers=portal | PDF)
    assert r.status_code == 200
    assert "no-store" in r.headers["cache-control"] and "Accept" in r.headers["vary"]
    assert r.headers["content-disposition"].startswith("inline")
    assert portal_reads() == before + 1


def test_an_organisation_gets_no_pdf_either(client, as_org, anonymous):
    write_case(client, {}, f.demo_case())
    r = client.get(ALVA, headers=as_org("SE2321000016-15CQ") | PDF)
    assert r.status_code == 403
    assert not r.content.startswith(b"%PDF")
    anonymous.headers.pop("Authorization", None)
    assert anonymous.get(ALVA, headers=PDF).status_code == 401


def test_text_longer_than_a_page_and_words_wider_than_a_column_still_print(client, portal):
    """A table row or a goal taller than a page (a pasted journal text, a URL without a
    space) splits over pages instead of failing the document."""
    case = _case(activities=activities(["https://example.se/" + "x" * 3000,
                                        "Stöd i vardagen. " * 900]),
                 coordination="Samordning. " * 2000)
    goal = next(r for r in case if r["resourceType"] == "Goal")
    goal["description"]["text"] = "Mål" + "m" * 8000
    write_case(client, {}, case)
    pdf, text = _read(client.get(ALVA, headers=portal | PDF))
    assert len(pdf.pages) > 5
    # (the pages' footers come between the parts of what runs over a page)
    text = re.sub(r"Samordnad individuell plan, utskriven \S+ \S+|Sida \d+", "", text)
    flat = "".join(text.split())
    assert "Mål" + "m" * 8000 in flat
    # A row split over pages has its cells' parts page by page (and the table's head again)
    assert flat.count("vardagen.") >= 900 and flat.count("x") >= 3000
    assert "Samordning." * 2000 in flat


def test_a_plan_of_hundreds_of_pages_prints_whole(client, portal):
    """Insatser with more text than a table is set with (ReportLab lays a table out again at
    each page it splits over) print as paragraphs, each with who is responsible; a line
    of text longer than a paragraph is set with prints whole, cut only at its spaces."""
    write_case(client, {}, _case(activities=activities(
                                     [f"Insats {i}: " + "stöd i vardagen " * 1500
                                      for i in range(3)]),
                                 coordination="Samordning varje vecka. " * 6000))
    pdf, text = _read(client.get(ALVA, headers=portal | PDF))
    assert len(pdf.pages) > 40
    text = re.sub(r"Samordnad individuell plan, utskriven \S+ \S+|Sida \d+", "", text)
    flat = " ".join(text.split())
    assert flat.count("Samordning varje vecka.") == 6000
    for i in range(3):
        assert f"Insats {i}: " + "stöd i vardagen " * 1499 + "stöd i vardagen" in flat
    assert flat.count("Ansvarig: ") == 3
