"""The one place that parses XML: a hardened lxml parser.

No DTDs, no entity resolution, no network, no XInclude, libxml2's default depth and size
limits (no huge_tree); any DOCTYPE is refused outright, found by reading the prolog as the
parser does before the document is parsed, so that entity-expansion tricks never reach the
tree builder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lxml import etree

from .errors import BadRequest

def hardened_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True)


class _Doctype(Exception):
    pass


class _Root(Exception):
    pass


class _Prolog:
    """A parser target that reads up to the root element and stops there: at a DOCTYPE
    (``_Doctype``) or at the root (``_Root``). libxml2 calls ``doctype`` as the declaration
    starts, before its internal subset declares any entity and so before any is expanded;
    whatever comes before it (a comment of any length, another encoding) is read as the
    parser reads it, where a scan of the first bytes for the text missed a DOCTYPE after a
    long comment, and libxml2 expanded its entities until its own limit."""

    def doctype(self, *_: object) -> None:
        raise _Doctype

    def start(self, *_: object) -> None:
        raise _Root

    def close(self) -> None:
        return None


def _has_doctype(data: bytes) -> bool:
    """Whether the document's prolog has a DOCTYPE (what is malformed is ``parse``'s to
    say, and says: it is parsed again)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             dtd_validation=False, huge_tree=False, target=_Prolog())
    try:
        etree.fromstring(data, parser=parser)
    except _Doctype:
        return True
    except (_Root, etree.LxmlError):
        pass
    return False


def parse(data: bytes | str) -> etree._Element:
    """Parse untrusted XML into an element tree or raise BadRequest with the reason."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if _has_doctype(raw):
        raise BadRequest("XML with a DOCTYPE is not accepted")
    try:
        root = etree.fromstring(raw, parser=hardened_parser())
    except etree.XMLSyntaxError as exc:
        raise BadRequest(f"Malformed XML: {exc}") from exc
    if root is None:
        raise BadRequest("Empty XML document")
    if root.getroottree().docinfo.doctype:
        raise BadRequest("XML with a DOCTYPE is not accepted")
    return root


@contextmanager
def hardened_default() -> Iterator[None]:
    """The hardened parser as lxml's default, in this thread, while the block runs: for a
    library that parses without taking a parser (fhir_core's XML writer parses each narrative
    div with lxml's default, which would expand entities a stored div declares)."""
    etree.set_default_parser(hardened_parser())
    try:
        yield
    finally:
        etree.set_default_parser()  # lxml's own default again


def unprefixed(root: etree._Element) -> etree._Element:
    """``root`` with every element in its namespace as the default one, unprefixed
    (``<f:Patient xmlns:f=...>`` as ``<Patient xmlns=...>``): the same document, for readers
    that look at local names under the default namespace only. ``root`` itself when no
    element has a prefix."""
    if not any(el.prefix is not None for el in root.iter(etree.Element)):
        return root

    def fresh(el: etree._Element, parent: etree._Element | None) -> etree._Element:
        ns = etree.QName(el).namespace
        if parent is not None and etree.QName(parent).namespace == ns:
            new = etree.SubElement(parent, el.tag, dict(el.attrib))
        else:
            new = etree.Element(el.tag, dict(el.attrib), nsmap={None: ns} if ns else None)
            if parent is not None:
                parent.append(new)
        new.text, new.tail = el.text, el.tail
        return new

    out = fresh(root, None)
    stack = [(root, out)]
    while stack:
        old, new = stack.pop()
        stack.extend((child, fresh(child, new)) for child in old.iterchildren(etree.Element))
    return out


def tostring(root: etree._Element, *, declaration: bool = True) -> bytes:
    return etree.tostring(root, xml_declaration=declaration, encoding="UTF-8")
