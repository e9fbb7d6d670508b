"""FHIR JSON with its decimals kept as written, and with no key given twice.

FHIR's decimal keeps its precision as written (datatypes.html#decimal: 1.50 is not 1.5), where
orjson reads every number with a fraction or an exponent as a float. A body that orjson writes
back as it came (but for whitespace) is orjson's alone: its numbers are as written, its keys
each once. Any other is read again with Python's json, each number with a fraction or an
exponent (and each whole number wider than orjson's 64 bits) an ``Exact``: a Decimal that
writes as it was written, in JSON (``dumps``: an orjson Fragment) and in XML (its ``str``).
Everything that writes a body writes it with ``dumps``; what reads one stored, with ``loads``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from ..errors import BadRequest


class Exact(Decimal):
    """A FHIR decimal as written (``text``), which a float would not keep."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> Exact:
        try:
            self = super().__new__(cls, text)
        except ArithmeticError:  # (decimal.InvalidOperation: an exponent past 10**18)
            raise ValueError(f"the number {text[:40]} is out of range (its exponent is beyond "
                             "what a decimal holds)") from None
        self.text = text
        return self

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Exact({self.text!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Exact, (self.text,))

    def __copy__(self) -> Exact:
        return self

    def __deepcopy__(self, memo: Any) -> Exact:
        return self


# orjson's integers (it writes no wider one)
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


def _int(text: str) -> Any:
    """A whole number: an int, or an ``Exact`` for one orjson would not write as written (wider
    than 64 bits, or -0, which FHIR's integer and decimal forms allow and an int writes 0)."""
    value = int(text)
    return value if _INT_MIN <= value <= _INT_MAX and text != "-0" else Exact(text)


def _constant(text: str) -> Any:  # (orjson refused NaN and Infinity before)
    raise ValueError(f"{text} is not a JSON number")


def _exact(raw: bytes | str) -> Any:
    return json.loads(raw, parse_float=Exact, parse_int=_int, parse_constant=_constant)


def loads(raw: bytes | str) -> Any:
    """JSON read as orjson reads it (which refuses what is not JSON: raises
    orjson.JSONDecodeError), with the numbers a float would change as ``Exact``. What this
    hub wrote (``dumps``) needs no more than orjson when orjson writes it back the same: one
    writing (a few microseconds for a CarePlan)."""
    data = orjson.loads(raw)
    if isinstance(raw, str):
        raw = raw.encode()
    if orjson.dumps(data) == raw:
        return data
    return _exact(raw)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value))
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(value: Any, option: int = 0) -> bytes:
    """``orjson.dumps`` that writes an ``Exact`` (any finite Decimal) as its text."""
    return orjson.dumps(value, default=_default, option=option)


_WHITESPACE = b" \t\n\r"


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise BadRequest(f"Malformed JSON: the key '{k[:64]}' is given twice in one "
                                 "object (which value is meant would be a guess)",
                                 expression=k[:64])
            seen.add(k)
    return out


def as_written(raw: bytes, body: Any, written: bytes) -> tuple[Any, bytes]:
    """A request's JSON ``raw`` as sent: ``body`` (what orjson read) and ``written`` (what
    orjson writes of it), or, when a number in it is one a float changes (1.50), both with
    that number as an ``Exact``. Refuses (400) a key given twice in one object (RFC 8259 4:
    names SHOULD be unique; the last one won without a word), and (ValueError) what only
    orjson reads. Mostly one comparison: ``raw`` that orjson writes back as it is, but for
    whitespace outside strings (a string's own spaces are taken out of both, and a
    ``\\u0020`` is not), holds each key once and every number as written."""
    if written == raw or raw.translate(None, _WHITESPACE) == written.translate(
            None, _WHITESPACE):
        return body, written
    body = json.loads(raw, object_pairs_hook=_pairs, parse_float=Exact, parse_int=_int,
                      parse_constant=_constant)
    return body, dumps(body)
