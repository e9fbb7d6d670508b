"""A stored resource version as the rest of the hub sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..fhir import exact
from ..fhir.dates import format_instant, from_us
from ..fhir.indexing import IndexRows, extract
from .schema import resource, resource_history


@dataclass(frozen=True, slots=True)
class Stored:
    type: str
    id: str
    version_id: int
    last_updated: int  # UTC microseconds
    deleted: bool
    content: bytes | None
    method: str = ""
    owner: str | None = None  # HSA-id of the organisation that created it
    withheld: bool = False  # kept from everyone but its owner (``Access.withholds``)
    _doc: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    _rows: IndexRows | None = field(default=None, compare=False, repr=False)

    @property
    def last_updated_instant(self) -> str:
        return format_instant(from_us(self.last_updated))

    def json(self) -> dict[str, Any]:
        """The content, parsed: a new dict of the caller's own, to change at will."""
        assert self.content is not None
        return exact.loads(self.content)

    def index_rows(self) -> IndexRows:
        """The search index's rows for this version (a tombstone has none), derived from its
        content once: a write that replaces the version compares them with its own, and a
        preparation ahead of the write lock derives them there (with ``doc``)."""
        rows = self._rows
        if rows is None:
            rows = IndexRows() if self.deleted or self.content is None else extract(self.doc())
            object.__setattr__(self, "_rows", rows)
        return rows

    def doc(self) -> dict[str, Any]:
        """The content, parsed once and shared: only to read (a write path reads one version
        in its access rules, its notifications and its audit record)."""
        doc = self._doc
        if doc is None:
            doc = self.json()
            object.__setattr__(self, "_doc", doc)
        return doc


_H = resource_history.c
_R = resource.c
COLUMNS = (_H.res_type, _H.res_id, _H.version_id, _H.last_updated, _H.method, _H.content)
# A current version: the version's columns, then whether it is a tombstone, its owner and
# whether it is withheld.
CURRENT_COLUMNS = (*COLUMNS, _R.deleted, _R.owner_org, _R.withheld)


def row_to_stored(row: Any, deleted: bool | None = None) -> Stored:
    return Stored(row.res_type, row.res_id, row.version_id, row.last_updated,
                  row.content is None if deleted is None else deleted, row.content, row.method,
                  getattr(row, "owner_org", None), bool(getattr(row, "withheld", False)))


def current_to_stored(row: tuple[Any, ...]) -> Stored:
    """A row of ``CURRENT_COLUMNS``, by position (a driver's tuple or a SQLAlchemy row)."""
    rtype, rid, version, updated, method, content, deleted, owner, withheld = row
    return Stored(rtype, rid, version, updated, bool(deleted),
                  None if content is None else bytes(content), method, owner, bool(withheld))
