"""Deadline rounds: each looks only at the SIPs whose deadline Tasks can have changed since the
last completed round (written since, or a deadline come), in short transactions, from a
watermark kept in the database.

Two SIPs: Alva's (driven over HTTP as in test_deadlines) and Gösta's, which the tests leave
alone. Rounds run as of later times, as the periodic job would; every test runs on SQLite and,
when configured, PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body
from sip_hub import cli, deadlines, process
from sip_hub.fhir.dates import now_utc, to_us
from sip_hub.process import LOCAL
from sip_hub.settings import Settings
from sip_hub.store import Store
from sip_hub.store import deadlines as store_scan
from sip_hub.store.engine import make_engine
from sip_process import (BUP, SOC, TASK_SYSTEM, alva_case, approval, at, gosta_case, invitation,
                         one, post, read, ref, respond, tasks, transition, write_case)

PLAN, OTHER = "alva-sip", "gosta-sip"
VARDCENTRAL = f.VARDCENTRAL_HSA
WRITES_IN_FLIGHT = deadlines.IN_FLIGHT


@pytest.fixture(autouse=True)
def settled(monkeypatch):
    """A test's writes are committed before the next round starts: none is in flight."""
    monkeypatch.setattr(deadlines, "IN_FLIGHT", timedelta(0))


@pytest.fixture
def h(client, as_org):
    headers = {org: as_org(org) for org in (SOC, BUP, VARDCENTRAL)}
    write_case(client, headers[SOC], alva_case())
    write_case(client, headers[VARDCENTRAL], gosta_case())
    assert transition(client, headers[SOC], PLAN, "kartlaggning").status_code == 200
    return headers


@pytest.fixture
def looked(monkeypatch) -> list[str]:
    """The plans reconciled (by a round, or by an operation's own reconcile)."""
    seen: list[str] = []
    real = deadlines._decide

    def spy(op, plan, sip_of):
        seen.append(plan.id)
        return real(op, plan, sip_of)
    monkeypatch.setattr(deadlines, "_decide", spy)
    return seen


def run(store: Store, looked: list[str], when: datetime | None = None,
        **kw) -> tuple[deadlines.Report, list[str]]:
    """One round; its report and the plans it reconciled."""
    looked.clear()
    report = deadlines.run(store, when or now_utc(), **kw)
    assert report.reconciled == len(looked)
    return report, sorted(looked)


def kinds(report: deadlines.Report, store: Store) -> list[str]:
    found = [store.read("Task", tid) for tid in report.created]
    return sorted(s.json()["code"]["coding"][0]["code"] for s in found if s is not None)


def mark(store: Store) -> store_scan.Watermark | None:
    with store.begin(write=False) as tx:
        return store_scan.watermark(tx)


def put(client, path: str, res: dict) -> None:
    r = client.put(f"/fhir/{path}", content=body(res)["content"], headers=JSON_HEADERS)
    assert r.status_code == 200, r.text


def invite(client, h, **kw) -> dict:
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(f.BUP, **kw))
    assert r.status_code == 200, r.text
    return r.json()


def hold_meeting(client, h) -> dict:
    out = invite(client, h, start_days=1)
    assert respond(client, h[BUP], one(out, "task")["id"], "accept",
                   ref("representative", f.BUP_REPRESENTATIVE)).status_code == 200
    assert transition(client, h[SOC], PLAN, "mote").status_code == 200
    return out


# -- the first round, and rounds with nothing to do ---------------------------------------------

def test_the_first_round_looks_at_every_open_plan_in_batches(store, h, looked, monkeypatch):
    batches: list[list[str]] = []
    real = deadlines._decide_batch

    def spy(op, plan_ids):
        batches.append(list(plan_ids))
        return real(op, plan_ids)
    monkeypatch.setattr(deadlines, "_decide_batch", spy)
    assert mark(store) is None
    started = to_us(now_utc())
    report, plans = run(store, looked, batch=1)
    assert report.full and plans == [PLAN, OTHER]
    assert batches == [[PLAN], [OTHER]]  # one transaction each
    done = mark(store)
    assert done is not None and done.inactive_days == 90
    assert started <= done.scanned_at <= to_us(now_utc())
    batches.clear()
    report, plans = run(store, looked)
    assert not report.full and plans == [] and batches == []


def test_a_round_with_nothing_written_or_due_looks_at_no_plan(store, h, looked):
    run(store, looked)
    for days in (0, 30, 89):  # the inactivity horizon (90 days) is not reached
        report, plans = run(store, looked, now_utc() + timedelta(days=days))
        assert (report.full, plans, report.created, report.closed) == (False, [], [], [])


# -- (a) plans written since the last round ------------------------------------------------------

def test_a_plan_written_since_the_last_round_is_looked_at_next_round(client, store, h, looked):
    report, _ = run(store, looked, now_utc() + timedelta(days=91))
    assert kinds(report, store) == ["inactive-sip", "inactive-sip"]
    plan = read(client, f"CarePlan/{PLAN}")
    plan["description"] = "Kartläggningen pågår igen efter sommaren."
    put(client, f"CarePlan/{PLAN}", plan)
    report, plans = run(store, looked)
    assert plans == [PLAN]  # Gösta's plan is neither written nor due: not even loaded
    [closed] = report.closed
    assert read(client, f"Task/{closed}")["basedOn"] == [{"reference": f"CarePlan/{PLAN}"}]
    assert run(store, looked)[1] == []


def test_writes_in_the_sip_count_as_writes_of_the_plan(client, store, h, looked):
    out = invite(client, h)
    run(store, looked)
    goal = read(client, f"Goal/{f.GOAL_SLEEP.split('/')[1]}")
    goal["note"] = [{"text": "Sover bättre sedan oktober."}]
    put(client, f"Goal/{goal['id']}", goal)
    assert run(store, looked)[1] == [PLAN]
    team = read(client, f"CareTeam/{f.CARETEAM.split('/')[1]}")
    team["name"] = "Alvas SIP-team"
    put(client, f"CareTeam/{team['id']}", team)
    assert run(store, looked)[1] == [PLAN]
    assert respond(client, h[BUP], one(out, "task")["id"], "accept",
                   ref("representative", f.BUP_REPRESENTATIVE)).status_code == 200
    assert run(store, looked)[1] == [PLAN]
    # Deleted, the meeting no longer refers to the plan in the index: its last version does.
    appointment = one(out, "appointment")["id"]
    assert client.delete(f"/fhir/Appointment/{appointment}").status_code == 200
    assert run(store, looked)[1] == [PLAN]
    assert run(store, looked)[1] == []


def test_tasks_of_a_plan_deleted_since_the_last_round_are_cancelled(client, store, h, looked):
    report, _ = run(store, looked, now_utc() + timedelta(days=91))
    alvas = [t for t in report.created
             if read(client, f"Task/{t}")["basedOn"][0]["reference"] == f"CarePlan/{PLAN}"]
    assert client.delete(f"/fhir/CarePlan/{PLAN}").status_code == 200
    report, plans = run(store, looked)
    assert plans == [] and report.closed == alvas  # cancelled without reconciling anything
    assert read(client, f"Task/{alvas[0]}")["status"] == "cancelled"


def test_a_write_in_flight_when_a_round_starts_is_seen_by_the_next(client, store, h, looked,
                                                                     monkeypatch):
    monkeypatch.setattr(deadlines, "IN_FLIGHT", WRITES_IN_FLIGHT)
    real_now = deadlines.now_utc
    # The round starts a minute after the write below is stamped, but before it commits.
    monkeypatch.setattr(deadlines, "now_utc", lambda: real_now() + timedelta(minutes=1))
    run(store, looked, real_now())
    monkeypatch.setattr(deadlines, "now_utc", real_now)
    plan = read(client, f"CarePlan/{PLAN}")
    plan["description"] = "Ändrad medan en runda pågick."
    put(client, f"CarePlan/{PLAN}", plan)
    last = mark(store)
    assert last is not None
    with store.begin(write=False) as tx:  # stamped before the round started
        assert PLAN not in deadlines._changed(tx, last.scanned_at)
    # Looked at again (and so is Gösta's, written within the margin too).
    assert run(store, looked)[1] == [PLAN, OTHER]


# -- (b) untouched plans whose deadline comes between two rounds ---------------------------------

def test_the_follow_up_date_passing_is_seen_next_round(client, store, h, looked):
    hold_meeting(client, h)
    r = transition(client, h[SOC], PLAN, "upprattad", *approval("Patient/alva", f.MOTHER))
    assert r.status_code == 200, r.text
    run(store, looked, inactive_days=1000)
    assert run(store, looked, now_utc() + timedelta(days=119), inactive_days=1000)[1] == []
    later = now_utc() + timedelta(days=121)  # the follow-up date is 120 days ahead
    report, plans = run(store, looked, later, inactive_days=1000)
    assert plans == [PLAN] and kinds(report, store) == ["follow-up-overdue"]
    assert run(store, looked, later + timedelta(days=3), inactive_days=1000)[1] == []


def test_three_days_after_the_meeting_is_seen_next_round(client, store, h, looked):
    out = hold_meeting(client, h)
    run(store, looked)
    end = datetime.fromisoformat(one(out, "appointment")["end"]).astimezone(LOCAL)
    due = datetime.combine(end.date() + timedelta(days=4), time(0), LOCAL)
    assert run(store, looked, due - timedelta(minutes=1))[1] == []
    report, plans = run(store, looked, due)
    assert plans == [PLAN] and kinds(report, store) == ["document-plan"]
    found = tasks(client, f"code={TASK_SYSTEM}|document-plan&status=requested")
    assert [t["id"] for t in found] == report.created


def test_an_invitation_deadline_passing_is_seen_next_round(client, store, h, looked):
    invite(client, h, answer_by=at(days=2))
    run(store, looked)
    report, plans = run(store, looked, now_utc() + timedelta(days=3))
    assert plans == [PLAN] and kinds(report, store) == ["invitation-unanswered"]


def test_the_inactivity_horizon_passing_is_seen_next_round(store, h, looked):
    run(store, looked)
    report, plans = run(store, looked, now_utc() + timedelta(days=91))
    assert plans == [PLAN, OTHER] and kinds(report, store) == ["inactive-sip", "inactive-sip"]
    assert run(store, looked, now_utc() + timedelta(days=200))[1] == []


# -- (d) the watermark is the database's --------------------------------------------------------

def test_the_watermark_survives_a_restart(client, store, h, looked):
    url = store.engine.url.render_as_string(hide_password=False)
    settings = Settings(env="dev")
    assert deadlines.Scheduler(store, settings, None).run_once().full
    engine = make_engine(url)
    try:
        restarted = deadlines.Scheduler(Store(engine), settings, None)
        report = restarted.run_once()
        assert not report.full and report.reconciled == 0
        plan = read(client, f"CarePlan/{PLAN}")
        plan["description"] = "Ändrad efter omstarten."
        put(client, f"CarePlan/{PLAN}", plan)
        report = deadlines.Scheduler(Store(engine), settings, None).run_once()
        assert not report.full and report.reconciled == 1
        # Another inactivity period changes every plan's horizon: all are looked at again.
        other = Settings(env="dev", sip_inactive_days=30)
        assert deadlines.Scheduler(Store(engine), other, None).run_once().full
    finally:
        engine.dispose()


def test_the_command_line_runs_a_round_unless_another_process_is_scanning(tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setenv("SIP_HUB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SIP_HUB_DATABASE_URL", raising=False)
    assert cli.main(["migrate"]) == 0
    store = Store(make_engine(Settings().database_url))
    assert mark(store) is None
    assert cli.main(["deadlines"]) == 0
    assert mark(store) is not None
    with store.exclusive("deadline-scan"):
        capsys.readouterr()
        assert cli.main(["deadlines"]) == 1
        assert "another process is scanning" in capsys.readouterr().err
    store.engine.dispose()


# -- (e) a round that fails halfway ---------------------------------------------------------------

def fails_second(apply_batch):
    """``_apply_batch`` that fails the round's second batch (after the first committed)."""
    calls = []

    def apply(op, batch):
        calls.append(batch)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return apply_batch(op, batch)
    return apply


def test_a_round_failing_halfway_keeps_the_watermark_and_the_next_catches_up(
        client, store, h, looked, monkeypatch):
    run(store, looked)
    before = mark(store)
    plan = read(client, f"CarePlan/{PLAN}")
    plan["description"] = "Ändrad före en runda som inte gick klart."
    put(client, f"CarePlan/{PLAN}", plan)
    real = deadlines._apply_batch
    monkeypatch.setattr(deadlines, "_apply_batch", fails_second(real))
    later = now_utc() + timedelta(days=91)
    with pytest.raises(RuntimeError):
        run(store, looked, later, batch=1)
    assert mark(store) == before
    # The first batch is committed: Alva's Task is open; Gösta's batch was rolled back.
    assert [t["basedOn"][0]["reference"] for t in tasks(
        client, f"code={TASK_SYSTEM}|inactive-sip&status=requested")] == [f"CarePlan/{PLAN}"]
    monkeypatch.setattr(deadlines, "_apply_batch", real)
    report, plans = run(store, looked, later, batch=1)
    assert plans == [PLAN, OTHER]  # the write and the deadline, again
    assert kinds(report, store) == ["inactive-sip"]  # Alva's exists already
    assert mark(store).scanned_at > before.scanned_at
    assert run(store, looked, later)[1] == []


def test_a_first_round_failing_halfway_is_redone_in_full(store, h, looked, monkeypatch):
    real = deadlines._apply_batch
    monkeypatch.setattr(deadlines, "_apply_batch", fails_second(real))
    with pytest.raises(RuntimeError):
        run(store, looked, batch=1)
    assert mark(store) is None
    monkeypatch.setattr(deadlines, "_apply_batch", real)
    report, plans = run(store, looked, batch=1)
    assert report.full and plans == [PLAN, OTHER]


# -- what a round reads -------------------------------------------------------------------------

def test_a_batch_of_sips_is_read_at_once_and_as_searches_would_find_it(client, store, h):
    """A round reads what refers to a batch's plans (meetings, Tasks, revisions) in a few
    statements for the whole batch, not in searches per plan; and it finds what those
    searches find, in their order."""
    hold_meeting(client, h)
    invite(client, h, start_days=3)
    with store.begin(write=False) as tx:
        plans = [tx.current("CarePlan", PLAN), tx.current("CarePlan", OTHER)]
        sips = deadlines._read_sips(tx, [PLAN, OTHER], plans)
        for plan in (PLAN, OTHER):
            pid = f"CarePlan/{plan}"
            for found, (rtype, param) in ((sips[plan].appointments,
                                           ("Appointment", "supporting-info")),
                                          (sips[plan].tasks, ("Task", "based-on")),
                                          (sips[plan].revisions, ("CarePlan", "replaces"))):
                searched = process.search(tx, rtype, [(param, pid)])
                assert [s.id for s in found] == [s.id for s in searched], (plan, rtype)
        assert len(sips[PLAN].meetings()) == 2
        assert len(sips[PLAN].tasks_of(("invitation",))) == 2

    if store.engine.dialect.name == "sqlite":
        def statements(plan_ids: list[str]) -> int:
            ran: list[str] = []
            with store.begin(write=False) as tx:
                raw = tx.conn.connection.dbapi_connection
                raw.set_trace_callback(ran.append)
                try:
                    batch = [tx.current("CarePlan", p) for p in plan_ids]
                    ran.clear()
                    deadlines._read_sips(tx, plan_ids, batch)
                finally:
                    raw.set_trace_callback(None)
            return len(ran)
        assert statements([PLAN, OTHER]) == statements([PLAN])  # not a statement per plan
