"""Several consents naming one organisation cover it in each of their periods, and not
between them: one expired and one not yet started let it read (and be sent the SIP's
messages) today, when one grant spanned the earliest start to the latest end."""

from __future__ import annotations

from datetime import timedelta

import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body
import test_access
from test_access import BUP, SCHOOL, SOC
from sip_hub.access import merge_periods
from sip_hub.fhir.dates import now_utc, to_us
from sip_hub.fhir.search import parse as parse_search
from sip_hub.fhir.sip import swedish_range  # (a consent's dates are Swedish days)
from sip_hub.messaging import outbox as routing
from sip_hub.store.search import Visibility

world = test_access.world  # the demo SIP written by its coordinator (a fixture)

_NOW = now_utc()


def _day(days: int) -> str:
    return (_NOW + timedelta(days=days)).date().isoformat()


def _put(client, world, consent):
    r = client.put(f"/fhir/Consent/{consent['id']}", **body(consent) | {
        "headers": JSON_HEADERS | world[SOC]})
    assert r.status_code in (200, 201), r.text


def _bup_only_in(client, world, *periods: tuple[str, str | None]) -> None:
    """The SIP's consent without BUP, and one more consent naming BUP per period."""
    _put(client, world, f.sip_consent(actor_refs=(f.SOCIAL_SERVICES, f.SCHOOL, f.MOTHER)))
    for i, (start, end) in enumerate(periods):
        _put(client, world, f.sip_consent(
            id=f"alva-bup-{i}", actor_refs=(f.SOCIAL_SERVICES, f.BUP), start=start, end=end))


def _bup_reads(store, at: int) -> bool:
    """Whether BUP reads Alva's plan at ``at``: by the grants in memory (reads, routing) and
    by the search's SQL condition, which must agree."""
    with store.begin(write=False) as tx:
        by_grants = tx.readable_patients(BUP, ["alva"], at) == {"alva"}
        assert (BUP in routing.covered(tx, "alva", at)) == by_grants
        query = parse_search("CarePlan", [("_id", "alva-sip")], default_count=10,
                             max_count=10)
        by_sql = [s.id for s in tx.search(query, Visibility(BUP, at, "patient"))[0]]
    assert by_sql == (["alva-sip"] if by_grants else []), (by_grants, by_sql)
    return by_grants


def test_an_expired_and_a_future_consent_do_not_cover_today(client, world, store):
    """The probe's case: BUP named for a period long past and one a year ahead."""
    _bup_only_in(client, world, (_day(-700), _day(-500)), (_day(180), _day(360)))
    h = world[BUP]
    assert client.get("/fhir/CarePlan/alva-sip", headers=h).status_code == 403
    assert client.get("/fhir/Patient/alva", headers=h).status_code == 403
    b = client.get("/fhir/CarePlan?patient=alva&_include=CarePlan:goal"
                   "&_revinclude=Provenance:target", headers=h).json()
    assert b.get("total") == 0, b and "entry" not in b
    with store.begin(write=False) as tx:
        assert BUP not in routing.covered(tx, "alva")
        assert SCHOOL in routing.covered(tx, "alva")
        bup = sorted((g for g in tx.grants("alva") if g.org == BUP),
                     key=lambda g: g.valid_from or 0)
    # One grant per period, each the consent's own; the role kept on every one.
    assert [(g.reads, g.role, g.valid_from, g.valid_until) for g in bup] == [
        (True, "participant", swedish_range(_day(-700))[0], swedish_range(_day(-500))[1]),
        (True, "participant", swedish_range(_day(180))[0], swedish_range(_day(360))[1])]
    # Within either period BUP reads; between them, and after the last, it does not.
    assert _bup_reads(store, swedish_range(_day(-600))[0])
    assert not _bup_reads(store, to_us(_NOW))
    assert _bup_reads(store, swedish_range(_day(200))[0])
    assert not _bup_reads(store, swedish_range(_day(400))[0])


def test_a_consent_in_force_among_others_covers(client, world, store):
    _bup_only_in(client, world, (_day(-700), _day(-500)), (_day(-10), _day(10)),
                 (_day(180), None))
    assert client.get("/fhir/CarePlan/alva-sip", headers=world[BUP]).status_code == 200
    assert _bup_reads(store, to_us(_NOW))
    assert not _bup_reads(store, swedish_range(_day(100))[0])
    assert _bup_reads(store, swedish_range(_day(5000))[0])  # the last has no end


@pytest.mark.parametrize("second", [
    (-20, 30),    # overlapping the first
    (11, 30),     # starting the day after the first ends: no gap
])
def test_overlapping_or_adjacent_consents_are_one_period(client, world, store, second):
    _bup_only_in(client, world, (_day(-30), _day(10)), (_day(second[0]), _day(second[1])))
    with store.begin(write=False) as tx:
        bup = [g for g in tx.grants("alva") if g.org == BUP]
    assert [(g.valid_from, g.valid_until) for g in bup] == [
        (swedish_range(_day(-30))[0], swedish_range(_day(30))[1])]
    assert _bup_reads(store, swedish_range(_day(11))[0])


def test_withdrawing_the_consent_in_force_leaves_only_the_others(client, world, store):
    _bup_only_in(client, world, (_day(-10), _day(10)), (_day(180), _day(360)))
    assert client.get("/fhir/CarePlan/alva-sip", headers=world[BUP]).status_code == 200
    now = f.sip_consent(id="alva-bup-0", actor_refs=(f.SOCIAL_SERVICES, f.BUP),
                        start=_day(-10), end=_day(10), status="inactive")
    _put(client, world, now)
    assert client.get("/fhir/CarePlan/alva-sip", headers=world[BUP]).status_code == 403
    with store.begin(write=False) as tx:
        assert BUP not in routing.covered(tx, "alva")
        assert len([g for g in tx.grants("alva") if g.org == BUP]) == 1
    assert _bup_reads(store, swedish_range(_day(200))[0])


def test_a_participant_no_consent_covers_keeps_its_role_reading_nothing(client, world, store):
    _put(client, world, f.sip_consent(actor_refs=(f.SOCIAL_SERVICES, f.SCHOOL, f.MOTHER)))
    with store.begin(write=False) as tx:
        bup = [g for g in tx.grants("alva") if g.org == BUP]
    assert [(g.role, g.reads, g.valid_from, g.valid_until) for g in bup] == [
        ("participant", False, None, None)]
    assert client.get("/fhir/CarePlan/alva-sip", headers=world[BUP]).status_code == 403


def test_merge_periods() -> None:
    assert merge_periods([]) == []
    assert merge_periods([(5, 9), (1, 3)]) == [(1, 3), (5, 9)]
    assert merge_periods([(1, 3), (4, 9)]) == [(1, 9)]          # adjacent
    assert merge_periods([(1, 9), (2, 3)]) == [(1, 9)]          # inside
    assert merge_periods([(None, 3), (2, 5), (7, None)]) == [(None, 5), (7, None)]
    assert merge_periods([(3, None), (1, 2), (10, 20)]) == [(1, None)]
    assert merge_periods([(5, 2), (8, 9)]) == [(8, 9)]          # empty: left out
