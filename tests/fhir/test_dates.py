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
