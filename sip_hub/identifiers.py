"""Swedish identifiers: validation and the one canonical form we store and emit.

Personnummer and samordningsnummer become 12 digits (YYYYMMDDNNNN), HSA-ids upper case under
one OID, organisationsnummer 10 digits. Systems and OIDs follow HL7 Sweden's base profiles
(hl7se.fhir.base 1.1.0) and RIV-TA. Pure Python, no regular expressions: this runs on every
write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date
from types import MappingProxyType
from typing import Any, NoReturn

from sip_hub.errors import IssueCollector

PERSONNUMMER = "http://electronichealth.se/identifier/personnummer"
SAMORDNINGSNUMMER = "http://electronichealth.se/identifier/samordningsnummer"
HSA_ID = "urn:oid:1.2.752.29.4.19"
HSA_ID_ALT = "urn:oid:1.2.752.129.2.1.4.1"
ORGANISATIONSNUMMER = "urn:oid:2.5.4.97"

RIV_PERSONNUMMER_OID = "1.2.752.129.2.1.3.1"
RIV_SAMORDNINGSNUMMER_OID = "1.2.752.129.2.1.3.3"

FHIR_SYSTEM_TO_RIV_OID: Mapping[str, str] = MappingProxyType({
    PERSONNUMMER: RIV_PERSONNUMMER_OID,
    SAMORDNINGSNUMMER: RIV_SAMORDNINGSNUMMER_OID,
})
RIV_OID_TO_FHIR_SYSTEM: Mapping[str, str] = MappingProxyType(
    {oid: system for system, oid in FHIR_SYSTEM_TO_RIV_OID.items()})

_HSA_ID_MAX_LENGTH = 31
_PERSON_FORMS = "YYYYMMDDNNNN, YYYYMMDD-NNNN, YYMMDD-NNNN, YYMMDD+NNNN or YYMMDDNNNN"
_ORG_FORMS = "NNNNNN-NNNN, NNNNNNNNNN or 16NNNNNNNNNN"
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_UPPER_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class InvalidIdentifier(ValueError):
    """An identifier value that is not valid; ``reason`` says precisely why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_digits(s: str) -> bool:
    # str.isdigit alone accepts non-ASCII digits such as '²' or '٣'.
    return s.isascii() and s.isdigit()


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_in_month(year: int, month: int) -> int:
    return 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month]


def luhn_check_digit(nine_digits: str) -> int:
    """The Luhn check digit (weights 2,1,2,...) for the 9 digits YYMMDDNNN or NNNNNNNNN."""
    if len(nine_digits) != 9 or not _is_digits(nine_digits):
        raise ValueError(f"expected 9 digits, got '{nine_digits}'")
    total = 0
    for i, ch in enumerate(nine_digits):
        d = ord(ch) - 48
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


def _check_luhn(ten_digits: str) -> None:
    expected = luhn_check_digit(ten_digits[:9])
    if int(ten_digits[9]) != expected:
        raise InvalidIdentifier(f"check digit is {ten_digits[9]}, expected {expected}")


def _split_person_id(value: str) -> tuple[str | None, str, bool]:
    """(century or None, the 10-digit form, '+' given) or InvalidIdentifier for the shape."""
    s = value.strip()
    n = len(s)
    if n == 12 and _is_digits(s):
        return s[:2], s[2:], False
    if n == 13 and s[8] == "-" and _is_digits(s[:8]) and _is_digits(s[9:]):
        return s[:2], s[2:8] + s[9:], False
    if n == 10 and _is_digits(s):
        return None, s, False
    if n == 11 and s[6] in "-+" and _is_digits(s[:6]) and _is_digits(s[7:]):
        return None, s[:6] + s[7:], s[6] == "+"
    raise InvalidIdentifier(f"expected {_PERSON_FORMS}")


def _normalise_person_id(value: str, today: date | None, coordination: bool) -> str:
    """The shared rules of personnummer (``coordination`` False) and samordningsnummer."""
    if not isinstance(value, str):
        raise InvalidIdentifier(f"expected a string, got {type(value).__name__}")
    century, ten, plus = _split_person_id(value)
    month, day = int(ten[2:4]), int(ten[4:6])
    if not 1 <= month <= 12:
        raise InvalidIdentifier(f"month {ten[2:4]} is not a valid month")
    if coordination:
        if 1 <= day <= 31:
            _reject_wrong_kind(value, today, coordination, ten[4:6])
        if not 61 <= day <= 91:
            raise InvalidIdentifier(
                f"day {ten[4:6]} is not valid in a samordningsnummer "
                "(expected 61-91: day of birth + 60)")
        birth_day = day - 60
    else:
        if 61 <= day <= 91:
            _reject_wrong_kind(value, today, coordination, ten[4:6])
        if not 1 <= day <= 31:
            raise InvalidIdentifier(f"day {ten[4:6]} is not a valid day")
        birth_day = day

    if today is None:
        today = date.today()
    if century is None:
        yy = int(ten[:2])
        # Latest year ending in yy whose birthday is not after today, i.e. age 0-99;
        # '+' marks age 100 or more, one century earlier.
        year = today.year - (today.year - yy) % 100
        if year == today.year and (month, birth_day) > (today.month, today.day):
            year -= 100
        if plus:
            year -= 100
    else:
        year = int(century + ten[:2])

    if birth_day > _days_in_month(year, month):
        reason = f"date of birth {year:04d}-{month:02d}-{birth_day:02d} is not a valid date"
        if month == 2 and birth_day == 29:
            reason += f" ({year} is not a leap year)"
        raise InvalidIdentifier(reason)
    if (year, month, birth_day) > (today.year, today.month, today.day):
        raise InvalidIdentifier(
            f"date of birth {year:04d}-{month:02d}-{birth_day:02d} is in the future")
    _check_luhn(ten)
    return f"{year:04d}{ten[2:]}"


def _reject_wrong_kind(value: str, today: date | None, coordination: bool, day: str) -> NoReturn:
    """Refuse a number of the other kind, telling the caller which system it belongs to."""
    this, days, other, system = (
        ("samordningsnummer", "61-91, day of birth + 60", "personnummer", PERSONNUMMER)
        if coordination
        else ("personnummer", "01-31", "samordningsnummer", SAMORDNINGSNUMMER))
    try:
        _normalise_person_id(value, today, not coordination)
    except InvalidIdentifier as exc:
        raise InvalidIdentifier(
            f"day {day} is not a valid day in a {this} ({days}); read as a {other} "
            f"it is invalid too: {exc.reason}") from None
    raise InvalidIdentifier(
        f"this is a {other} (day {day}), not a {this}; use system {system}")


def normalise_personnummer(value: str, *, today: date | None = None) -> str:
    """The 12-digit form YYYYMMDDNNNN of a personnummer, or InvalidIdentifier.

    ``today`` (default: date.today()) decides the century of the 10-digit forms and what
    counts as the future.
    """
    return _normalise_person_id(value, today, coordination=False)


def normalise_samordningsnummer(value: str, *, today: date | None = None) -> str:
    """The 12-digit form of a samordningsnummer (day of birth + 60), or InvalidIdentifier."""
    return _normalise_person_id(value, today, coordination=True)


def person_id_system(value: str) -> str:
    """PERSONNUMMER or SAMORDNINGSNUMMER for an already normalised 12-digit id."""
    if len(value) != 12 or not _is_digits(value):
        raise InvalidIdentifier("expected a normalised 12-digit id (YYYYMMDDNNNN)")
    return SAMORDNINGSNUMMER if int(value[6:8]) > 60 else PERSONNUMMER


def separated_person_id(value: str) -> tuple[str, str] | None:
    """(system, 12-digit form) of a valid personnummer or samordningsnummer written with its
    separator (YYYYMMDD-NNNN, YYMMDD-NNNN or YYMMDD+NNNN); None for any other value. The
    separator is what marks the value as one: bare digits may be any other identifier."""
    s = value.strip()
    if not ((len(s) == 13 and s[8] == "-") or (len(s) == 11 and s[6] in "-+")):
        return None
    for system in (PERSONNUMMER, SAMORDNINGSNUMMER):
        try:
            return canonical_identifier(system, s)
        except InvalidIdentifier:
            pass
    return None


PERSON_ID_MASK = "[personnummer]"


def mask_person_ids(text: str) -> str:
    """``text`` with every number written as a personnummer or samordningsnummer (the forms
    of ``_PERSON_FORMS``, a number of its own: no letter or digit next to it) replaced by
    ``PERSON_ID_MASK``. For text the hub does not control and passes on to people and logs
    that may not see personal data: a receiving system's refusal ("Okänd patient
    201103142384") became a delivery's last error, in the console and the log. By shape,
    not by validity: a mistyped number names the person as well. An HSA-id's digits
    (SE2120001637-SOC1) are no number of their own and stay."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        j = i
        while j < n and _is_digits(text[j]):
            j += 1
        if j == i:
            out.append(text[i])
            i += 1
            continue
        end = j if j - i in (10, 12) else None
        if j - i in (6, 8) and text[j:j + 1] in ("-", "+") and _is_digits(text[j + 1:j + 5]) \
                and len(text[j + 1:j + 5]) == 4:
            end = j + 5
        alone = (i == 0 or not text[i - 1].isalnum()) and (
            end is not None and (end == n or not text[end].isalnum()))
        out.append(PERSON_ID_MASK if alone else text[i:j])
        i = end if alone and end is not None else j
    return "".join(out)


def normalise_hsa_id(value: str) -> str:
    """An HSA-id in upper case: SE + organisationsnummer (10 or 12 digits) + '-' + suffix."""
    if not isinstance(value, str):
        raise InvalidIdentifier(f"expected a string, got {type(value).__name__}")
    s = value.strip()
    # Check before upper(): 'ß'.upper() == 'SS' would turn junk into a valid-looking suffix.
    if not s.isascii():
        raise InvalidIdentifier("contains characters other than A-Z, 0-9 and '-'")
    s = s.upper()
    if not s.startswith("SE"):
        raise InvalidIdentifier("must start with the country code SE")
    dash = s.find("-")
    if dash < 0:
        raise InvalidIdentifier("missing '-' between the organisationsnummer and the suffix")
    org = s[2:dash]
    if len(org) not in (10, 12) or not _is_digits(org):
        raise InvalidIdentifier(
            f"'{org}' after SE is not a 10- or 12-digit organisationsnummer")
    suffix = s[dash + 1:]
    if not suffix:
        raise InvalidIdentifier("empty suffix after '-'")
    for ch in suffix:
        if ch not in _UPPER_ALNUM:
            raise InvalidIdentifier(f"suffix contains '{ch}'; only A-Z and 0-9 are allowed")
    if len(s) > _HSA_ID_MAX_LENGTH:
        raise InvalidIdentifier(
            f"{len(s)} characters long; an HSA-id has at most {_HSA_ID_MAX_LENGTH}")
    return s


def hsa_organisation(hsa_id: str) -> str:
    """The 10-digit organisationsnummer a normalised HSA-id is issued under (its principal:
    the kommun, the region, the company)."""
    org = hsa_id[2:hsa_id.index("-")]
    return org[2:] if len(org) == 12 else org


def normalise_organisationsnummer(value: str) -> str:
    """The 10-digit organisationsnummer (no dash, no 16 prefix), or InvalidIdentifier."""
    if not isinstance(value, str):
        raise InvalidIdentifier(f"expected a string, got {type(value).__name__}")
    s = value.strip()
    n = len(s)
    if n == 10 and _is_digits(s):
        ten = s
    elif n == 11 and s[6] == "-" and _is_digits(s[:6]) and _is_digits(s[7:]):
        ten = s[:6] + s[7:]
    elif n == 12 and _is_digits(s):
        if not s.startswith("16"):
            raise InvalidIdentifier("a 12-digit organisationsnummer must start with 16")
        ten = s[2:]
    else:
        raise InvalidIdentifier(f"expected {_ORG_FORMS}")
    _check_luhn(ten)
    if ten[2] < "2":
        # Sole traders (enskild näringsidkare) use their personnummer: accept it if its
        # date could be a real one in some century.
        month, day, yy = int(ten[2:4]), int(ten[4:6]), int(ten[:2])
        if not 1 <= month <= 12:
            problem = f"month {ten[2:4]} is not a valid month"
        elif not 1 <= day <= max(_days_in_month(1900 + yy, month),
                                 _days_in_month(2000 + yy, month)):
            problem = f"day {ten[4:6]} is not a valid day in month {ten[2:4]}"
        else:
            return ten
        raise InvalidIdentifier(
            f"third digit is {ten[2]} (a legal person has 2-9 there) and it is not a "
            f"sole trader's personnummer either: {problem}")
    return ten


def _hsa(value: str) -> tuple[str, str]:
    return HSA_ID, normalise_hsa_id(value)


def _personnummer(value: str) -> tuple[str, str]:
    return PERSONNUMMER, normalise_personnummer(value)


def _samordningsnummer(value: str) -> tuple[str, str]:
    return SAMORDNINGSNUMMER, normalise_samordningsnummer(value)


def _organisationsnummer(value: str) -> tuple[str, str]:
    return ORGANISATIONSNUMMER, normalise_organisationsnummer(value)


_CANONICALISERS: dict[str, Callable[[str], tuple[str, str]]] = {
    PERSONNUMMER: _personnummer,
    SAMORDNINGSNUMMER: _samordningsnummer,
    HSA_ID: _hsa,
    HSA_ID_ALT: _hsa,
    ORGANISATIONSNUMMER: _organisationsnummer,
}
_KIND = {
    PERSONNUMMER: "personnummer",
    SAMORDNINGSNUMMER: "samordningsnummer",
    HSA_ID: "HSA-id",
    HSA_ID_ALT: "HSA-id",
    ORGANISATIONSNUMMER: "organisationsnummer",
}


def canonical_identifier(system: str, value: str) -> tuple[str, str]:
    """(canonical system, normalised value); unknown systems come back unchanged.

    Raises InvalidIdentifier for an invalid value of a known system.
    """
    canonicalise = _CANONICALISERS.get(system)
    if canonicalise is None:
        return system, value
    return canonicalise(value)


def canonical_search_token(system: str, value: str | None) -> tuple[str, str | None]:
    """A token search's system and value (None: any value) as ``normalise_in_resource``
    stores them, so that the form a client sent finds what it wrote in that form.

    Raises InvalidIdentifier for an invalid value of a known system, as a write does.
    """
    if value is None:
        return (HSA_ID if system == HSA_ID_ALT else system), None
    return canonical_identifier(system, value)


def _fhirpath(where: tuple[Any, str, int] | None, root: str) -> str:
    parts: list[str] = []
    while where is not None:
        where, key, index = where
        parts.append(f"{key}[{index}]" if index >= 0 else key)
    parts.append(root)
    return ".".join(reversed(parts))


def normalise_in_resource(resource: dict[str, Any], collector: IssueCollector) -> None:
    """Rewrite every Swedish identifier in ``resource`` to canonical form, in place.

    Invalid ones are left as they are and reported to ``collector`` (code ``value``) with
    the FHIRPath of the offending ``value``.
    """
    root = resource.get("resourceType")
    root = root if isinstance(root, str) else "Resource"
    # An explicit stack, not recursion: nesting depth comes from the client, and a
    # RecursionError would be a 500 instead of a validation issue.
    stack: list[tuple[dict[str, Any], tuple[Any, str, int] | None]] = [(resource, None)]
    pop, push = stack.pop, stack.append
    while stack:
        node, where = pop()
        system = node.get("system")
        if isinstance(system, str):
            canonicalise = _CANONICALISERS.get(system)
            value = node.get("value")
            if canonicalise is not None and isinstance(value, str):
                try:
                    node["system"], node["value"] = canonicalise(value)
                except InvalidIdentifier as exc:
                    shown = value if len(value) <= 64 else value[:64] + "..."
                    collector.add(_fhirpath((where, "value", -1), root),
                                  f"Invalid {_KIND[system]} '{shown}': {exc.reason}",
                                  code="value")
        # Children go on in reverse so that they come off, and issues come out, in
        # document order.
        for key, child in reversed(node.items()):
            if isinstance(child, dict):
                push((child, (where, key, -1)))
            elif isinstance(child, list):
                for i in range(len(child) - 1, -1, -1):
                    item = child[i]
                    if isinstance(item, dict):
                        push((item, (where, key, i)))
