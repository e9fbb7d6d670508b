"""The one place that parses XML: a hardened lxml parser.

No DTDs, no entity resolution, no network, no XInclude, libxml2's default depth and size limits (no huge_tree); any DOCTYPE is refused outright so
that entity-expansion tricks never reach the tree builder.
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


def _has_doctype(data: bytes) -> bool:
    # A DOCTYPE must come before the root element; scanning the prolog is enough.
    head = data[:4096]
    return b"<!DOCTYPE" in head.upper() or b"<!ENTITY" in head.upper()


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


def tostring(root: etree._Element, *, declaration: bool = True) -> bytes:
    return etree.tostring(root, xml_declaration=declaration, encoding="UTF-8")
