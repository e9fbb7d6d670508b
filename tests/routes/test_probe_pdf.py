"""Probing the citizen view's PDF (``Accept: application/pdf``) and /metrics' token through the
real app: any text a FHIR string allows, ReportLab's markup in the plan's text, many plans,
contained links, eight PDFs at once, Accept's edge cases, HEAD, the PDF's metadata and the
refusals; /metrics' Authorization header in odd forms. The PDFs are read back with pypdf."""

from __future__ import annotations

import io
import re
import sys
import threading
import time
import unicodedata
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader

import sip_factory as f
from sip_hub import identifiers
from sip_hub.routes import pdf as pdf_module
from sip_hub.routes.pdf import BOLD, REGULAR, _glyphs, _styles, render_citizen_pdf
from sip_hub.settings import Settings
from sip_process import write_case
from test_citizen_pdf import activities

VIEW = "/fhir/CarePlan/$citizen-view"
ALVA = f"{VIEW}?patient={identifiers.PERSONNUMMER}|{f.DEMO_PNR}"
PDF = {"Accept": "application/pdf"}
FOOTER = re.compile(r"Samordnad individuell plan, utskriven \S+ \S+|Sida \d+")
END = "SLUTMARKÖR"


def _case(*, coordination: str | None = None, title: str | None = None) -> list[dict]:
    case = f.demo_case()
    plan = next(r for r in case if r["resourceType"] == "CarePlan")
    if coordination is not None:
        ext = next(e for e in plan["extension"] if e["url"].endswith("coordination"))
        ext["valueMarkdown"] = coordination
    if title is not None:
        plan["title"] = title
    return case


def _read(r) -> tuple[PdfReader, str]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf", r.headers
    assert r.content.startswith(b"%PDF-")
    pdf = PdfReader(io.BytesIO(r.content), strict=True)
    return pdf, "\n".join(page.extract_text() for page in pdf.pages)


def _bare(text: str) -> str:
    return "".join(FOOTER.sub("", text).split())


def _printed(text: str, font: str = REGULAR) -> str:
    """What the PDF is expected to say of ``text``: U+FFFD for what the font lacks."""
    _styles()
    glyphs = _glyphs(font)
    return "".join(c if ord(c) in glyphs or c.isspace() else "\ufffd" for c in text)


# -- any text a FHIR string allows ---------------------------------------------------------------

def _fhir_char(c: str) -> bool:
    # (the hub refuses control characters but tab, CR and LF, and non-characters: 422)
    return (c in "\t\r\n" or ord(c) >= 0x20) and not 0x7F <= ord(c) <= 0x9F and \
        unicodedata.category(c) != "Cs" and (ord(c) & 0xFFFE) != 0xFFFE and \
        not 0xFDD0 <= ord(c) <= 0xFDEF


ANY = st.characters(codec="utf-8").filter(_fhir_char)
# Text pypdf reads back as written: left to right, no combining marks or invisible ones
PLAIN = st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")).filter(
    lambda c: _fhir_char(c) and unicodedata.bidirectional(c) not in ("R", "AL", "NSM")
    and not unicodedata.combining(c) and unicodedata.category(c) != "Lm"
    and c.isprintable() and unicodedata.normalize("NFKC", c) == c)
SPECIAL = st.sampled_from(["😀", "𝔘", "漢字", "🧑\u200d🤝\u200d🧑", "مرحبا", "שלום", "e\u0301",
                           "\u200b", "\u200d", "\t", "\r", "\r\n", "\n", "<b>", "&amp;", "<br/>",
                           '<img src="/etc/passwd"/>', "<font size=40>", "<para>", "]]>",
                           "&#x41;", "\u00a0", "x" * 300, "\ufffd"])
HYPO = settings(max_examples=15, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@HYPO
@given(st.lists(st.one_of(st.text(ANY, min_size=1, max_size=40), SPECIAL), min_size=1,
                max_size=8).map("".join).filter(lambda s: s.strip()))
def test_any_fhir_text_prints_and_nothing_after_it_is_lost(client, portal, text):
    write_case(client, {}, _case(coordination=f"{text} {END}", title=f"{text} {END}"))
    pdf, out = _read(client.get(ALVA, headers=portal | PDF))
    assert out.count(END) == 2, (text, out)  # (after the title and the coordination)
    assert "\x00" not in out  # (ReportLab's empty box for a missing glyph reads as U+0000)
    assert "Uppföljning" in out


@HYPO
@given(st.lists(st.one_of(st.text(PLAIN, min_size=1, max_size=40),
                          st.sampled_from(["😀", "𝔘", "漢字", "<b>", "&amp;", "<br/>",
                                           '<img src="x.png"/>', "<font size=40>x</font>",
                                           "<para>", "\t", "\r", "\r\n", "\n", "☃"])),
                min_size=1, max_size=6).map("".join).filter(lambda s: s.strip()))
def test_plain_text_reads_back_as_written_with_what_the_font_lacks_shown(client, portal,
                                                                          text):
    write_case(client, {}, _case(coordination=text, title=text))
    _, out = _read(client.get(ALVA, headers=portal | PDF))
    bare = _bare(out)
    assert _bare(_printed(text, BOLD)) + "Planenärskriven" in bare, (text, out)
    assert "Såsamordnasinsatserna" + _bare(_printed(text)) + "Uppföljning" in bare, \
        (text, out)


def test_emoji_the_font_has_read_back_and_the_rest_of_the_text_too(client, portal):
    """DejaVu draws 😀 and ☃; ReportLab wrote the 😀 in the text layer's map as five hex
    digits, which a PDF reader rejects: the emoji read back as nothing (a screen reader, a
    search, a copy lost it)."""
    write_case(client, {}, _case(coordination="Glad 😀 snögubbe ☃ slut"))
    _, out = _read(client.get(ALVA, headers=portal | PDF))
    assert "Glad 😀 snögubbe ☃ slut" in " ".join(out.split())


def test_what_the_font_cannot_print_is_shown_as_a_replacement_not_an_empty_box(
        client, portal):
    write_case(client, {}, _case(coordination="Namn: 漢字 𝔘 🧑 slut",
                                 title="Plan 漢 för 𝔘"))
    _, out = _read(client.get(ALVA, headers=portal | PDF))
    flat = " ".join(out.split())
    assert "Namn: \ufffd\ufffd \ufffd \ufffd slut" in flat
    assert "Plan \ufffd för \ufffd" in flat
    assert "\x00" not in out


def test_a_lone_carriage_return_breaks_the_line_as_lf_does(client, portal):
    write_case(client, {}, _case(coordination="rad ett\rrad två\r\nrad tre\nrad fyra"))
    _, out = _read(client.get(ALVA, headers=portal | PDF))
    for line in ("rad ett", "rad två", "rad tre", "rad fyra"):
        assert line in out.splitlines(), out


def test_a_goals_line_breaks_are_kept(client, portal):
    case = _case()
    goal = next(r for r in case if r["resourceType"] == "Goal")
    goal["description"]["text"] = "Första raden\nAndra <b>raden</b>"
    write_case(client, {}, case)
    _, out = _read(client.get(ALVA, headers=portal | PDF))
    assert "Andra <b>raden</b> (Sysselsättning)" in out.splitlines(), out


@pytest.mark.parametrize("markup", [
    '<img src="/etc/passwd" width="100" height="100"/>',
    '<img src="http://127.0.0.1:9/x.png"/>',
    '<a href="file:///etc/passwd">länk</a>',
    '<font name="Courier" size="40">stor</font>',
    '<para autoLeading="max"><b>fet</b></para>',
    "&amp;lt; &#60; &nbsp; &unknown;",
    "<![CDATA[x]]> <!-- kommentar --> <?xml version='1.0'?>",
])
def test_reportlab_markup_in_the_plan_is_printed_literally_and_never_fetched(
        client, portal, markup, ):
    write_case(client, {}, _case(coordination=f"före {markup} efter", title=markup))
    r = client.get(ALVA, headers=portal | PDF)
    pdf, out = _read(r)
    assert f"före {markup} efter" in " ".join(out.split())
    for page in pdf.pages:
        assert "/XObject" not in page["/Resources"]  # (no image was put in)
    assert b"/Annots" not in r.content and b"/URI" not in r.content


# -- many plans, contained links --------------------------------------------------------------

def test_thirty_plans_each_on_its_own_pages_completed_ones_said_so(client, portal):
    case = f.demo_case()
    plans = []
    for i in range(30):
        plan = f.sip_careplan(id=f"plan-{i:02d}", status="completed" if i % 3 == 0
                              else "active")
        plan["title"] = f"Plan nummer {i:02d}"
        plans.append(plan)
    write_case(client, {}, case + plans)
    t = time.perf_counter()
    pdf, _ = _read(client.get(ALVA, headers=portal | PDF))
    assert time.perf_counter() - t < 20
    pages = [p.extract_text() for p in pdf.pages]
    starts = {}
    for n, page in enumerate(pages):
        for m in re.finditer(r"Plan nummer (\d\d)", page):
            starts.setdefault(int(m[1]), n)
    assert sorted(starts) == list(range(30))
    assert len(set(starts.values())) == 30  # (each plan from a page of its own)
    parts = re.findall(r"Plan nummer (\d\d)(.*?)(?=Plan nummer \d\d|\Z)",
                       "\n".join(pages), re.S)
    assert len(parts) == 30
    for i, text in parts:
        assert ("Planen är avslutad." in text) is (int(i) % 3 == 0), (i, text)


def test_contained_goals_and_organisations_are_printed(client, portal):
    case = _case()
    plan = next(r for r in case if r["resourceType"] == "CarePlan")
    plan["contained"] = [
        {"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active",
         "description": {"text": "Ett inneslutet mål <b>"},
         "subject": {"reference": f.PATIENT}},
        {"resourceType": "Organization", "id": "o1", "name": "Inneslutna föreningen & co"},
    ]
    plan["goal"] = [{"reference": "#g1"}]
    plan["activity"][0]["detail"]["performer"] = [{"reference": "#o1"}]
    write_case(client, {}, case)
    _, out = _read(client.get(ALVA, headers=portal | PDF))
    flat = " ".join(out.split())
    assert "Ett inneslutet mål <b>" in flat
    assert "Inneslutna föreningen & co" in flat


def test_a_performer_named_by_identifier_and_display_is_printed(client, portal):
    case = _case()
    plan = next(r for r in case if r["resourceType"] == "CarePlan")
    plan["activity"][0]["detail"]["performer"] = [{
        "identifier": {"system": f.HSA_ID, "value": "SE2321000016-9ZZZ"},
        "display": "Bara ett namn <i>&amp;"}]
    write_case(client, {}, case)
    _, out = _read(client.get(ALVA, headers=portal | PDF))
    assert "Bara ett namn <i>&amp;" in " ".join(out.split())


# -- eight at once ------------------------------------------------------------------------------

def test_sixteen_pdfs_at_once_each_valid_and_whole(client, portal):
    """Sixteen portal requests at once (as the first ones of a process: the fonts registered
    while others render): each PDF whole, with each of the person's eight plans."""
    base = f.demo_case()
    plans = [dict(f.sip_careplan(id=f"samtidig-{i}"), title=f"Samtidig plan {i} ÅÄÖ")
             for i in range(8)]
    write_case(client, {}, base + plans)
    _styles.cache_clear()  # (as in a fresh process: the fonts not yet registered here)
    results: list = [None] * 16
    start = threading.Barrier(16)

    def ask(n: int) -> None:
        start.wait()
        results[n] = client.get(ALVA, headers=portal | PDF)
    threads = [threading.Thread(target=ask, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    texts = set()
    for r in results:
        _, out = _read(r)
        for i in range(8):
            assert f"Samtidig plan {i} ÅÄÖ" in out
        texts.add(_bare(out))
    assert len(texts) <= 2  # (the same document, but for the minute in the footer)


# Letters beyond ASCII (a PDF's first subset holds all of ASCII): each plan's own, below
LETTERS = "ÅÄÖåäöČĐŊŠŦŽčđŋšŧžØøŁł" + "".join(map(chr, range(0x391, 0x3A2))) + \
    "".join(map(chr, range(0x410, 0x450)))


def _embedded(pdf: bytes) -> dict[str, bytes]:
    """The font programs a PDF embeds, by their subset names."""
    out = {}
    for page in PdfReader(io.BytesIO(pdf), strict=True).pages:
        for font in page["/Resources"]["/Font"].values():
            font = font.get_object()
            out[font["/BaseFont"]] = font["/FontDescriptor"]["/FontFile2"].get_data()
    return out


def test_pdfs_made_at_once_embed_the_same_glyphs_as_each_made_alone():
    """Eight PDFs, each with letters of its own, made at once over and over with the
    interpreter switching threads as often as it can: each embeds exactly the font subsets it
    has when made alone, and says what its plan says (ReportLab reads a font file through one
    shared cursor: two documents embedding at once read each other's glyphs)."""
    made = datetime(2026, 12, 6, 12, tzinfo=timezone.utc)

    def bundle(i: int) -> dict:
        title = "".join(LETTERS[(i * 11 + k) % len(LETTERS)] for k in range(40))
        plan = {"resourceType": "CarePlan", "id": f"p{i}", "status": "active",
                "intent": "plan", "title": f"{title} plan {i}",
                "subject": {"reference": "Patient/x"}}
        return {"resourceType": "Bundle", "type": "searchset",
                "entry": [{"resource": plan, "search": {"mode": "match"}}]}
    bundles = [bundle(i) for i in range(8)]
    alone = [_embedded(render_citizen_pdf(b, now=made)) for b in bundles]
    assert len({tuple(sorted(fonts.values())) for fonts in alone}) == 8
    results: list[list] = [[] for _ in bundles]

    def make(i: int) -> None:
        for _ in range(6):
            results[i].append(render_citizen_pdf(bundles[i], now=made))
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(switching)
    for i, pdfs in enumerate(results):
        assert len(pdfs) == 6  # (a thread that failed made fewer)
        for pdf in pdfs:
            assert _embedded(pdf) == alone[i]
            text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
            assert "".join(bundles[i]["entry"][0]["resource"]["title"].split()) in \
                "".join(text.split())


# -- Accept, HEAD, metadata, refusals ----------------------------------------------------------

@pytest.mark.parametrize(("accept", "ctype"), [
    ("APPLICATION/PDF", "application/pdf"),
    ("Application/Pdf; Q=1", "application/pdf"),
    ("application/pdf; charset=utf-8", "application/pdf"),
    ("application/pdf;q=0, */*", "application/fhir+json"),
    ("application/pdf;q=0.5, */*", "application/fhir+json"),
    ("application/pdf;q=0.5, application/*", "application/fhir+json"),
    ("application/pdf, */*;q=0.5", "application/pdf"),
    ("application/pdf;q=0.5, application/fhir+json;q=0.1, */*", "application/pdf"),
    ("application/pdf;q=0.5, application/*;q=0.4, */*", "application/pdf"),
    ("application/pdf;q=1.5", None),
    ("application/pdf;q=abc", None),
    ("application/pdf;q=0.000", None),
    ("application/pdf;q=0.001", "application/pdf"),
    ("text/html;q=0, application/pdf;q=0.2", "application/pdf"),
    (",,application/pdf,,", "application/pdf"),
])
def test_accept_edge_cases(client, portal, accept, ctype):
    write_case(client, {}, f.demo_case())
    r = client.get(ALVA, headers=portal | {"Accept": accept})
    assert r.status_code == (200 if ctype else 406), (accept, r.text[:200])
    if ctype:
        assert r.headers["content-type"].startswith(ctype), (accept, r.headers)
    else:
        assert r.json()["resourceType"] == "OperationOutcome"


def test_head_answers_the_pdfs_headers_without_a_body(client, portal, monkeypatch):
    # One clock for both: the footer's minute would otherwise turn between them now and then
    # (the PDF made a minute later is another document, its length may differ by a byte).
    monkeypatch.setattr(pdf_module, "_clock", lambda: datetime(2026, 12, 7, 11, 59, 59,
                                                               tzinfo=timezone.utc))
    write_case(client, {}, f.demo_case())
    get = client.get(ALVA, headers=portal | PDF)
    head = client.head(ALVA, headers=portal | PDF)
    assert head.status_code == 200 and head.content == b""
    for name in ("content-type", "content-length", "content-disposition", "cache-control",
                 "vary"):
        assert head.headers[name] == get.headers[name], name
    assert int(get.headers["content-length"]) == len(get.content)


def test_the_metadata_tells_nothing_of_the_person_the_server_or_its_software(client, portal):
    write_case(client, {}, f.demo_case())
    r = client.get(ALVA, headers=portal | PDF)
    pdf, _ = _read(r)
    meta = {k: str(v) for k, v in pdf.metadata.items()}
    assert meta["/Producer"] == "sip_hub" and meta["/Creator"] == "sip_hub", meta
    assert not any(f.DEMO_PNR in v or "Alva" in v for v in meta.values()), meta
    raw = r.content
    assert f.DEMO_PNR.encode() not in raw
    for leak in (b"/work", b"/home", b"/tmp", b"site-packages", b"fonts/", b".ttf",
                 b"ReportLab PDF Library"):
        assert leak not in raw, leak


@pytest.mark.parametrize("case", ["no-patient", "bad-patient", "unknown-param", "org",
                                  "anonymous", "none-acceptable"])
def test_refusals_on_a_pdf_accept_are_operation_outcomes_in_json(client, portal, as_org,
                                                                 anonymous, case):
    write_case(client, {}, f.demo_case())
    headers = portal | PDF
    url = {"no-patient": VIEW, "bad-patient": f"{VIEW}?patient=x|y",
           "unknown-param": f"{ALVA}&_summary=count"}.get(case, ALVA)
    if case == "org":
        headers = as_org("SE2321000016-15CQ") | PDF
    if case == "none-acceptable":
        headers = portal | {"Accept": "application/pdf;q=0"}
    if case == "anonymous":
        anonymous.headers.pop("Authorization", None)
        headers = PDF
    r = anonymous.get(url, headers=headers)
    expected = {"no-patient": 400, "bad-patient": 400, "unknown-param": 400, "org": 403,
                "anonymous": 401, "none-acceptable": 406}[case]
    assert r.status_code == expected, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "no-store" in r.headers["cache-control"] or case == "anonymous"


def test_a_big_plan_stays_small_and_quick(client, portal):
    """300 insatser of 150 words and a 5000-word coordination: measured 91 pages, ~130 kB,
    ~0.6 s."""
    case = _case(coordination="Samordning " * 5000)
    next(r for r in case if r["resourceType"] == "CarePlan")["activity"] = activities(
        [f"Insats {i} " + "ord " * 150 for i in range(300)])
    write_case(client, {}, case)
    t = time.perf_counter()
    r = client.get(ALVA, headers=portal | PDF)
    seconds = time.perf_counter() - t
    pdf, out = _read(r)
    assert len(r.content) < 1_000_000 and seconds < 15, (len(r.content), seconds)
    assert "Insats 299" in out and len(pdf.pages) > 50


# -- /metrics' token -----------------------------------------------------------------------------

TOKEN = "scraper-0123456789abcdef0123456789abcdef"


@pytest.fixture
def guarded(store, tmp_path):
    from fastapi.testclient import TestClient

    from sip_hub.app import create_app
    app = create_app(Settings(env="test", data_dir=tmp_path, auto_migrate=False,
                              base_url="http://hub.test", metrics_token=TOKEN), store=store)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(("authorization", "ok"), [
    (f"Bearer {TOKEN}", True),
    (f"bearer {TOKEN}", True),
    (f"BEARER {TOKEN}", True),
    (f"Bearer   {TOKEN}  ", True),
    (f"  Bearer {TOKEN}", True),
    (f"Bearer\t{TOKEN}", False),
    (f"Bearer {TOKEN}\t", True),
    (f"Bearer {TOKEN} extra", False),
    ("Bearer " + "A" * 20000, False),
    ("Bearer", False),
    ("", False),
    (b"Bearer \xff\xfe\x80" + TOKEN.encode(), False),
    (("Bearer " + TOKEN.replace("0", "\u00d6")).encode("utf-8"), False),
    (b"Bearer " + TOKEN.encode() + b"\xc3\xa5", False),
])
def test_odd_authorization_headers_never_fail_the_scrape(guarded, authorization, ok):
    r = guarded.get("/metrics", headers={"Authorization": authorization})
    assert r.status_code == (200 if ok else 401), r.text[:300]
    if not ok:
        assert r.json()["resourceType"] == "OperationOutcome"
        assert TOKEN not in r.text


@pytest.mark.parametrize("token", [f"{TOKEN}\n", f"{TOKEN}\r\n", f" {TOKEN}", f"\t{TOKEN} "])
def test_a_token_with_whitespace_around_it_is_taken_without_it(monkeypatch, tmp_path, token):
    """As Prometheus takes its credentials_file (a secret file's last line break is not part
    of the token); refused, the hub did not start."""
    monkeypatch.setenv("SIP_HUB_METRICS_TOKEN", token)
    secret = Settings(data_dir=tmp_path).metrics_token
    assert secret is not None and secret.get_secret_value() == TOKEN
