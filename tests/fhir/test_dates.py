"""Instants as the hub writes them (meta.lastUpdated, AuditEvent.recorded, Bundle.timestamp)."""

from datetime import datetime, timedelta, timezone

from sip_hub.fhir.dates import format_instant


def test_instants_are_utc_with_microseconds_and_four_digit_years():
    cet = timezone(timedelta(hours=1))
    assert format_instant(datetime(2026, 12, 3, 23, 59, 59, 999999, tzinfo=cet)) == \
        "2026-12-03T22:59:59.999999Z"
    assert format_instant(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == \
        "2026-01-02T03:04:05.000000Z"
    # FHIR's instant has four year digits (strftime wrote "1-01-02" for year 1).
    assert format_instant(datetime(1, 1, 2, tzinfo=timezone.utc)) == "0001-01-02T00:00:00.000000Z"


def test_a_date_is_the_range_it_names_to_the_ends_of_the_calendar():
    from sip_hub.fhir.dates import MAX_US, MIN_US, from_us, parse_range, parse_zoned, to_us

    def utc(*args):
        return to_us(datetime(*args, tzinfo=timezone.utc))
    assert parse_range("2024-02") == (utc(2024, 2, 1), utc(2024, 3, 1) - 1)  # a leap February
    assert parse_range("2023") == (utc(2023, 1, 1), utc(2024, 1, 1) - 1)
    assert parse_range("2024-05-01T10:00+02:00") == (utc(2024, 5, 1, 8), utc(2024, 5, 1, 8, 1) - 1)
    assert parse_range("2024-05-01T10:00:00.5Z")[0] == utc(2024, 5, 1, 10, 0, 0, 500000)
    # The last day of year 9999 ("no end") overflowed datetime arithmetic (a 5xx on a write
    # holding it); a zone past either end of the calendar is cut to it.
    assert parse_range("9999-12-31") == (utc(9999, 12, 31), MAX_US)
    assert parse_range("9999") == (utc(9999, 1, 1), MAX_US)
    assert parse_range("9999-12-31T23:59:59-14:00") == (MAX_US, MAX_US)
    assert parse_range("0001-01-01T00:00:00+14:00") == (MIN_US, MIN_US)
    assert parse_range("2024-05-01T10:00-14:00")[0] == utc(2024, 5, 2, 0)
    assert from_us(MIN_US).year == 1 and from_us(MAX_US).year == 9999
    # whether the value named its zone (per-1 allows 14 hours either way for one without)
    assert [parse_zoned(v)[2] for v in ("2024-05-01T10:00", "2024-05-01", "2024-05-01T10:00Z",
                                        "2024-05-01T10:00-05:00")] == [False, False, True, True]
    assert parse_zoned("2024-05-01T10:00+02:00")[:2] == parse_range("2024-05-01T10:00+02:00")
    for impossible in ("2024-02-30", "2024-13", "0000", "2024-05-01T24:00Z", "2024-05-01T10:60Z",
                       "2024-05-01T10:00+14:01", "2024-05-01T10:00-99:00",
                       "2024-05-01T10:00+01:60"):
        try:
            parse_range(impossible)
        except ValueError:
            continue
        raise AssertionError(f"{impossible} was taken for a date")
