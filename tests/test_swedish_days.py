"""A date without a time in the SIP is a Swedish day (Europe/Stockholm), not a UTC one.

What a user relies on: a consent ending today covers nothing once today is over in Sweden
(not one or two hours later, at UTC midnight), and one starting tomorrow covers from Swedish
midnight; an approval dated today is taken from the first minute of the day; a follow-up date
already over in Sweden does not establish a plan; the citizen reads the follow-up on its
Swedish day whatever zone the system that wrote it uses; an answer deadline is answered
until its Swedish day is over; and whether a child's custodian must approve is judged on the
day the child approved, not on the day the coordinator enters it. A search finds a meeting
held on a Swedish day by that date, whatever zone its time was written in. The tests set the hub's
clock (``now_utc`` where the operations and the access checks read it) just after Swedish
midnight, when the Swedish and the UTC day differ.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from sqlalchemy import Engine, MetaData, text

import sip_factory as f
from fhirhttp import JSON_HEADERS, create, outcome_text, plain_careplan
from sip_hub import deadlines
from sip_hub.fhir import search as fhir_search, sip
from sip_hub.fhir.dates import from_us, parse_range, to_us
from sip_hub.identifiers import luhn_check_digit
from sip_hub.messaging import events, vocabulary as vocab
from sip_hub.store import Store
from sip_hub.store.migrate import upgrade
from sip_process import (BUP, SOC, alva_case, approval, at, invitation, one, post, read, ref,
                         respond, string, transition, write_case)

Json = dict[str, Any]
PLAN = "alva-sip"
SWEDEN = ZoneInfo("Europe/Stockholm")
PNR = "http://electronichealth.se/identifier/personnummer"
CITIZEN = f"/fhir/CarePlan/$citizen-view?patient={PNR}|{f.DEMO_PNR}"
CLOCK = "sip_hub.routes.process.now_utc"  # the time the SIP operations run at


def swedish_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), SWEDEN).astimezone(timezone.utc)


def after_swedish_midnight() -> datetime:
    """00:30 tomorrow in Sweden, in UTC (23:30 or 22:30 the day before there)."""
    return swedish_midnight(datetime.now(SWEDEN).date() + timedelta(days=1)) + \
        timedelta(minutes=30)


def swedish_today(now: datetime) -> date:
    return now.astimezone(SWEDEN).date()


# -- the helper --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, low, high", [
    ("2026-12-08", "2026-12-07T23:00:00Z", "2026-12-08T23:00:00Z"),  # winter: UTC+1
    ("2026-07-01", "2026-06-30T22:00:00Z", "2026-07-01T22:00:00Z"),  # summer: UTC+2
    ("2026-10-25", "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"),  # a day of 25 hours
    ("2026-03", "2026-02-28T23:00:00Z", "2026-03-31T22:00:00Z"),
])
def test_a_date_covers_its_swedish_days(value, low, high):
    assert sip.swedish_range(value) == (parse_range(low)[0], parse_range(high)[0] - 1)


def test_a_time_keeps_its_instant_and_the_calendar_its_ends():
    for value in ("2026-12-08T00:30:00+01:00", "2026-12-07T23:30:00Z"):
        assert sip.swedish_range(value) == parse_range(value)
    assert sip.swedish_range("9999-12-31")[1] == parse_range("9999-12-31")[1]
    assert sip.swedish_range("0001-01-01")[0] == parse_range("0001-01-01")[0]
    with pytest.raises(ValueError):
        sip.swedish_range("2026-13-01")


def test_a_time_without_a_zone_is_swedish_time():
    """(a search value may name a time without a zone; R4: "the server's local time zone")"""
    assert sip.swedish_range("2026-12-08T00:30") == parse_range("2026-12-08T00:30+01:00")
    assert sip.swedish_range("2026-07-01T00:30:15") == parse_range("2026-07-01T00:30:15+02:00")


# -- search: a date is a Swedish day ------------------------------------------------------------

def _found(client, query: str) -> list[str]:
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 200, r.text
    return [e["resource"]["id"] for e in r.json().get("entry", [])
            if e["search"]["mode"] == "match"]


def test_a_swedish_date_finds_a_meeting_held_on_that_swedish_day(client):
    """A SIP meeting at 01:30 Swedish time on 10 May 2024, written as an instant in UTC
    (``2024-05-09T23:30:00Z``), was found by ``Appointment?date=2024-05-09`` and not by
    ``date=2024-05-10``: a search date was read as a UTC day. A coordinator listing the
    meetings of 10 May missed it."""
    p = create(client, {"resourceType": "Patient"})["id"]
    meeting = create(client, {
        "resourceType": "Appointment", "status": "booked",
        "start": "2024-05-09T23:30:00Z", "end": "2024-05-09T23:59:00Z",
        "participant": [{"actor": {"reference": f"Patient/{p}"}, "status": "accepted"}]})["id"]
    assert _found(client, "Appointment?date=2024-05-10") == [meeting]
    assert _found(client, "Appointment?date=2024-05-09") == []
    assert _found(client, "Appointment?date=2024-05-10T01:30") == [meeting]  # Swedish time


def test_a_plan_starting_on_a_date_is_in_force_from_swedish_midnight(client):
    """A stored date is a Swedish day too: a plan whose period starts 10 May is in force at
    01:00 Swedish time that day (it was kept as starting at UTC midnight, 02:00 in Sweden)."""
    p = create(client, {"resourceType": "Patient"})["id"]
    plan = create(client, plain_careplan(p, period={"start": "2024-05-10"}))["id"]
    assert _found(client, "CarePlan?date=lt2024-05-10T01:00") == [plan]
    assert _found(client, "CarePlan?date=lt2024-05-09T23:00:00Z") == [plan]
    assert _found(client, "CarePlan?date=lt2024-05-09T21:00:00Z") == []


def test_last_updated_and_history_dates_are_swedish_days():
    """``_lastUpdated=2024-05-10`` and history's ``_since``/``_at`` with a date take it as
    the Swedish day, as the other search dates."""
    for name in ("_lastUpdated", "_since", "_at"):
        value = fhir_search.date_value("2024-05-10", name)
        assert (value.low, value.high) == sip.swedish_range("2024-05-10")
        assert from_us(value.low) == swedish_midnight(date(2024, 5, 10))


def test_the_upgrade_rebuilds_dates_indexed_as_utc_days(client, store: Store):
    """A store indexed by a release that kept dates as UTC days is searched by Swedish days
    once migrated (the index is rebuilt: ``EXTRACTION_VERSION``)."""
    p = create(client, {"resourceType": "Patient"})["id"]
    plan = create(client, plain_careplan(p, period={"start": "2024-05-10"}))["id"]
    with store.engine.begin() as conn:  # (what the earlier release left)
        conn.execute(text("UPDATE idx_date SET low = :low WHERE res_id = :id"),
                     {"low": parse_range("2024-05-10")[0], "id": plan})
        conn.execute(text("UPDATE search_index_state SET fingerprint = 'an older release'"))
    assert _found(client, "CarePlan?date=lt2024-05-09T23:00:00Z") == []
    upgrade(store.engine)
    assert _found(client, "CarePlan?date=lt2024-05-09T23:00:00Z") == [plan]


# -- the age that decides who approves is the person's age when they approved ----------------

def pnr_born(born: date, serial: str = "238") -> str:
    nine = f"{born:%y%m%d}{serial}"
    return f"{born:%Y%m%d}{serial}{luhn_check_digit(nine)}"


def years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def to_meeting(client, headers) -> None:
    out = post(client, f"CarePlan/{PLAN}/$invite", headers[SOC], invitation(f.BUP)).json()
    task = one(out, "task")
    assert respond(client, headers[BUP], task["id"], "accept",
                   ref("representative", f.BUP_REPRESENTATIVE)).status_code == 200
    assert transition(client, headers[SOC], PLAN, "mote").status_code == 200


@pytest.fixture
def came_of_age(client, as_org):
    """Alva's SIP at the meeting; Alva turned 18 three days ago (Swedish today), her mother
    still in the team as custodian, as she was while Alva was a minor."""
    born = years_before(datetime.now(SWEDEN).date(), 18) - timedelta(days=3)
    headers = {org: as_org(org) for org in (SOC, BUP)}
    case = [f.patient(pnr_born(born), id="alva") if r["resourceType"] == "Patient" else r
            for r in alva_case()]
    write_case(client, headers[SOC], case)
    assert transition(client, headers[SOC], PLAN, "kartlaggning").status_code == 200
    to_meeting(client, headers)
    return headers


def test_an_approval_given_at_17_without_a_custodian_is_refused(client, came_of_age):
    """Approved five days ago, when Alva was 17, by Alva alone: a custodian had to approve
    too, though she is 18 when the coordinator enters it."""
    r = transition(client, came_of_age[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", when=at(days=-5)))
    assert r.status_code == 409, r.text
    assert "under 18" in outcome_text(r)
    assert read(client, f"CarePlan/{PLAN}")["status"] == "draft"


@pytest.mark.parametrize("dated", [False, True])
def test_an_approval_given_at_17_with_the_custodian_is_taken(client, came_of_age, dated):
    """The same approval with her mother, as the rule asked on that day (a date: that Swedish
    day), is taken; it is not refused as an adult's custodian acting for her."""
    when = at(days=-5)
    r = transition(client, came_of_age[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", f.MOTHER, when=when[:10] if dated else when))
    assert r.status_code == 200, r.text


def test_an_adult_approval_with_the_former_custodian_is_refused(client, came_of_age):
    """Approved yesterday, when Alva was already 18: her mother is no longer her custodian."""
    r = transition(client, came_of_age[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", f.MOTHER, when=at(days=-1)))
    assert r.status_code == 409, r.text
    assert "adult" in outcome_text(r)


# -- the citizen view names the follow-up day as it is in Sweden -----------------------------

@pytest.mark.parametrize("zone", ["Z", "-05:00"])
def test_the_citizen_view_gives_the_swedish_day_of_the_follow_up(client, portal, zone):
    """A follow-up at 00:30 Swedish time written by a system that sends UTC (or another
    zone) is on that Swedish day, not on the day the value's first ten characters name."""
    swedish = datetime.combine(datetime.now(SWEDEN).date() + timedelta(days=200),
                               time(0, 30), SWEDEN)
    offset = timedelta(0) if zone == "Z" else timedelta(hours=-5)
    written = swedish.astimezone(timezone(offset)).replace(tzinfo=None).isoformat() + zone
    case = [f.sip_careplan(follow_up=written) if r["resourceType"] == "CarePlan" else r
            for r in f.demo_case()]
    write_case(client, {}, case)
    r = client.get(CITIZEN, headers={**portal, "accept": "text/html"})
    assert r.status_code == 200, r.text
    assert f"Planen följs upp {swedish.date().isoformat()}." in r.text, (written, r.text[-400:])


# -- the SIP process's date checks ------------------------------------------------------------

@pytest.fixture
def alva_at_meeting(client, as_org):
    headers = {org: as_org(org) for org in (SOC, BUP)}
    write_case(client, headers[SOC], alva_case())
    assert transition(client, headers[SOC], PLAN, "kartlaggning").status_code == 200
    to_meeting(client, headers)
    return headers


def test_an_approval_dated_today_is_taken_just_after_swedish_midnight(client, alva_at_meeting,
                                                                       monkeypatch):
    """At 00:30 in Sweden the coordinator enters the approval dated today (a date): today has
    begun, so it does not lie in the future."""
    now = after_swedish_midnight()
    monkeypatch.setattr(CLOCK, lambda: now)
    r = transition(client, alva_at_meeting[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", f.MOTHER, when=swedish_today(now).isoformat()))
    assert r.status_code == 200, r.text


def test_a_follow_up_day_over_in_sweden_is_refused_at_establishment(client, alva_at_meeting,
                                                                     monkeypatch):
    """Establishing needs a follow-up date still to come: at 00:30 in Sweden yesterday's date
    has passed, as the deadline scan (follow-up-overdue) reads it."""
    now = after_swedish_midnight()
    yesterday = (swedish_today(now) - timedelta(days=1)).isoformat()
    plan = read(client, f"CarePlan/{PLAN}")
    plan["extension"] = [e for e in plan["extension"] if e["url"] != sip.EXT_FOLLOW_UP]
    plan["extension"].append({"url": sip.EXT_FOLLOW_UP, "valueDateTime": yesterday})
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=orjson.dumps(plan),
                   headers=JSON_HEADERS | alva_at_meeting[SOC])
    assert r.status_code == 200, r.text
    monkeypatch.setattr(CLOCK, lambda: now)
    r = transition(client, alva_at_meeting[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", f.MOTHER, when=at(hours=-1)))
    assert r.status_code == 409, r.text
    assert f"follow-up date ({yesterday}) has passed" in outcome_text(r)


def _without_period(client, headers) -> None:
    """Alva's plan at its meeting, its period (set when a plan is established) taken away."""
    plan = read(client, f"CarePlan/{PLAN}")
    plan.pop("period", None)
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=orjson.dumps(plan),
                   headers=JSON_HEADERS | headers)
    assert r.status_code == 200, r.text


def test_a_plan_approved_just_after_swedish_midnight_applies_from_that_swedish_day(
        client, alva_at_meeting, monkeypatch):
    """Approved at 00:30 in Sweden and entered with the time in UTC (the day before there):
    the plan applies from the Swedish day of the approval (CarePlan.period.start)."""
    _without_period(client, alva_at_meeting[SOC])
    now = after_swedish_midnight()
    monkeypatch.setattr(CLOCK, lambda: now)
    approved = (now - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = transition(client, alva_at_meeting[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", f.MOTHER, when=approved))
    assert r.status_code == 200, r.text
    assert approved[:10] != swedish_today(now).isoformat()
    assert read(client, f"CarePlan/{PLAN}")["period"]["start"] == swedish_today(now).isoformat()


def test_a_plan_established_and_closed_just_after_swedish_midnight_gets_its_end_date(
        client, alva_at_meeting, monkeypatch):
    """Established at 00:30 in Sweden (it applies from that Swedish day) and ended five
    minutes later at Alva's wish: the plan has begun, so the completed plan ends that day
    (CarePlan.period.end, which 1177 and GetCarePlans show), not left without an end as if
    it still applied because the start read as UTC midnight lay an hour or two ahead."""
    _without_period(client, alva_at_meeting[SOC])
    now = after_swedish_midnight()
    the_day = swedish_today(now).isoformat()
    monkeypatch.setattr(CLOCK, lambda: now)
    r = transition(client, alva_at_meeting[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", f.MOTHER, when=the_day))
    assert r.status_code == 200, r.text
    assert read(client, f"CarePlan/{PLAN}")["period"] == {"start": the_day}
    monkeypatch.setattr(CLOCK, lambda: now + timedelta(minutes=5))
    r = transition(client, alva_at_meeting[SOC], PLAN, "avslutad",
                   string("reason", "Alva vill avsluta"))
    assert r.status_code == 200, r.text
    closed = read(client, f"CarePlan/{PLAN}")
    assert closed["status"] == "completed"
    assert closed["period"] == {"start": the_day, "end": the_day}


@pytest.mark.parametrize("days, status", [(0, 200), (-1, 409)])
def test_after_a_follow_up_a_next_follow_up_date_of_today_is_still_to_come(
        client, alva_at_meeting, monkeypatch, days, status):
    """Concluding a follow-up needs a next follow-up date not yet passed, read as the first
    establishment and the deadline scan read it: at 00:30 in Sweden today's date is still to
    come (follow-up-overdue opens only when it is over), yesterday's has passed."""
    h = alva_at_meeting
    assert transition(client, h[SOC], PLAN, "upprattad",
                      *approval("Patient/alva", f.MOTHER)).status_code == 200
    assert transition(client, h[SOC], PLAN, "uppfoljning").status_code == 200
    now = after_swedish_midnight()
    follow_up = (swedish_today(now) + timedelta(days=days)).isoformat()
    plan = read(client, f"CarePlan/{PLAN}")
    plan.pop("meta")
    for ext in plan["extension"]:
        if ext["url"] == sip.EXT_FOLLOW_UP:
            ext["valueDateTime"] = follow_up
    # (an operator's repair: the date a revision would agree)
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=orjson.dumps(plan), headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    monkeypatch.setattr(CLOCK, lambda: now)
    r = transition(client, h[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", f.MOTHER, when=swedish_today(now).isoformat()))
    assert r.status_code == status, r.text
    if status == 409:
        assert f"follow-up date ({follow_up}) has passed" in outcome_text(r)


# -- a consent's dates are Swedish days -------------------------------------------------------

def write_consent(client, as_org, start: date, end: date | None) -> None:
    case = [f.sip_consent(start=start.isoformat(), end=end.isoformat() if end else None)
            if r["resourceType"] == "Consent" else r for r in f.demo_case()]
    write_case(client, as_org(SOC), case)


def test_a_consent_ending_today_grants_nothing_after_swedish_midnight(client, as_org,
                                                                       monkeypatch):
    """Alva's consent ends today: at 00:30 in Sweden the day is over and BUP may read her
    plan no more (domain rule 1)."""
    today = datetime.now(SWEDEN).date()
    write_consent(client, as_org, today - timedelta(days=10), today)
    bup = as_org(BUP)
    assert client.get(f"/fhir/CarePlan/{PLAN}", headers=bup).status_code == 200
    monkeypatch.setattr("sip_hub.access.now_utc", after_swedish_midnight)
    r = client.get(f"/fhir/CarePlan/{PLAN}", headers=bup)
    assert r.status_code == 403, r.text[:300]


def test_a_consent_starting_tomorrow_grants_from_swedish_midnight(client, as_org,
                                                                   monkeypatch):
    tomorrow = datetime.now(SWEDEN).date() + timedelta(days=1)
    write_consent(client, as_org, tomorrow, None)
    bup = as_org(BUP)
    monkeypatch.setattr("sip_hub.access.now_utc",
                        lambda: swedish_midnight(tomorrow) - timedelta(minutes=1))
    assert client.get(f"/fhir/CarePlan/{PLAN}", headers=bup).status_code == 403
    monkeypatch.setattr("sip_hub.access.now_utc", after_swedish_midnight)
    r = client.get(f"/fhir/CarePlan/{PLAN}", headers=bup)
    assert r.status_code == 200, r.text[:300]


def test_a_consent_ended_later_on_its_last_day_is_extended_not_narrowed():
    """An end moved from the date to 23:30 UTC that day (00:30 the next day in Sweden, in
    winter) lengthens the consent: the organisations are told it was granted, not narrowed."""
    old = f.sip_consent(end="2026-12-08")
    new = f.sip_consent(end="2026-12-08T23:30:00Z")
    [fact] = events.classify("Consent", old, new)
    assert (fact.event, fact.reason) == (vocab.CONSENT_CHANGED, vocab.GRANTED)
    [fact] = events.classify("Consent", new, old)
    assert fact.reason == vocab.NARROWED


# -- an answer deadline given as a date is answered until its Swedish day is over ------------

@pytest.fixture
def mapping(client, as_org):
    headers = {org: as_org(org) for org in (SOC, BUP)}
    write_case(client, headers[SOC], alva_case())
    assert transition(client, headers[SOC], PLAN, "kartlaggning").status_code == 200
    return headers


def invite(client, headers, answer_by: str) -> Any:
    return post(client, f"CarePlan/{PLAN}/$invite", headers[SOC],
                invitation(f.BUP, start_days=10, answer_by=answer_by))


def test_an_answer_deadline_of_today_is_taken(client, mapping, monkeypatch):
    """At noon in Sweden, answerBy today (a date) still has the afternoon to come."""
    noon = datetime.combine(datetime.now(SWEDEN).date(), time(12), SWEDEN)
    monkeypatch.setattr(CLOCK, lambda: noon.astimezone(timezone.utc))
    r = invite(client, mapping, noon.date().isoformat())
    assert r.status_code == 200, r.text


def test_an_answer_deadline_on_the_meetings_day_is_refused(client, mapping):
    """The meeting's own day ends after the meeting has begun (13:00)."""
    meeting_day = (datetime.now(SWEDEN) + timedelta(days=10)).date().isoformat()
    r = invite(client, mapping, meeting_day)
    assert r.status_code == 400, r.text
    assert "between now and the meeting" in outcome_text(r)


def scan(store: Store, when: datetime) -> list[str]:
    with store.begin() as tx:
        report = deadlines.scan(tx, when, inactive_days=90)
    return [store.read("Task", tid).json()["code"]["coding"][0]["code"]
            for tid in report.created]


def test_an_unanswered_invitation_is_overdue_at_swedish_midnight(client, store, mapping):
    due = datetime.now(SWEDEN).date() + timedelta(days=2)
    assert invite(client, mapping, due.isoformat()).status_code == 200
    midnight = swedish_midnight(due + timedelta(days=1))
    assert scan(store, midnight - timedelta(minutes=1)) == []
    assert scan(store, midnight + timedelta(minutes=1)) == ["invitation-unanswered"]


# -- migration 0018: grants derived the old way are derived again -----------------------------

SCHOOL = "SE2120000142-SKO7"
T0 = 1_760_000_000_000_000


def test_the_upgrade_ends_the_grants_of_dated_consents_at_swedish_midnight(fresh: Engine):
    dated = f.sip_consent(actor_refs=(f.SOCIAL_SERVICES, f.BUP), start="2026-11-10",
                          end="2027-06-30")
    # Bo's consent names its times: his grants stay as they are.
    timed = f.sip_consent(id="bo-sip", patient_ref="Patient/bo", actor_refs=(f.BUP,),
                          start="2026-11-10T09:00:00+01:00", end="2027-06-30T17:00:00+02:00")
    resources = [f.organization(SOC, "Socialtjänsten", id="socialtjansten"),
                 f.organization(BUP, "BUP", id="bup"), dated, timed]
    lo, hi = (lambda v: parse_range(v)[0]), (lambda v: parse_range(v)[1])
    before = [("alva", SOC, "coordinator", True, lo("2026-11-10"), hi("2027-06-30"), 0),
              ("alva", BUP, "participant", True, lo("2026-11-10"), hi("2027-06-30"), 0),
              ("alva", SCHOOL, "participant", False, None, None, 0),
              ("bo", BUP, "participant", True, 1, 2, 0)]  # (as a write derived them)
    upgrade(fresh, "0017")
    tables = MetaData()
    tables.reflect(fresh)
    with fresh.begin() as conn:
        for i, res in enumerate(resources):
            key = {"res_type": res["resourceType"], "res_id": res["id"]}
            conn.execute(tables.tables["resource_history"].insert(), {
                **key, "version_id": 1, "last_updated": T0 + i, "method": "PUT",
                "content": orjson.dumps(res)})
            conn.execute(tables.tables["resource"].insert(), {
                **key, "version_id": 1, "last_updated": T0 + i, "deleted": False,
                "owner_org": SOC, "withheld": False})
        conn.execute(tables.tables["access_grant"].insert(), [
            dict(zip(("patient_id", "org_hsa_id", "role", "reads", "valid_from",
                      "valid_until", "seq"), row)) for row in before])
    upgrade(fresh)
    with fresh.connect() as conn:
        grants = sorted((p, o, r, bool(re), s, u, q) for p, o, r, re, s, u, q in conn.execute(
            text("SELECT patient_id, org_hsa_id, role, reads, valid_from, valid_until, seq "
                 "FROM access_grant")))
    since = to_us(swedish_midnight(date(2026, 11, 10)))
    until = to_us(swedish_midnight(date(2027, 7, 1))) - 1
    assert from_us(until).isoformat() == "2027-06-30T21:59:59.999999+00:00"
    assert grants == sorted([("alva", SOC, "coordinator", True, since, until, 0),
                             ("alva", BUP, "participant", True, since, until, 0),
                             ("alva", SCHOOL, "participant", False, None, None, 0),
                             ("bo", BUP, "participant", True, 1, 2, 0)])
