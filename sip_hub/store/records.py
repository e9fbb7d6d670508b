"""A stored resource version as the rest of the hub sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..fhir.dates import format_instant, from_us
from .schema import resource_history


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

    @property
    def last_updated_instant(self) -> str:
        return format_instant(from_us(self.last_updated))

    def json(self) -> dict[str, Any]:
        assert self.content is not None
        return orjson.loads(self.content)


_H = resource_history.c
COLUMNS = (_H.res_type, _H.res_id, _H.version_id, _H.last_updated, _H.method, _H.content)


def row_to_stored(row: Any, deleted: bool | None = None) -> Stored:
    return Stored(row.res_type, row.res_id, row.version_id, row.last_updated,
                  row.content is None if deleted is None else deleted, row.content, row.method,
                  getattr(row, "owner_org", None))
