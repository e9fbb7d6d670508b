"""Realistic SIP resources for the benchmark, built with the test suite's ``tests/sip_factory.py``.

Every measurement patient gets what an established (``active``) SIP CarePlan needs to pass the
hub's validation and access rules: the Patient (valid personnummer), the SIP Consent naming
the three organisations, a SIP CareTeam and three SIP Goals (one of them a sub-goal).
Organisations and practitioners are shared. The CarePlan has five interventions (insatser),
about 3.5 kB of JSON: what a real SIP client sends. Every plan is written by the
coordinating organisation (``COORDINATOR_HSA``, the social services), which is its author.
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

from sip_hub.identifiers import luhn_check_digit

Json = dict[str, Any]

REPO = Path(__file__).resolve().parent.parent
FACTORY_PATH = REPO / "tests" / "sip_factory.py"


def _load_factory() -> ModuleType:
    if not FACTORY_PATH.is_file():
        raise SystemExit(f"bench: {FACTORY_PATH} is missing; the benchmark builds its SIP "
                         "resources with the test suite's factory")
    spec = importlib.util.spec_from_file_location("sip_factory", FACTORY_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sip_factory", module)
    spec.loader.exec_module(module)
    return module


f = _load_factory()

COORDINATOR_HSA = "SE2120000142-SOC1"   # HSA-id of f.social_services(), author of every plan

_BIRTH_YEARS = 80          # born 1940 .. 2019
_FIRST_YEAR = 1940


def personnummer(i: int) -> str:
    """A valid, normalised (12-digit) personnummer, distinct for i < 80 * 12 * 28 * 900."""
    year = _FIRST_YEAR + i % _BIRTH_YEARS
    month = 1 + (i // _BIRTH_YEARS) % 12
    day = 1 + (i // (_BIRTH_YEARS * 12)) % 28
    serial = 100 + (i // (_BIRTH_YEARS * 12 * 28)) % 900
    assert date(year, month, day) < date.today()
    nine = f"{year % 100:02d}{month:02d}{day:02d}{serial:03d}"
    return f"{year:04d}{month:02d}{day:02d}{serial:03d}{luhn_check_digit(nine)}"


def shared_resources() -> list[Json]:
    """The organisations and practitioners every SIP of the benchmark refers to."""
    return [
        f.social_services(),
        f.organization(),
        f.school(),
        f.practitioner(),
        f.practitioner("SE2321000016-P7SL", "Sara", "Lind", id="sara"),
        f.practitioner("SE2120000142-P0412", "Johan", "Berg", id="johan"),
    ]


def _goal_refs(pid: str) -> tuple[str, str, str]:
    return f"Goal/{pid}-mal-skola", f"Goal/{pid}-delmal-narvaro", f"Goal/{pid}-mal-somn"


def patient(pid: str, i: int) -> Json:
    res: Json = f.patient(personnummer(i), id=pid, given=f"Bench{i}", family="Testsson")
    return res


def patient_resources(pid: str, i: int) -> list[Json]:
    """Patient, SIP Consent, SIP CareTeam and three SIP Goals of one individual, in dependency
    order."""
    ref = f"Patient/{pid}"
    school, step, sleep = _goal_refs(pid)
    return [
        patient(pid, i),
        f.sip_consent(ref, (f.SOCIAL_SERVICES, f.BUP, f.SCHOOL), id=f"{pid}-samtycke",
                      given_by=(ref,)),
        f.sip_careteam(ref, id=f"{pid}-sip", relatives=()),
        f.sip_goal(ref, id=school.split("/")[1]),
        f.sip_goal(ref, id=step.split("/")[1], parent_ref=school,
                   text="Är i skolan minst tre hela dagar i veckan fram till jullovet.",
                   due="2026-12-18"),
        f.sip_goal(ref, id=sleep.split("/")[1], life_area="somn",
                   text="Somnar före klockan 23 på vardagar och orkar gå upp på morgonen.",
                   due="2027-02-15"),
    ]


def _activities(pid: str) -> list[Json]:
    school, step, sleep = _goal_refs(pid)
    return [
        f.activity(f.BUP, "Samtalsbehandling (KBT) på BUP varannan vecka och utredning av "
                          "koncentrationssvårigheter.", "region", goal_refs=[sleep],
                   status="in-progress"),
        f.activity(f.SCHOOL, "Anpassad studiegång med stöd av specialpedagog; elevhälsan följer "
                             "upp närvaron varje vecka och kontaktar vårdnadshavare vid "
                             "frånvaro.", "kommun", goal_refs=[school, step]),
        f.activity(f.SOCIAL_SERVICES, "Familjebehandling i hemmet en gång i veckan med fokus "
                                      "på morgonrutiner och sömn.", "kommun",
                   goal_refs=[step, sleep]),
        f.activity(f.BUP, "Sömnbedömning hos läkare på BUP, vid behov läkemedelsbehandling "
                          "med uppföljning efter sex veckor.", "region", goal_refs=[sleep]),
        f.activity(f.SCHOOL, "Skolkurator träffar eleven varje vecka; mentor stämmer av "
                             "schemat varje måndag morgon.", "kommun", goal_refs=[school],
                   status="not-started"),
    ]


def transaction(resources: list[Json], base_url: str) -> Json:
    """A transaction Bundle that PUTs ``resources`` (each with its id)."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}", "resource": r,
         "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources]}


def careplan(pid: str) -> Json:
    """An established (active) SIP CarePlan of Patient/``pid``, as a client POSTs it (no id)."""
    plan: Json = f.sip_careplan(f"Patient/{pid}", careteam_ref=f"CareTeam/{pid}-sip",
                                goal_refs=_goal_refs(pid), activities=_activities(pid))
    plan.pop("id", None)
    return plan
