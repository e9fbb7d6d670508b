"""Seeded mutations of valid requests: one element replaced by an odd value of another type,
or removed, for the tests that bad input gets a clear 4xx or a fatal-error, never a 5xx."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from typing import Any

ODD: list[Any] = [None, 0, -1, 1.5, True, "", "x" * 300, [], {}, [None], {"a": 1},
                  "9999-12-31", "0001-01-01T00:00:00+14:00", "Patient/alva", "urn:uuid:x",
                  "#x", "\u00e9"]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def mutated(doc: Any, rnd: random.Random) -> tuple[Any, tuple[Any, ...]]:
    """A copy of ``doc`` with one element (at the path returned) changed or removed."""
    out = copy.deepcopy(doc)
    path = rnd.choice(list(_paths(out)))
    parent = out
    for k in path[:-1]:
        parent = parent[k]
    if rnd.random() < 0.25:
        parent.pop(path[-1])
    else:
        parent[path[-1]] = copy.deepcopy(rnd.choice(ODD))
    return out, path
