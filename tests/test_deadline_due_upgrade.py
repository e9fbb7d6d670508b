"""An upgrade to the release where an invitation's answer deadline given as a date ends at
Swedish midnight: an organisation that has not answered gets its invitation-unanswered Task
when that day is over in Sweden, also for an invitation made before the upgrade, whose next
deadline the release before recorded (``deadline_due``) at UTC midnight, one or two hours
later (migration 0020 makes the next round a full one, which records it again)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

import sip_factory as f
from sip_hub import deadlines
from sip_hub.fhir.dates import from_us, now_utc, parse_range
from sip_hub.fhir.sip import swedish_range
from sip_hub.store import Store
from sip_hub.store.migrate import upgrade
from sip_process import SOC, alva_case, day, invitation, post, transition, write_case

PLAN = "alva-sip"


@pytest.fixture(autouse=True)
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test's writes are committed before the next round starts: none is in flight."""
    monkeypatch.setattr(deadlines, "IN_FLIGHT", timedelta(0))


def _due(store: Store) -> int | None:
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT due FROM deadline_due WHERE plan_id = :p"),
                            {"p": PLAN}).scalar()


def test_an_answer_deadline_recorded_before_the_upgrade_passes_at_swedish_midnight(
        client, store: Store, as_org) -> None:
    soc = as_org(SOC)
    write_case(client, soc, alva_case())
    assert transition(client, soc, PLAN, "kartlaggning").status_code == 200
    answer_by = day(2)
    r = post(client, f"CarePlan/{PLAN}/$invite", soc, invitation(f.BUP, answer_by=answer_by))
    assert r.status_code == 200, r.text
    deadlines.run(store, now_utc())
    swedish_end = swedish_range(answer_by)[1] + 1
    assert _due(store) == swedish_end
    # As the release before recorded it (the day ending at UTC midnight), at revision 0019;
    # 0020 runs again (the later revisions' schema is there already: marked as run after it).
    with store.engine.begin() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        conn.execute(text("UPDATE deadline_due SET due = :d WHERE plan_id = :p"),
                     {"d": parse_range(answer_by)[1] + 1, "p": PLAN})
        conn.execute(text("UPDATE alembic_version SET version_num = '0019'"))
    upgrade(store.engine, "0020")
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :h"), {"h": head})
    # The day is over in Sweden, not yet in UTC.
    when: datetime = from_us(swedish_end) + timedelta(minutes=30)
    assert when < from_us(parse_range(answer_by)[1])
    report = deadlines.run(store, when)
    found = [store.read("Task", tid) for tid in report.created]
    assert [s.json()["code"]["coding"][0]["code"] for s in found if s is not None] \
        == ["invitation-unanswered"]
