"""PDF rendering of the citizen's view (ReportLab: the only import of it).

The national portal shows the person their plans as the HTML view does, or hands them a PDF
to keep or print (docs/interface.md: ``application/pdf`` on Accept). The PDF says what the
HTML says, from the same reading of the plans (``render.plan_views``): each plan on pages of
its own, its goals, its insatser as a table, who is responsible, how the insatser are
coordinated and when the plan is followed up. Its text is real text (selectable, read aloud
by a screen reader, found by search) in DejaVu Sans, embedded as a subset, so every name a
person in Sweden can have is printed: Swedish, the Sami languages' letters (Č, Đ, Ŋ, Š, Ŧ,
Ž), Finnish, Meänkieli and other European names. The document's language is Swedish and its
title is shown as the window's title.
"""

from __future__ import annotations

import re
import threading
from datetime import datetime, timezone
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import SUBSETN, TTFont
from reportlab.platypus import (KeepTogether, PageBreak, Paragraph, SimpleDocTemplate, Table,
                                TableStyle)

from ..fhir import sip
from .render import goal_line, plan_views

_FONTS = Path(__file__).resolve().parent.parent / "fonts"
REGULAR, BOLD = "DejaVuSans", "DejaVuSans-Bold"
TITLE = "Samordnad individuell plan"
NO_PLAN = "Det finns ingen godkänd samordnad individuell plan att visa."
_PARTY_HEADINGS = ("Insats", "Ansvarig", "Huvudman")
# What is printed for a character the font has no glyph for (a CJK name, most emoji): seen on
# the page and in its text, where ReportLab's own would be an empty box read as U+0000.
MISSING = "\ufffd"
_REGISTERING = threading.Lock()
# ReportLab reads a font file through one cursor of the face's (TTFontFile._pos), which making a
# document's subsets moves: two documents saved at once read each other's glyphs (a KeyError or,
# worse, a subset with the wrong glyphs). One document's fonts are embedded at a time.
_EMBEDDING = threading.Lock()


def _to_unicode(cmap: str) -> str:
    """A subset's ToUnicode CMap (ReportLab's) with a character beyond the BMP (an emoji
    DejaVu has) as its UTF-16 pair: ReportLab writes its five hex digits, an odd-length
    string that PDF readers reject (pypdf the whole map: none of the text reads back)."""
    def pair(m: re.Match[str]) -> str:
        utf16 = chr(int(m[2], 16)).encode("utf-16-be", "surrogatepass").hex().upper()
        return f"{m[1]} <{utf16}>"
    return re.sub(r"^(<[0-9A-F]{2}>) <([0-9A-F]{5,6})>$", pair, cmap, flags=re.M)


class _Font(TTFont):
    """DejaVu as ReportLab embeds it: its subsets' ToUnicode maps right for every character,
    and made for one document at a time (see _EMBEDDING)."""

    def addObjects(self, doc: Any) -> None:  # noqa: N802 (ReportLab's name)
        state = self.state.get(doc)
        with _EMBEDDING:
            super().addObjects(doc)  # (which forgets the document's subsets)
        for n, subset in enumerate(state.subsets if state is not None else []):
            name = b"".join((SUBSETN(n), b"+", self.face.name,
                             self.face.subfontNameX)).decode("pdfdoc")
            stream = doc.idToObject.get("toUnicodeCMap:" + name)
            if stream is not None and any(v > 0xFFFF for v in subset):
                stream.content = _to_unicode(stream.content)


@lru_cache(maxsize=2)
def _glyphs(font: str) -> frozenset[int]:
    return frozenset(pdfmetrics.getFont(font).face.charToGlyph)


def _printable(text: str, font: str) -> str:
    """``text`` with what ``font`` cannot print as MISSING (a no-break space is printed as a
    space, as ReportLab does), line ends as LF."""
    glyphs = _glyphs(font)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(c if ord(c) in glyphs or c in "\n\t\xa0" else MISSING for c in text)


@lru_cache(maxsize=1)
def _styles() -> dict[str, ParagraphStyle]:
    """The fonts registered (once per process) and the document's paragraph styles."""
    with _REGISTERING:  # (two first requests at once would each register their own fonts)
        return _make_styles()


def _make_styles() -> dict[str, ParagraphStyle]:
    for name, file in ((REGULAR, "DejaVuSans.ttf"), (BOLD, "DejaVuSans-Bold.ttf")):
        if name not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(_Font(name, str(_FONTS / file)))
    pdfmetrics.registerFontFamily(REGULAR, normal=REGULAR, bold=BOLD, italic=REGULAR,
                                  boldItalic=BOLD)
    body = ParagraphStyle("body", fontName=REGULAR, fontSize=10.5, leading=14,
                          spaceAfter=4)
    return {
        "body": body,
        "bullet": ParagraphStyle("bullet", parent=body, leftIndent=14, bulletIndent=3,
                                 bulletFontName=REGULAR),
        "cell": ParagraphStyle("cell", parent=body, fontSize=9.5, leading=12, spaceAfter=0),
        "head": ParagraphStyle("head", parent=body, fontName=BOLD, fontSize=9.5, leading=12,
                               spaceAfter=0),
        "h1": ParagraphStyle("h1", parent=body, fontName=BOLD, fontSize=17, leading=21,
                             spaceAfter=8),
        "h2": ParagraphStyle("h2", parent=body, fontName=BOLD, fontSize=12.5, leading=16,
                             spaceBefore=10, spaceAfter=4),
    }


# The most characters of one paragraph ReportLab lays out at once: it wraps what is left of a
# paragraph again at each page it splits over (a text of 200,000 characters took seconds per
# page), so a longer line is set as paragraphs of at most this many, cut at a space.
_PIECE = 1500


def _pieces(text: str) -> list[str]:
    out = []
    for line in text.split("\n"):
        while len(line) > _PIECE:
            cut = line.rfind(" ", _PIECE // 2, _PIECE) + 1 or _PIECE
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    return out


# The most text the insatser are set as a table with: ReportLab lays out again what is left of
# a table (every cell) at each page it splits over, so a longer text is set as paragraphs.
# Counted in characters and in lines (each line of a cell is a paragraph of its own): 18 KB of
# "x\n" made one cell of 9,000 paragraphs, which took 30 s to lay out (superlinear).
_TABLE_TEXT = 20_000
_TABLE_LINES = 300


def _as_table(activities: list[dict[str, Any]]) -> bool:
    """Whether the insatser are few and short enough to be set as a table."""
    cells = [a[k] for a in activities for k in ("description", "who", "party")]
    return sum(len(c) for c in cells) <= _TABLE_TEXT and \
        sum(c.count("\n") + c.count("\r") + 1 for c in cells) <= _TABLE_LINES


@lru_cache(maxsize=16)
def _tight(style: ParagraphStyle) -> ParagraphStyle:
    """``style`` with no space after: the pieces of one paragraph but its last."""
    return ParagraphStyle(f"{style.name}-tight", parent=style, spaceAfter=0)


def _p(text: Any, style: ParagraphStyle, bullet: str | None = None) -> list[Paragraph]:
    """Plain text as paragraphs (ReportLab reads its own markup in a paragraph's text: the
    plan's text is escaped), a paragraph a line (or piece of a long one), what the font lacks
    shown as MISSING; ``bullet`` before the first."""
    pieces = _pieces(_printable(str(text or ""), style.fontName))
    last = len(pieces) - 1
    return [Paragraph(escape(piece) or ("\xa0" if last else ""),
                      style if i == last else _tight(style),
                      bulletText=bullet if i == 0 else None)
            for i, piece in enumerate(pieces)]


def _plan(plan: dict[str, Any], s: dict[str, ParagraphStyle]) -> list[Any]:
    out: list[Any] = _p(plan["title"], s["h1"])
    byline = f"Planen är skriven av {plan['author']}." if plan["author"] else ""
    if plan["state"]:
        byline = f"{byline} {plan['state']}".strip()
    if byline:
        out += _p(byline, s["body"])
    out += [*_p("Dina behov i dag", s["h2"]), *_p(plan["needs"], s["body"]),
            *_p("Mål", s["h2"])]
    for g in plan["goals"]:  # (bulleted paragraphs, which split over pages however long)
        out += _p(goal_line(g), s["bullet"], "•")
    out += _p("Insatser", s["h2"])
    if not _as_table(plan["activities"]):
        for a in plan["activities"]:  # (as paragraphs: see _TABLE_TEXT)
            out += _p(a["description"], s["bullet"], "•")
            out += _p(f"Ansvarig: {a['who']}" + (f" ({a['party']})" if a["party"] else ""),
                      s["bullet"])
            if a["state"]:
                out += _p(f"Status: {a['state']}", s["bullet"])
    elif plan["activities"]:
        states = plan["insats_states"]  # (a column of its own only when some insats has one)
        heads = _PARTY_HEADINGS + (("Status",) if states else ())
        keys = ("description", "who", "party") + (("state",) if states else ())
        rows = [[_p(h, s["head"]) for h in heads]] + [
            [_p(a[k], s["cell"]) for k in keys] for a in plan["activities"]]
        widths = [70 * mm, 48 * mm, 28 * mm, 24 * mm] if states else [88 * mm, 52 * mm, 30 * mm]
        table = Table(rows, colWidths=widths, repeatRows=1, splitInRow=1)
        table.setStyle(TableStyle([
            ("FONTNAME", (0, 0), (-1, -1), REGULAR), ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.black),
            ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.grey),
            ("TOPPADDING", (0, 0), (-1, -1), 3), ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
        ]))
        out.append(table)
    out.append(KeepTogether([
        *_p("Huvudansvar", s["h2"]),
        *_p(f"{plan['principal']} har det övergripande ansvaret för planen."
            if plan["principal"] else "", s["body"])]))
    out.append(KeepTogether([*_p("Så samordnas insatserna", s["h2"]),
                             *_p(plan["coordination"], s["body"])]))
    out.append(KeepTogether([
        *_p("Uppföljning", s["h2"]),
        *_p(f"Planen följs upp {plan['follow_up']}." if plan["follow_up"] else "",
            s["body"])]))
    return out


def _clock() -> datetime:
    """The time the footer says the document was made (a function so that a test can fix it:
    a GET and a HEAD either side of a minute's turn describe two documents)."""
    return datetime.now(timezone.utc)


def render_citizen_pdf(bundle: dict[str, Any], *, now: datetime | None = None) -> bytes:
    """The citizen view Bundle as a PDF (A4): each plan from a new page, a page footer with
    the page's number and when the document was made, in Swedish local time as every time
    the citizen is given (in UTC it was the day before around midnight)."""
    s = _styles()
    made = (now or _clock()).astimezone(sip.LOCAL).strftime("%Y-%m-%d %H:%M")
    story: list[Any] = []
    for i, plan in enumerate(plan_views(bundle)):
        if i:
            story.append(PageBreak())
        story += _plan(plan, s)
    if not story:
        story += _p(NO_PLAN, s["body"])

    def footer(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(REGULAR, 8)
        canvas.drawString(doc.leftMargin, 12 * mm, f"{TITLE}, utskriven {made}")
        canvas.drawRightString(A4[0] - doc.rightMargin, 12 * mm, f"Sida {doc.page}")
        canvas.restoreState()

    out = BytesIO()
    doc = SimpleDocTemplate(out, pagesize=A4, leftMargin=20 * mm, rightMargin=20 * mm,
                            topMargin=20 * mm, bottomMargin=22 * mm, title=TITLE,
                            subject="Din samordnade individuella plan (SIP)",
                            author="sip_hub", creator="sip_hub", producer="sip_hub",
                            lang="sv-SE",
                            displayDocTitle=True, initialFontName=REGULAR)
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return out.getvalue()
