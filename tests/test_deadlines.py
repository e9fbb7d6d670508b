"""Deadlines of the SIP process: the hub opens one Task per overdue obligation and closes it
when the obligation is met (docs/domain.md rules 6 and 7).

The SIPs are driven over HTTP at the real time; ``deadlines.scan`` is then run as of a later
time, as the periodic job in the API process would.
"""

from __future__ import annotations

import json
from datetime import datetime, time, timedelta

import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body
from sip_hub import bundles, cli, deadlines
from sip_hub.fhir.dates import now_utc
from sip_hub.interactions import Context
from sip_hub.process import LOCAL
from sip_hub.settings import Settings
from sip_hub.store import Store
from sip_hub.store.engine import make_engine
from sip_process import (BUP, SCHOOL, SOC, TASK_SYSTEM, alva_case, approval, at, day,
                         invitation, one, post, read, ref, respond, string, tasks, transition,
                         values, write_case)

PLAN = "alva-sip"


@pytest.fixture
def h(client, as_org):
    headers = {org: as_org(org) for org in (SOC, BUP, SCHOOL)}
    write_case(client, headers[SOC], alva_case())
    assert transition(client, headers[SOC], PLAN, "kartlaggning").status_code == 200
    return headers


def scan(store: Store, when: datetime, inactive_days: int = 90) -> deadlines.Report:
    with store.begin() as tx:
        return deadlines.scan(tx, when, inactive_days=inactive_days)


def kinds(report: deadlines.Report, store: Store) -> list[str]:
    out = []
    for tid in report.created:
        cur = store.read("Task", tid)
        assert cur is not None
        out.append(cur.json()["code"]["coding"][0]["code"])
    return sorted(out)


def overdue(client, kind: str, owner: str, headers) -> list[dict]:
    return tasks(client, f"code={TASK_SYSTEM}|{kind}&owner={owner}&status=requested", headers)


def invite(client, h, *orgs, **kw):
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(*orgs, **kw))
    assert r.status_code == 200, r.text
    return r.json()


def test_nothing_is_overdue_in_a_fresh_sip(client, store, h):
    assert scan(store, now_utc()).created == []


def test_plan_not_documented_three_days_after_the_meeting(client, store, h):
    out = invite(client, h, f.BUP, start_days=1)
    task = one(out, "task")
    assert respond(client, h[BUP], task["id"], "accept",
                   ref("representative", f.BUP_REPRESENTATIVE)).status_code == 200
    assert transition(client, h[SOC], PLAN, "mote").status_code == 200
    end = datetime.fromisoformat(one(out, "appointment")["end"]).astimezone(LOCAL)
    # Three calendar days after the meeting day are allowed (Swedish local time).
    due = datetime.combine(end.date() + timedelta(days=4), time(0), LOCAL)
    last_allowed = due - timedelta(minutes=1)
    assert scan(store, last_allowed).created == []
    report = scan(store, last_allowed + timedelta(minutes=2))
    assert kinds(report, store) == ["document-plan"]
    assert scan(store, last_allowed + timedelta(days=1)).created == []  # one open Task
    found = overdue(client, "document-plan", f.SOCIAL_SERVICES, h[SOC])
    assert [t["id"] for t in found] == report.created
    doc = found[0]
    assert doc["basedOn"] == [{"reference": f"CarePlan/{PLAN}"}]
    assert doc["focus"] == {"reference": f"Appointment/{one(out, 'appointment')['id']}"}
    assert doc["identifier"][0]["system"] == "https://sip-hub.se/fhir/NamingSystem/sip-task"
    assert doc["restriction"]["period"]["end"] == due.isoformat()
    assert overdue(client, "document-plan", f.BUP, h[BUP]) == []
    # Establishing the plan meets the deadline: the Task is completed at once.
    r = transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER))
    assert r.status_code == 200, r.text
    assert {"reference": f"Task/{doc['id']}"} in values(r.json(), "closedTask")
    assert read(client, f"Task/{doc['id']}", h[SOC])["status"] == "completed"
    assert scan(store, last_allowed + timedelta(days=2)).created == []


def test_follow_up_date_passed_without_a_follow_up(client, store, h):
    out = invite(client, h, f.BUP, start_days=1)
    respond(client, h[BUP], one(out, "task")["id"], "accept",
            ref("representative", f.BUP_REPRESENTATIVE))
    transition(client, h[SOC], PLAN, "mote")
    r = transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER))
    assert r.status_code == 200
    later = now_utc() + timedelta(days=121)  # the follow-up date is 120 days ahead
    report = scan(store, later, inactive_days=1000)
    assert kinds(report, store) == ["follow-up-overdue"]
    assert scan(store, later + timedelta(days=3), inactive_days=1000).created == []
    [task] = overdue(client, "follow-up-overdue", f.SOCIAL_SERVICES, h[SOC])
    r = transition(client, h[SOC], PLAN, "uppfoljning")
    assert r.status_code == 200
    assert read(client, f"Task/{task['id']}", h[SOC])["status"] == "completed"
    assert scan(store, later, inactive_days=1000).created == []


def test_inactive_sip_until_something_is_written(client, store, h):
    later = now_utc() + timedelta(days=91)
    assert scan(store, now_utc() + timedelta(days=89)).created == []
    report = scan(store, later)
    assert kinds(report, store) == ["inactive-sip"]
    assert scan(store, later + timedelta(days=5)).created == []
    [task] = overdue(client, "inactive-sip", f.SOCIAL_SERVICES, h[SOC])
    assert "avsluta" in task["description"]
    plan = read(client, f"CarePlan/{PLAN}", h[SOC])
    plan["description"] = "Kartläggningen pågår igen efter sommaren."
    r = client.put(f"/fhir/CarePlan/{PLAN}", content=body(plan)["content"],
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 200
    report = scan(store, now_utc())
    assert report.closed == [task["id"]] and report.created == []
    assert read(client, f"Task/{task['id']}", h[SOC])["status"] == "completed"


def test_the_inactivity_period_is_a_setting(client, store, h):
    assert Settings().sip_inactive_days == 90
    assert kinds(scan(store, now_utc() + timedelta(days=31), inactive_days=30),
                 store) == ["inactive-sip"]


def test_closing_the_sip_cancels_its_deadline_tasks(client, store, h):
    [tid] = scan(store, now_utc() + timedelta(days=91)).created
    r = transition(client, h[SOC], PLAN, "avslutad", string("reason", "Inaktuell"))
    assert r.status_code == 200
    assert read(client, f"Task/{tid}", h[SOC])["status"] == "cancelled"
    assert scan(store, now_utc() + timedelta(days=200)).created == []


def test_tasks_of_a_plan_that_went_away_are_cancelled(client, store, h):
    [tid] = scan(store, now_utc() + timedelta(days=91)).created
    assert client.delete(f"/fhir/CarePlan/{PLAN}").status_code == 200
    report = scan(store, now_utc())
    assert report.closed == [tid]
    assert read(client, f"Task/{tid}")["status"] == "cancelled"


def test_unanswered_invitations_are_the_invited_organisations_tasks(client, store, h):
    out = invite(client, h, f.BUP, f.SCHOOL, answer_by=at(days=2))
    bup_task = next(t for t in values(out, "task") if t["owner"]["reference"] == f.BUP)
    school_task = next(t for t in values(out, "task") if t["owner"]["reference"] == f.SCHOOL)
    assert respond(client, h[BUP], bup_task["id"], "accept",
                   ref("representative", f.BUP_REPRESENTATIVE)).status_code == 200
    later = now_utc() + timedelta(days=3)
    report = scan(store, later)
    assert kinds(report, store) == ["invitation-unanswered"]
    assert scan(store, later).created == []
    [task] = overdue(client, "invitation-unanswered", f.SCHOOL, h[SCHOOL])
    assert task["focus"] == {"reference": f"Task/{school_task['id']}"}
    assert task["requester"] == {"reference": f.SOCIAL_SERVICES}
    assert overdue(client, "invitation-unanswered", f.BUP, h[BUP]) == []
    # The coordinator sees it too, by requester.
    assert tasks(client, f"code={TASK_SYSTEM}|invitation-unanswered&requester="
                         f"{f.SOCIAL_SERVICES}&status=requested", h[SOC])[0]["id"] == task["id"]
    # Answering (even declining) ends the wait; the decline is the coordinator's to follow up.
    r = respond(client, h[SCHOOL], school_task["id"], "decline",
                string("reason", "Elevhälsan har ingen personal den veckan"))
    assert r.status_code == 200
    assert read(client, f"Task/{task['id']}", h[SOC])["status"] == "completed"
    assert scan(store, later).created == []
    [declined] = overdue(client, "invitation-declined", f.SOCIAL_SERVICES, h[SOC])
    assert "Elevhälsan har ingen personal" in declined["description"]


def test_a_decline_is_resolved_by_inviting_again_or_by_the_coordinator(client, store, h):
    out = invite(client, h, f.BUP, f.SCHOOL)
    bup_task = next(t for t in values(out, "task") if t["owner"]["reference"] == f.BUP)
    r = respond(client, h[BUP], bup_task["id"], "decline", string("reason", "Ej aktuell"))
    declined = one(r.json(), "followUpTask")
    # Inviting BUP to a new meeting resolves it.
    again = invite(client, h, f.BUP, start_days=20)
    assert one(again, "task")["id"] != bup_task["id"]
    assert read(client, f"Task/{declined['id']}", h[SOC])["status"] == "completed"
    # A second decline: the coordinator may close its follow-up Task itself.
    r = respond(client, h[BUP], one(again, "task")["id"], "decline", string("reason", "Nej"))
    follow = one(r.json(), "followUpTask")
    done = read(client, f"Task/{follow['id']}", h[SOC]) | {
        "status": "completed", "note": [{"text": "Ringt BUP, de kommer på nästa möte"}]}
    r = client.put(f"/fhir/Task/{follow['id']}", content=body(done)["content"],
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 200, r.text
    # Deadline Tasks are otherwise the hub's to close.
    report = scan(store, now_utc() + timedelta(days=95))
    assert kinds(report, store) == ["document-plan", "inactive-sip", "invitation-unanswered"]
    tid = report.created[0]
    watched = read(client, f"Task/{tid}", h[SOC]) | {"status": "completed"}
    r = client.put(f"/fhir/Task/{tid}", content=body(watched)["content"],
                   headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 409


def test_deadline_tasks_are_written_by_the_hub_and_audited(client, store, h, anonymous):
    with store.begin() as tx:
        [tid] = deadlines.scan(tx, now_utc() + timedelta(days=91),
                               audit=anonymous.app.state.audit).created
    cur = store.read("Task", tid)
    assert cur is not None and cur.owner is None  # the hub's, not an organisation's
    log = read(client, "AuditEvent?patient=alva&_count=500")
    [event] = [e["resource"] for e in log["entry"] if {"reference": f"Task/{tid}"} in [
        x.get("what") for x in e["resource"]["entity"]]]
    assert event["action"] == "C" and event["agent"] == [
        {"who": {"display": "sip_hub"}, "requestor": True}]
    assert {"reference": "Patient/alva"} in [e["what"] for e in event["entity"]]


# -- the command line and the periodic job --------------------------------------------------

@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SIP_HUB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SIP_HUB_DATABASE_URL", raising=False)
    assert cli.main(["migrate"]) == 0
    return tmp_path


def test_cli_scans_the_deadlines(cli_env, capsys):
    store = Store(make_engine(Settings().database_url))
    entries = [{"resource": r, "request": {"method": "PUT",
                                           "url": f"{r['resourceType']}/{r['id']}"}}
               for r in alva_case()]
    bundles.process(store, Context("http://hub.test/fhir"),
                    {"resourceType": "Bundle", "type": "transaction", "entry": entries},
                    "minimal")
    capsys.readouterr()
    assert cli.main(["deadlines"]) == 0
    assert json.loads(capsys.readouterr().out) == {"created": [], "closed": []}
    when = (now_utc() + timedelta(days=100)).isoformat()
    assert cli.main(["deadlines", "--at", when]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["created"]) == 1 and report["created"][0].startswith("sip-inactive-sip-")
    assert cli.main(["deadlines", "--at", when]) == 0
    assert json.loads(capsys.readouterr().out)["created"] == []
    assert cli.main(["deadlines", "--at", "tomorrow"]) == 2
    assert "not a FHIR dateTime" in capsys.readouterr().err


@pytest.mark.parametrize("at_value, swedish", [
    ("2027-01-15", "2027-01-15T00:00:00+01:00"),  # (winter: UTC+1)
    ("2027-04-05", "2027-04-05T00:00:00+02:00"),  # (summer: UTC+2)
    ("2027-04-05T12:00:00Z", "2027-04-05T14:00:00+02:00")])
def test_cli_scans_as_of_the_start_of_a_swedish_day(cli_env, capsys, monkeypatch, at_value,
                                                    swedish):
    """``sip-hub deadlines --at 2027-04-05`` looks ahead as of the start of that day in
    Sweden, as every date of the SIP is read (not at UTC midnight, two hours later); a
    dateTime is its instant."""
    seen = []
    monkeypatch.setattr(deadlines.Scheduler, "run_once",
                        lambda self, at=None: seen.append(at) or deadlines.Report())
    assert cli.main(["deadlines", "--at", at_value]) == 0
    assert seen == [datetime.fromisoformat(swedish)]


@pytest.mark.parametrize(("env", "minutes", "enabled"), [
    ("dev", 5, True), ("production", 1, True), ("dev", 0, False), ("test", 5, False)])
def test_the_periodic_scan_is_configurable_and_off_in_tests(store, env, minutes, enabled):
    settings = Settings(env=env, sip_deadline_scan_minutes=minutes)
    job = deadlines.Scheduler(store, settings, None)
    assert job.enabled is enabled
    job.start()
    assert (job._thread is not None) is enabled
    job.stop()
    assert job._thread is None
    assert job.run_once().created == []


def test_the_periodic_scan_survives_a_failing_round(store, caplog, monkeypatch):
    job = deadlines.Scheduler(store, Settings(env="dev", sip_deadline_scan_minutes=1), None)
    calls = []

    def boom() -> deadlines.Report:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database hiccup")
        job._stop.set()
        return deadlines.Report()
    monkeypatch.setattr(job, "run_once", boom)
    job.interval = 0.01
    job._run()
    assert len(calls) == 2 and "deadline scan failed" in caplog.text


def test_one_process_scans_at_a_time(store, h):
    job = deadlines.Scheduler(store, Settings(env="dev"), None)
    with store.exclusive("deadline-scan") as first:  # another worker process is scanning
        assert first
        assert job.run_once().skipped
        with store.exclusive("deadline-scan") as second:
            assert not second
    assert not job.run_once().skipped
    with store.exclusive("deadline-scan") as again:
        assert again


def test_a_meeting_on_the_calendars_last_day_is_invited_to_without_a_deadline_after_it(
        client, store, h):
    """A meeting ending past year 9999 in UTC: the plan's deadline three days after it
    overflowed datetime arithmetic, and the deadline scan failed on the plan at every round."""
    body = invitation(f.BUP)
    for p in body["parameter"]:
        if p["name"] in ("start", "end"):
            p["valueDateTime"] = "9999-12-31T10:00:00+01:00" if p["name"] == "start" else \
                "9999-12-31T23:00:00-14:00"
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], body)
    assert r.status_code == 200, r.text
    invited = one(r.json(), "task")
    assert invited["restriction"]["period"]["end"].startswith("9999-12-29")  # two days before
    assert respond(client, h[BUP], invited["id"], "accept",
                   ref("representative", f.BUP_REPRESENTATIVE)).status_code == 200
    assert transition(client, h[SOC], PLAN, "mote").status_code == 200
    assert scan(store, now_utc()).created == []
    later = kinds(scan(store, now_utc() + timedelta(days=400)), store)
    assert "document-plan" not in later and later  # (the SIP's inactivity is due by then)


# -- only an organisation the consent covers is asked to answer ---------------------------------

def put(client, headers, res: dict):
    r = client.put(f"/fhir/{res['resourceType']}/{res['id']}", content=json.dumps(res),
                   headers=JSON_HEADERS | headers)
    assert r.status_code in (200, 201), r.text


def consent(client) -> dict:
    out = read(client, "Consent/alva-sip-samtycke")
    out.pop("meta")
    return out


def uncover_school(client, h, how: str, *, end_days: int = 1) -> None:
    """Alva's consent no longer covers the school: narrowed (the school taken out) or ended
    (the consent naming it ends in ``end_days`` days; a second one keeps BUP and SOC)."""
    c = consent(client)
    if how == "narrowed":
        c["provision"]["actor"] = [a for a in c["provision"]["actor"]
                                   if a["reference"]["reference"] != f.SCHOOL]
        put(client, h[SOC], c)
        return
    c["provision"]["period"]["end"] = day(end_days)
    put(client, h[SOC], c)
    put(client, h[SOC], f.sip_consent(id="alva-sip-samtycke-2", start=day(-1), end=day(365),
                                       actor_refs=(f.SOCIAL_SERVICES, f.BUP, f.MOTHER)))


def owners(client, report: deadlines.Report) -> list[str]:
    return sorted(read(client, f"Task/{t}")["owner"]["reference"] for t in report.created)


@pytest.mark.parametrize("how", ["narrowed", "ended"])
def test_no_unanswered_invitation_task_for_an_organisation_the_consent_no_longer_covers(
        client, store, h, how):
    """The school, invited, is no longer covered by Alva's consent when the answer deadline
    passes (she took it out, or the consent naming it ended): it can neither read nor answer
    the invitation ($respond answers 403), so no Task tells it (and the coordinator) that it
    fails to; BUP, still covered, gets its Task."""
    out = invite(client, h, f.BUP, f.SCHOOL, answer_by=at(days=2))
    school = next(t for t in values(out, "task") if t["owner"]["reference"] == f.SCHOOL)
    uncover_school(client, h, how)
    report = scan(store, now_utc() + timedelta(days=3))
    assert owners(client, report) == [f.BUP]
    if how == "narrowed":
        r = respond(client, h[SCHOOL], school["id"], "decline", string("reason", "Sent"))
        assert r.status_code == 403, r.text
    assert overdue(client, "invitation-unanswered", f.SCHOOL, {}) == []


@pytest.mark.parametrize("how", ["narrowed", "ended"])
def test_the_unanswered_task_of_an_organisation_no_longer_covered_is_completed(
        client, store, h, how, monkeypatch):
    """The school's invitation-unanswered Task is open when the consent stops covering it:
    the next round completes it, without anything else written in the SIP (the consent
    written: the round looks at the person's SIP; the consent's end: due by time)."""
    monkeypatch.setattr(deadlines, "IN_FLIGHT", timedelta(0))  # (no write is in flight)
    invite(client, h, f.BUP, f.SCHOOL, answer_by=at(days=2))
    later = now_utc() + timedelta(days=3)
    assert owners(client, deadlines.run(store, later)) == [f.BUP, f.SCHOOL]
    [task] = overdue(client, "invitation-unanswered", f.SCHOOL, {})
    uncover_school(client, h, how, end_days=5)
    if how == "ended":  # (still covered: nothing changes before the consent's end)
        assert deadlines.run(store, later).closed == []
        later += timedelta(days=4)
    report = deadlines.run(store, later)
    assert not report.full and report.closed == [task["id"]]
    assert read(client, f"Task/{task['id']}")["status"] == "completed"
    assert [t["owner"]["reference"] for t in tasks(
        client, f"code={TASK_SYSTEM}|invitation-unanswered&status=requested", {})] == [f.BUP]
