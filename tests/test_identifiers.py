"""Swedish identifiers: personnummer, samordningsnummer, HSA-id, organisationsnummer."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip_hub.errors import IssueCollector
from sip_hub.identifiers import (
    FHIR_SYSTEM_TO_RIV_OID,
    HSA_ID,
    HSA_ID_ALT,
    ORGANISATIONSNUMMER,
    PERSONNUMMER,
    RIV_OID_TO_FHIR_SYSTEM,
    RIV_PERSONNUMMER_OID,
    RIV_SAMORDNINGSNUMMER_OID,
    SAMORDNINGSNUMMER,
    InvalidIdentifier,
    canonical_identifier,
    luhn_check_digit,
    mask_person_ids,
    normalise_hsa_id,
    normalise_in_resource,
    normalise_organisationsnummer,
    normalise_personnummer,
    normalise_samordningsnummer,
    person_id_system,
)

TODAY = date(2025, 6, 15)
TOLVAN = "191212121212"


def person_id(year: int, month: int, day_as_written: int, serial: int = 123) -> str:
    """A 12-digit id with a correct check digit (day_as_written + 60 for samordningsnummer)."""
    nine = f"{year % 100:02d}{month:02d}{day_as_written:02d}{serial:03d}"
    return f"{year // 100:02d}{nine}{luhn_check_digit(nine)}"


def reason(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidIdentifier) as info:
        call(*args, **kwargs)
    return info.value.reason


# --- Luhn --------------------------------------------------------------------------------

@pytest.mark.parametrize(("nine", "check"), [
    ("121212121", 2),  # Tolvan Tolvansson, 19121212-1212
    ("232100001", 6),  # Region Stockholm, 232100-0016
    ("212000014", 2),  # 212000-0142
    ("556036079", 3),  # 556036-0793
])
def test_luhn_check_digit_matches_hand_computed_values(nine: str, check: int) -> None:
    assert luhn_check_digit(nine) == check


@pytest.mark.parametrize("bad", ["12121212", "1212121212", "12121212x", "١٢١٢١٢١٢١"])
def test_luhn_check_digit_refuses_anything_but_nine_ascii_digits(bad: str) -> None:
    with pytest.raises(ValueError):
        luhn_check_digit(bad)


# --- personnummer --------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "today"), [
    ("191212121212", TODAY),
    ("19121212-1212", TODAY),
    ("121212+1212", TODAY),  # over 100 in 2025
    ("  19121212-1212\n", TODAY),
    ("121212-1212", date(2011, 1, 1)),  # 98 years old then: '-' and no separator
    ("1212121212", date(2011, 1, 1)),
])
def test_tolvan_tolvansson_is_accepted_in_every_input_form(value: str, today: date) -> None:
    assert normalise_personnummer(value, today=today) == TOLVAN


def test_leap_day_2000_is_a_valid_date_of_birth() -> None:
    pnr = person_id(2000, 2, 29)
    assert normalise_personnummer(pnr, today=TODAY) == pnr
    assert normalise_personnummer(f"{pnr[2:8]}-{pnr[8:]}", today=TODAY) == pnr


def test_leap_day_1900_is_refused_because_1900_is_not_a_leap_year() -> None:
    pnr = person_id(1900, 2, 29)
    expected = "date of birth 1900-02-29 is not a valid date (1900 is not a leap year)"
    assert reason(normalise_personnummer, pnr, today=TODAY) == expected
    assert reason(normalise_personnummer, f"{pnr[2:8]}+{pnr[8:]}", today=TODAY) == expected


def test_wrong_check_digit_is_refused_with_the_expected_digit() -> None:
    assert reason(normalise_personnummer, "19121212-1213", today=TODAY) == (
        "check digit is 3, expected 2")


@pytest.mark.parametrize(("value", "expected"), [
    ("19121312-1212", "month 13 is not a valid month"),
    ("19120012-1212", "month 00 is not a valid month"),
    ("19121232-1212", "day 32 is not a valid day"),
    ("19121200-1212", "day 00 is not a valid day"),
    ("19120431-1212", "date of birth 1912-04-31 is not a valid date"),
])
def test_impossible_dates_are_refused_with_a_precise_reason(value: str, expected: str) -> None:
    assert reason(normalise_personnummer, value, today=TODAY) == expected


def test_date_of_birth_in_the_future_is_refused() -> None:
    assert reason(normalise_personnummer, person_id(2090, 1, 1), today=TODAY) == (
        "date of birth 2090-01-01 is in the future")
    assert reason(normalise_personnummer, person_id(2025, 6, 16), today=TODAY) == (
        "date of birth 2025-06-16 is in the future")


def test_born_today_is_accepted() -> None:
    pnr = person_id(2025, 6, 15)
    assert normalise_personnummer(pnr, today=TODAY) == pnr


@pytest.mark.parametrize(("short", "expected_birth"), [
    ("121212-", "20121212"),
    ("121212+", "19121212"),
    ("250615-", "20250615"),  # born today
    ("250616-", "19250616"),  # tomorrow's date this year is the future: last century, 99
    ("250615+", "19250615"),  # turns 100 today
    ("250616+", "18250616"),
])
def test_century_of_the_short_form_follows_the_plus_rule(short: str, expected_birth: str) -> None:
    nine = short[:6] + "123"
    value = f"{short}123{luhn_check_digit(nine)}"
    assert normalise_personnummer(value, today=TODAY) == f"{expected_birth}123{value[-1]}"


@pytest.mark.parametrize("bad", [
    "", "   ", "abc", "19121212+1212", "1912-12-12-1212", "19121212 1212", "121212_1212",
    "19121212-12122", "٢٠١٢١٢١٢١٢١٢",
])
def test_malformed_personnummer_is_refused_listing_the_accepted_forms(bad: str) -> None:
    assert reason(normalise_personnummer, bad, today=TODAY) == (
        "expected YYYYMMDDNNNN, YYYYMMDD-NNNN, YYMMDD-NNNN, YYMMDD+NNNN or YYMMDDNNNN")


def test_default_today_is_the_real_date() -> None:
    # Tolvan was born in 1912: past 100 whenever this runs, so '+' means 1912.
    assert normalise_personnummer("121212+1212") == TOLVAN
    assert reason(normalise_personnummer, person_id(date.today().year + 1, 1, 1)).endswith(
        "is in the future")


# --- samordningsnummer ---------------------------------------------------------------------

def test_samordningsnummer_is_accepted_in_its_own_system() -> None:
    snr = person_id(1912, 12, 72)
    assert normalise_samordningsnummer(snr, today=TODAY) == snr
    assert normalise_samordningsnummer(f"{snr[:8]}-{snr[8:]}", today=TODAY) == snr
    assert normalise_samordningsnummer(f"{snr[2:8]}+{snr[8:]}", today=TODAY) == snr
    assert person_id_system(snr) == SAMORDNINGSNUMMER
    assert person_id_system(TOLVAN) == PERSONNUMMER


@pytest.mark.parametrize("day", [61, 91])
def test_samordningsnummer_day_range_ends_are_accepted(day: int) -> None:
    snr = person_id(1990, 1, day)
    assert normalise_samordningsnummer(snr, today=TODAY) == snr


def test_samordningsnummer_is_refused_as_a_personnummer_naming_the_right_system() -> None:
    snr = person_id(1912, 12, 72)
    assert reason(normalise_personnummer, snr, today=TODAY) == (
        f"this is a samordningsnummer (day 72), not a personnummer; use system {SAMORDNINGSNUMMER}")


def test_personnummer_is_refused_as_a_samordningsnummer_naming_the_right_system() -> None:
    assert reason(normalise_samordningsnummer, TOLVAN, today=TODAY) == (
        f"this is a personnummer (day 12), not a samordningsnummer; use system {PERSONNUMMER}")


def test_invalid_samordningsnummer_in_the_personnummer_system_gives_both_reasons() -> None:
    snr = person_id(1912, 12, 72)
    bad = snr[:-1] + str((int(snr[-1]) + 1) % 10)
    assert reason(normalise_personnummer, bad, today=TODAY) == (
        "day 72 is not a valid day in a personnummer (01-31); read as a samordningsnummer it "
        f"is invalid too: check digit is {bad[-1]}, expected {snr[-1]}")


@pytest.mark.parametrize(("snr", "expected"), [
    (person_id(1900, 2, 89),
     "date of birth 1900-02-29 is not a valid date (1900 is not a leap year)"),
    (person_id(1990, 4, 91), "date of birth 1990-04-31 is not a valid date"),
    (person_id(1990, 4, 60), "expected 61-91: day of birth + 60"),
    (person_id(1990, 4, 92), "expected 61-91: day of birth + 60"),
    (person_id(2090, 1, 61), "date of birth 2090-01-01 is in the future"),
])
def test_samordningsnummer_needs_a_real_underlying_date(snr: str, expected: str) -> None:
    assert expected in reason(normalise_samordningsnummer, snr, today=TODAY)


def test_person_id_system_requires_a_normalised_id() -> None:
    with pytest.raises(InvalidIdentifier):
        person_id_system("19121212-1212")


# --- HSA-id --------------------------------------------------------------------------------

@pytest.mark.parametrize("system", [HSA_ID, HSA_ID_ALT])
@pytest.mark.parametrize(("value", "expected"), [
    ("SE2321000016-15CQ", "SE2321000016-15CQ"),
    (" se2321000016-15cq ", "SE2321000016-15CQ"),
    ("SE162321000255-O11111", "SE162321000255-O11111"),
])
def test_hsa_id_in_either_oid_becomes_the_emitted_oid(system: str, value: str,
                                                       expected: str) -> None:
    assert canonical_identifier(system, value) == ("urn:oid:1.2.752.29.4.19", expected)


def test_hsa_id_may_be_31_characters_but_not_32() -> None:
    longest = "SE2321000016-" + "A" * 18
    assert len(longest) == 31
    assert normalise_hsa_id(longest) == longest
    assert reason(normalise_hsa_id, longest + "B") == (
        "32 characters long; an HSA-id has at most 31")


@pytest.mark.parametrize(("value", "expected"), [
    ("DK2321000016-15CQ", "must start with the country code SE"),
    ("SE2321000016", "missing '-' between the organisationsnummer and the suffix"),
    ("SE232100016-15CQ", "'232100016' after SE is not a 10- or 12-digit organisationsnummer"),
    ("SE23210000161-15CQ", "'23210000161' after SE is not a 10- or 12-digit organisationsnummer"),
    ("SE2321000016-", "empty suffix after '-'"),
    ("SE2321000016-15_Q", "suffix contains '_'; only A-Z and 0-9 are allowed"),
    ("SE2321000016-15-Q", "suffix contains '-'; only A-Z and 0-9 are allowed"),
    ("SE2321000016-straße", "contains characters other than A-Z, 0-9 and '-'"),
])
def test_malformed_hsa_id_is_refused_with_a_precise_reason(value: str, expected: str) -> None:
    assert reason(normalise_hsa_id, value) == expected


# --- organisationsnummer -------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("232100-0016", "2321000016"),  # Region Stockholm
    ("2321000016", "2321000016"),
    ("162321000016", "2321000016"),
    (" 212000-0142 ", "2120000142"),
    ("556036-0793", "5560360793"),
])
def test_organisationsnummer_forms_become_ten_digits(value: str, expected: str) -> None:
    assert normalise_organisationsnummer(value) == expected
    assert canonical_identifier(ORGANISATIONSNUMMER, value) == (ORGANISATIONSNUMMER, expected)


def test_sole_trader_personnummer_is_a_valid_organisationsnummer() -> None:
    assert normalise_organisationsnummer("121212-1212") == "1212121212"
    leap = person_id(2000, 2, 29)[2:]
    assert normalise_organisationsnummer(leap) == leap


def test_organisationsnummer_with_low_third_digit_and_no_valid_date_is_refused() -> None:
    nine = "551300123"  # third digit 1, "month" 13
    value = nine + str(luhn_check_digit(nine))
    assert reason(normalise_organisationsnummer, value) == (
        "third digit is 1 (a legal person has 2-9 there) and it is not a sole trader's "
        "personnummer either: month 13 is not a valid month")
    nine = "550231123"  # February 31
    value = nine + str(luhn_check_digit(nine))
    assert reason(normalise_organisationsnummer, value).endswith(
        "day 31 is not a valid day in month 02")


@pytest.mark.parametrize(("value", "expected"), [
    ("232100-0017", "check digit is 7, expected 6"),
    ("192321000016", "a 12-digit organisationsnummer must start with 16"),
    ("2321-000016", "expected NNNNNN-NNNN, NNNNNNNNNN or 16NNNNNNNNNN"),
    ("23210000", "expected NNNNNN-NNNN, NNNNNNNNNN or 16NNNNNNNNNN"),
])
def test_malformed_organisationsnummer_is_refused_with_a_precise_reason(value: str,
                                                                        expected: str) -> None:
    assert reason(normalise_organisationsnummer, value) == expected


# --- dispatch and mappings -----------------------------------------------------------------

def test_canonical_identifier_normalises_person_ids() -> None:
    assert canonical_identifier(PERSONNUMMER, "19121212-1212") == (PERSONNUMMER, TOLVAN)
    snr = person_id(1990, 1, 75)
    assert canonical_identifier(SAMORDNINGSNUMMER, f"{snr[:8]}-{snr[8:]}") == (
        SAMORDNINGSNUMMER, snr)


def test_canonical_identifier_sends_person_ids_to_the_right_system() -> None:
    snr = person_id(1990, 1, 75)
    assert f"use system {SAMORDNINGSNUMMER}" in reason(canonical_identifier, PERSONNUMMER, snr)
    assert f"use system {PERSONNUMMER}" in reason(canonical_identifier, SAMORDNINGSNUMMER,
                                                   TOLVAN)


def test_canonical_identifier_leaves_unknown_systems_alone() -> None:
    assert canonical_identifier("http://example.org/mrn", " 12 ") == (
        "http://example.org/mrn", " 12 ")


def test_riv_oids_map_both_ways_for_person_ids() -> None:
    assert FHIR_SYSTEM_TO_RIV_OID[PERSONNUMMER] == RIV_PERSONNUMMER_OID == "1.2.752.129.2.1.3.1"
    assert FHIR_SYSTEM_TO_RIV_OID[SAMORDNINGSNUMMER] == RIV_SAMORDNINGSNUMMER_OID == (
        "1.2.752.129.2.1.3.3")
    assert RIV_OID_TO_FHIR_SYSTEM["1.2.752.129.2.1.3.1"] == PERSONNUMMER
    assert RIV_OID_TO_FHIR_SYSTEM["1.2.752.129.2.1.3.3"] == SAMORDNINGSNUMMER


# --- whole resources -----------------------------------------------------------------------

def test_patient_valid_identifier_is_rewritten_and_invalid_one_reported() -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {"system": PERSONNUMMER, "value": "19121212-1212"},
            {"system": PERSONNUMMER, "value": "19121212-1213"},
        ],
    }
    collector = IssueCollector()
    normalise_in_resource(patient, collector)
    assert patient["identifier"] == [
        {"system": PERSONNUMMER, "value": TOLVAN},
        {"system": PERSONNUMMER, "value": "19121212-1213"},
    ]
    assert len(collector.issues) == 1
    issue = collector.issues[0]
    assert issue.code == "value"
    assert issue.severity == "error"
    assert issue.expression == ("Patient.identifier[1].value",)
    assert issue.diagnostics == (
        "Invalid personnummer '19121212-1213': check digit is 3, expected 2")


def test_careplan_reference_identifiers_and_contained_resources_are_handled() -> None:
    careplan = {
        "resourceType": "CarePlan",
        "contained": [{
            "resourceType": "Organization",
            "identifier": [{"system": ORGANISATIONSNUMMER, "value": "232100-0017"}],
        }],
        "subject": {"identifier": {"system": PERSONNUMMER, "value": "121212+1212"}},
        "author": {"identifier": {"system": HSA_ID_ALT, "value": "se2321000016-15cq"}},
        "contributor": [
            {"reference": "#org"},
            {"identifier": {"system": SAMORDNINGSNUMMER, "value": TOLVAN}},
        ],
    }
    collector = IssueCollector()
    normalise_in_resource(careplan, collector)
    assert careplan["subject"] == {"identifier": {"system": PERSONNUMMER, "value": TOLVAN}}
    assert careplan["author"] == {"identifier": {"system": HSA_ID, "value": "SE2321000016-15CQ"}}
    assert [(i.expression, i.diagnostics) for i in collector.issues] == [
        (("CarePlan.contained[0].identifier[0].value",),
         "Invalid organisationsnummer '232100-0017': check digit is 7, expected 6"),
        (("CarePlan.contributor[1].identifier.value",),
         f"Invalid samordningsnummer '{TOLVAN}': this is a personnummer (day 12), not a "
         f"samordningsnummer; use system {PERSONNUMMER}"),
    ]


def test_other_system_value_pairs_are_left_untouched() -> None:
    patient = {
        "resourceType": "Patient",
        "telecom": [{"system": "phone", "value": " 08-123 45 "}],
        "extension": [{"url": "http://example.org/w",
                       "valueQuantity": {"system": "http://unitsofmeasure.org", "value": 70}}],
        "identifier": [{"system": PERSONNUMMER}, {"system": HSA_ID, "value": 12}],
    }
    before = repr(patient)
    collector = IssueCollector()
    normalise_in_resource(patient, collector)
    assert repr(patient) == before
    assert collector.issues == []


def test_deeply_nested_resource_does_not_exhaust_the_stack() -> None:
    patient: dict[str, Any] = {"resourceType": "Patient"}
    node = patient
    for _ in range(5000):
        child: dict[str, Any] = {"url": "http://example.org/x"}
        node["extension"] = [child]
        node = child
    node["valueIdentifier"] = {"system": PERSONNUMMER, "value": "19121212-1212"}
    collector = IssueCollector()
    normalise_in_resource(patient, collector)
    assert node["valueIdentifier"]["value"] == TOLVAN
    assert collector.issues == []


# --- properties ----------------------------------------------------------------------------

@given(birth=st.dates(min_value=date(1850, 1, 1), max_value=TODAY),
       serial=st.integers(min_value=0, max_value=999))
def test_every_valid_personnummer_round_trips_through_all_its_forms(birth: date,
                                                                     serial: int) -> None:
    twelve = person_id(birth.year, birth.month, birth.day, serial)
    ten = twelve[2:]
    centenarian = birth <= TODAY.replace(year=TODAY.year - 100)
    forms = [twelve, f"{twelve[:8]}-{twelve[8:]}", f" {twelve} ",
             f"{ten[:6]}{'+' if centenarian else '-'}{ten[6:]}"]
    if not centenarian:
        forms.append(ten)
    for form in forms:
        assert normalise_personnummer(form, today=TODAY) == twelve, form
    assert person_id_system(twelve) == PERSONNUMMER


@given(birth=st.dates(min_value=date(1900, 1, 1), max_value=TODAY),
       serial=st.integers(min_value=0, max_value=999))
def test_every_valid_samordningsnummer_round_trips_and_is_refused_as_personnummer(
        birth: date, serial: int) -> None:
    twelve = person_id(birth.year, birth.month, birth.day + 60, serial)
    assert normalise_samordningsnummer(f"{twelve[:8]}-{twelve[8:]}", today=TODAY) == twelve
    assert person_id_system(twelve) == SAMORDNINGSNUMMER
    assert "use system " + SAMORDNINGSNUMMER in reason(normalise_personnummer, twelve,
                                                       today=TODAY)


@given(birth=st.dates(min_value=date(1900, 1, 1), max_value=TODAY),
       serial=st.integers(min_value=0, max_value=999), wrong=st.integers(1, 9))
def test_any_other_check_digit_is_refused(birth: date, serial: int, wrong: int) -> None:
    twelve = person_id(birth.year, birth.month, birth.day, serial)
    bad = twelve[:-1] + str((int(twelve[-1]) + wrong) % 10)
    assert reason(normalise_personnummer, bad, today=TODAY) == (
        f"check digit is {bad[-1]}, expected {twelve[-1]}")


# -- personal identity numbers in text the hub passes on ------------------------------------

@pytest.mark.parametrize("text, masked", [
    ("Okänd patient 201103142384: ingen elev", "Okänd patient [personnummer]: ingen elev"),
    ("pnr 20110314-2384.", "pnr [personnummer]."),
    ("110314-2384, 110314+2384 och 1103142384",
     "[personnummer], [personnummer] och [personnummer]"),
    ("Patient/201103142384|x", "Patient/[personnummer]|x"),
    ("samordningsnummer 19701063-2391", "samordningsnummer [personnummer]"),
])
def test_person_ids_in_text_are_masked_in_every_written_form(text: str, masked: str) -> None:
    """A receiving system's error text naming a person (a personnummer or samordningsnummer,
    in any form it is written in, valid or mistyped) shows no more than that it named one."""
    assert mask_person_ids(text) == masked


@pytest.mark.parametrize("text", [
    "SE2120001637-SOC1", "HTTP 422 from http://127.0.0.1:43707/fhir/$process-message",
    "20261104123000", "id a201103142384", "201103142384b", "20110314-23845", "²²²²²²²²²²",
    "OID 1.2.752.129.2.1.3.1", ""])
def test_other_numbers_in_text_are_left_as_they_are(text: str) -> None:
    """HSA-ids, URLs, timestamps and numbers within words are no person's number."""
    assert mask_person_ids(text) == text
