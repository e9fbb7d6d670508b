"""Invitations (kallelse), their answers and the SIP deadlines, probed as a coordinator, an
invited organisation and an operator would (docs/domain.md rules 1, 6 and 7)."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import orjson
import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, outcome_text
from sip_hub import cli, deadlines
from sip_hub.fhir.dates import now_utc
from sip_hub.process import LOCAL
from sip_hub.settings import Settings
from sip_process import (BUP, CET, OUTSIDER, SCHOOL, SOC, TASK_SYSTEM, alva_case, approval, at,
                         code, dt, invitation, one, parameters, parts, post, read, ref, respond,
                         string, tasks, transition, values, write_case)

PLAN = "alva-sip"


@pytest.fixture
def h(client, as_org):
    """Alva's SIP in kartläggning, written by SOC; headers of every organisation's client."""
    headers = {org: as_org(org) for org in (SOC, BUP, SCHOOL, OUTSIDER)}
    write_case(client, headers[SOC], alva_case())
    assert transition(client, headers[SOC], PLAN, "kartlaggning").status_code == 200
    return headers


def scan(store, when: datetime, inactive_days: int = 90) -> deadlines.Report:
    with store.begin() as tx:
        return deadlines.scan(tx, when, inactive_days=inactive_days)


def invite(client, h, *orgs, **kw):
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(*orgs, **kw))
    assert r.status_code == 200, r.text
    return r.json()


def task_for(out, org_ref):
    return next(t for t in values(out, "task") if t["owner"]["reference"] == org_ref)


def open_of(client, kind: str, headers, owner: str | None = None) -> list[dict]:
    query = f"code={TASK_SYSTEM}|{kind}&status=requested"
    return tasks(client, query + (f"&owner={owner}" if owner else ""), headers)


def _version(client, path: str) -> str:
    return read(client, path)["meta"]["versionId"]


def meeting(start: str, end: str, *extra) -> dict:
    return parameters(dt("start", start), dt("end", end), string("place", "Ljuset"),
                      parts("invitedOrganization", ref("organization", f.BUP)), *extra)


# -- $invite -----------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [timedelta(seconds=30), timedelta(days=3),
                                    timedelta(days=3000 * 365)])
def test_a_meeting_of_absurd_length_is_a_400_naming_the_end(client, h, length):
    """Appointment.minutesDuration (a positiveInt the hub computes) was 0 for a meeting of 30
    seconds and past 2**31 for one of millennia: a 422 naming an element never sent."""
    start = (datetime.now(CET) + timedelta(days=5)).replace(microsecond=0)
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], meeting(
        start.isoformat(), (start + length).isoformat()))
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == ["Parameters.parameter.where(name='end')"]
    assert _version(client, f"CarePlan/{PLAN}") == "2"


@pytest.mark.parametrize("duration", [
    {"value": -30, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"},
    {"unit": "min"},
    {"value": 30, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
])
def test_an_odd_maximum_length_wish_is_a_400(client, h, duration):
    start = (datetime.now(CET) + timedelta(days=5)).replace(microsecond=0)
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], meeting(
        start.isoformat(), (start + timedelta(hours=1)).isoformat(),
        parts("meetingWishes", {"name": "maxDuration", "valueDuration": duration})))
    assert r.status_code == 400, r.text
    assert "maxDuration" in r.text
    assert _version(client, f"CarePlan/{PLAN}") == "2"


def test_the_default_answer_deadline_is_never_after_the_meeting(client, h):
    out = invite(client, h, f.BUP, start_days=0.5)
    appt, task = one(out, "appointment"), one(out, "task")
    deadline = datetime.fromisoformat(task["restriction"]["period"]["end"])
    assert deadline <= datetime.fromisoformat(appt["start"])
    assert deadline > datetime.now(CET)


# -- $respond ----------------------------------------------------------------------------------

def test_declining_twice_leaves_the_coordinator_one_task_to_follow_up(client, store, h):
    out = invite(client, h, f.BUP)
    tid = one(out, "task")["id"]
    r = respond(client, h[BUP], tid, "decline", string("reason", "Ingen personal"))
    assert r.status_code == 200, r.text
    r = respond(client, h[BUP], tid, "decline", string("reason", "Fortfarande ingen personal"))
    assert r.status_code == 200, r.text
    found = open_of(client, "invitation-declined", h[SOC], f.SOCIAL_SERVICES)
    assert len(found) == 1, [t["description"] for t in found]
    assert "Fortfarande ingen personal" in found[0]["description"]
    assert one(r.json(), "followUpTask")["id"] == found[0]["id"]
    assert scan(store, now_utc()).created == []


def test_an_invitation_to_a_held_meeting_is_not_overdue_for_an_answer(client, store, h):
    """The school never answered; the meeting was held with BUP: the school can no longer
    answer ($respond: 409), so no Task may ask it to."""
    out = invite(client, h, f.BUP, f.SCHOOL, start_days=1)
    assert respond(client, h[BUP], task_for(out, f.BUP)["id"], "accept",
                   ref("representative", f.BUP_REPRESENTATIVE)).status_code == 200
    assert transition(client, h[SOC], PLAN, "mote").status_code == 200
    school = task_for(out, f.SCHOOL)
    # Nor is the invitation itself left open with the school for ever.
    closed = read(client, f"Task/{school['id']}", h[SCHOOL])
    assert closed["status"] == "cancelled" and "utan svar" in closed["statusReason"]["text"]
    assert read(client, f"Task/{task_for(out, f.BUP)['id']}", h[BUP])["status"] == "accepted"
    r = respond(client, h[SCHOOL], school["id"], "decline", string("reason", "Sent"))
    assert r.status_code == 409
    scan(store, now_utc() + timedelta(days=2))
    assert open_of(client, "invitation-unanswered", h[SCHOOL], f.SCHOOL) == []


def test_an_invitation_to_a_cancelled_meeting_is_not_overdue_for_an_answer(client, store, h):
    out = invite(client, h, f.BUP, answer_by=at(days=2))
    appt = one(out, "appointment")
    appt.pop("meta")
    appt["status"] = "cancelled"
    r = client.put(f"/fhir/Appointment/{appt['id']}", content=orjson.dumps(appt),
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 200, r.text
    scan(store, now_utc() + timedelta(days=3))
    assert open_of(client, "invitation-unanswered", h[BUP], f.BUP) == []


def test_an_unanswered_task_closes_when_its_meeting_is_held(client, store, h):
    out = invite(client, h, f.BUP, f.SCHOOL, start_days=1, answer_by=at(hours=12))
    assert respond(client, h[BUP], task_for(out, f.BUP)["id"], "accept",
                   ref("representative", f.BUP_REPRESENTATIVE)).status_code == 200
    [tid] = scan(store, now_utc() + timedelta(hours=13)).created
    assert read(client, f"Task/{tid}", h[SCHOOL])["owner"] == {"reference": f.SCHOOL}
    assert transition(client, h[SOC], PLAN, "mote").status_code == 200
    scan(store, now_utc() + timedelta(hours=14))
    assert read(client, f"Task/{tid}", h[SCHOOL])["status"] != "requested"


def test_a_stale_if_match_on_respond_is_a_412_and_nothing_changes(client, h):
    out = invite(client, h, f.BUP)
    tid = one(out, "task")["id"]
    assert respond(client, h[BUP], tid, "propose-time", dt("start", at(days=12)),
                   dt("end", at(days=12, hours=1))).status_code == 200
    r = post(client, f"Task/{tid}/$respond", h[BUP] | {"If-Match": 'W/"1"'},
             parameters(code("answer", "decline"), string("reason", "Nej")))
    assert r.status_code == 412, r.text
    assert read(client, f"Task/{tid}")["status"] == "in-progress"
    assert open_of(client, "invitation-declined", h[SOC]) == []


def test_a_stale_if_match_on_invite_is_a_412_and_nothing_is_written(client, h):
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC] | {"If-Match": 'W/"1"'},
             invitation(f.BUP))
    assert r.status_code == 412, r.text
    assert read(client, "Appointment?supporting-info=CarePlan/alva-sip").get("total", 0) == 0
    assert _version(client, f"CarePlan/{PLAN}") == "2"


def test_an_outsider_sees_neither_invitation_nor_deadline_tasks(client, store, h):
    out = invite(client, h, f.BUP, answer_by=at(days=1))
    [tid] = scan(store, now_utc() + timedelta(days=2)).created
    for path in (f"Task/{tid}", f"Task/{one(out, 'task')['id']}"):
        assert client.get(f"/fhir/{path}", headers=h[OUTSIDER]).status_code in (403, 404)
    assert tasks(client, f"code={TASK_SYSTEM}|invitation-unanswered", h[OUTSIDER]) == []
    assert [t["id"] for t in open_of(client, "invitation-unanswered", h[BUP])] == [tid]


def test_a_representative_of_another_principal_is_refused(client, h):
    """Kim is a social secretary of the kommun (HSA-id SE2120000142-…): not BUP's
    (Region Stockholm, SE2321000016-…) to name as its representative."""
    out = invite(client, h, f.BUP)
    r = respond(client, h[BUP], one(out, "task")["id"], "accept",
                ref("representative", f.COORDINATOR))
    assert r.status_code == 400, r.text
    assert "representative" in outcome_text(r)


# -- deadlines ---------------------------------------------------------------------------------

def test_a_scan_as_of_a_later_time_does_not_silence_the_real_deadline(client, store, h):
    """An operator runs ``sip-hub deadlines --at`` a hundred days ahead to see what will be
    due; the normal round afterwards withdraws those Tasks, and when the day comes the
    SIP's inactivity must still be reported."""
    ahead = now_utc() + timedelta(days=100)
    [tid] = scan(store, ahead).created
    scan(store, now_utc())  # the next normal round
    assert read(client, f"Task/{tid}", h[SOC])["status"] != "requested"
    scan(store, ahead)  # the day has come
    assert [t["id"] for t in open_of(client, "inactive-sip", h[SOC])] == [tid]


def test_a_scan_as_of_an_earlier_time_does_not_silence_an_open_deadline(client, store, h):
    """``sip-hub deadlines --at`` a day in the past closes what was not yet due then; the
    next round must open it again, not leave the coordinator without it."""
    later = now_utc() + timedelta(days=91)
    [tid] = scan(store, later).created
    scan(store, now_utc() - timedelta(days=1))
    report = scan(store, later)
    assert report.created == [tid]
    task = read(client, f"Task/{tid}", h[SOC])
    assert task["status"] == "requested" and task["owner"] == {"reference": f.SOCIAL_SERVICES}
    assert scan(store, later).created == []  # and only once


def _established_with_follow_up(client, h, follow_up: str) -> None:
    plan = read(client, f"CarePlan/{PLAN}", h[SOC])
    plan.pop("meta")
    for e in plan["extension"]:
        if e["url"].endswith("/sip-follow-up"):
            e["valueDateTime"] = follow_up
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=orjson.dumps(plan),
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 200, r.text
    out = invite(client, h, f.BUP, start_days=1)
    assert respond(client, h[BUP], one(out, "task")["id"], "accept",
                   ref("representative", f.BUP_REPRESENTATIVE)).status_code == 200
    assert transition(client, h[SOC], PLAN, "mote").status_code == 200
    r = transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER))
    assert r.status_code == 200, r.text


def test_a_follow_up_date_passes_at_swedish_midnight(client, store, h):
    """A follow-up date without a time ("2027-04-05") has passed when that day is over in
    Sweden (as the three days after a meeting are Swedish calendar days), not two hours
    later when it is over in UTC."""
    follow_up = (datetime.now(CET) + timedelta(days=120)).date()
    _established_with_follow_up(client, h, follow_up.isoformat())
    midnight = datetime.combine(follow_up + timedelta(days=1), time(0), LOCAL)
    assert scan(store, midnight - timedelta(minutes=1), inactive_days=1000).created == []
    report = scan(store, midnight + timedelta(minutes=30), inactive_days=1000)
    [task] = open_of(client, "follow-up-overdue", h[SOC], f.SOCIAL_SERVICES)
    assert report.created == [task["id"]]


def test_three_days_after_a_meeting_are_swedish_calendar_days_across_dst(client, store, h):
    """A meeting ending late on Saturday 2027-03-27 (CET); summer time starts that night:
    the plan is overdue at midnight (CEST) after Tuesday 2027-03-30."""
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], parameters(
        dt("start", "2027-03-27T22:00:00+01:00"), dt("end", "2027-03-27T23:30:00+01:00"),
        string("place", "Ljuset"), parts("invitedOrganization", ref("organization", f.BUP))))
    assert r.status_code == 200, r.text
    assert respond(client, h[BUP], one(r.json(), "task")["id"], "accept",
                   ref("representative", f.BUP_REPRESENTATIVE)).status_code == 200
    assert transition(client, h[SOC], PLAN, "mote").status_code == 200
    due = datetime.fromisoformat("2027-03-31T00:00:00+02:00")
    assert scan(store, due - timedelta(seconds=1), inactive_days=1000).created == []
    report = scan(store, due, inactive_days=1000)
    [task] = open_of(client, "document-plan", h[SOC], f.SOCIAL_SERVICES)
    assert report.created == [task["id"]]
    assert datetime.fromisoformat(task["restriction"]["period"]["end"]) == due


@pytest.mark.parametrize("at_value", [
    "",
    "  ", "2027-02-30T10:00:00+01:00", "2027-01-01T10:00:00+15:00"])
def test_the_command_line_refuses_a_bad_time_to_scan_as_of(tmp_path, monkeypatch, capsys,
                                                           at_value):
    monkeypatch.setenv("SIP_HUB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SIP_HUB_DATABASE_URL", raising=False)
    assert cli.main(["migrate"]) == 0
    capsys.readouterr()
    assert cli.main(["deadlines", "--at", at_value]) == 2
    assert "--at" in capsys.readouterr().err


@pytest.mark.parametrize("days", [100, -1])
def test_the_round_after_one_as_of_another_time_puts_the_tasks_right(client, store, h, days,
                                                                      monkeypatch):
    """``sip-hub deadlines --at`` (a full round as of another time) ahead opens Tasks not due
    yet, and one in the past closes Tasks that are: the next normal round must put them
    right, also when nothing was written in the SIP since."""
    monkeypatch.setattr(deadlines, "IN_FLIGHT", timedelta(0))  # (no write is in flight)
    job = deadlines.Scheduler(store, Settings(env="dev"), None)
    job.run_once()  # the rounds so far
    real = now_utc() + timedelta(days=91 if days < 0 else 0)  # (the inactivity due, or not)
    if days < 0:
        [tid] = deadlines.run(store, real).created  # opened when it was due
        job.run_once(real + timedelta(days=days))  # (not due then: closed)
    else:
        [tid] = job.run_once(real + timedelta(days=days)).created
    deadlines.run(store, real)  # the next normal round
    want = "requested" if days < 0 else "completed"
    assert read(client, f"Task/{tid}", h[SOC])["status"] == want


@pytest.mark.parametrize(("start", "end"), [
    (at(days=12), at(days=11)),  # ends before it starts
    (at(days=12), at(days=12)),  # no length
    (at(days=12), "9999-12-31T10:00:00+01:00"),  # lasts for millennia
])
def test_an_odd_proposed_time_is_a_400_naming_the_end(client, h, start, end):
    out = invite(client, h, f.BUP)
    tid = one(out, "task")["id"]
    r = respond(client, h[BUP], tid, "propose-time", dt("start", start), dt("end", end))
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == ["Parameters.parameter.where(name='end')"]
    assert read(client, f"Task/{tid}")["status"] == "requested"
