"""Realistic SIP resources for the benchmark, built with the test suite's ``tests/sip_factory.py``.

Every measurement patient gets what a complete SIP CarePlan needs to pass the hub's
validation and access rules: the Patient (valid personnummer), the SIP Consent naming the
three organisations, a SIP CareTeam and three SIP Goals (one of them a sub-goal).
Organisations and practitioners are shared. The CarePlan has five interventions (insatser),
about 3.5 kB of JSON: what a real SIP client sends. Every plan is written by the
coordinating organisation (``COORDINATOR_HSA``, the social services), which is its author.

The plan is a draft with all the content the law requires of an established one: a SIP plan
is created as a draft and established by ``$transition`` with the person's approval (since
2026-12-06 an organisation's client cannot create one as established on its own). The
profile checks a complete draft as it checks an established plan (the established-only rules
add issues only for content that is missing), so the create does the same work as the
established plans of the runs before.
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from sip_hub.identifiers import luhn_check_digit

Json = dict[str, Any]

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
FACTORY_PATH = TESTS / "sip_factory.py"


def _load_test_module(name: str) -> ModuleType:
    """One of the test suite's helper modules (without putting ``tests/`` on the path)."""
    if name in sys.modules:
        return sys.modules[name]
    path = TESTS / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"bench: {path} is missing; the benchmark builds its SIP "
                         "resources with the test suite's helpers")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


f = _load_test_module("sip_factory")

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
    """A complete draft SIP CarePlan of Patient/``pid``, as a client POSTs it (no id)."""
    plan: Json = f.sip_careplan(f"Patient/{pid}", "draft",
                                careteam_ref=f"CareTeam/{pid}-sip", goal_refs=_goal_refs(pid),
                                activities=_activities(pid))
    plan.pop("id", None)
    return plan


# --------------------------------------------------------------------------- messaging
# The messaging benchmark's SIPs: adults (no custodian needed), coordinated by the social
# services, whose consent covers the coordinator and four organisations that receive every
# message about the SIP. Process helpers (Parameters, times relative to now) are the tests'.

_fhirhttp = _load_test_module("fhirhttp")  # sip_process imports it by name
proc = _load_test_module("sip_process")

# The receiving organisations: (Organization reference, HSA-id).
RECEIVERS: tuple[tuple[str, str], ...] = (
    (f.BUP, "SE2321000016-15CQ"), (f.SCHOOL, "SE2120000142-SKO7"),
    (f.VARDCENTRAL, f.VARDCENTRAL_HSA), (f.HEMTJANST, f.HEMTJANST_HSA))
MESSAGING_PNR_OFFSET = 200_000     # never clash with the other benchmarks' patients


def messaging_shared_resources() -> list[Json]:
    return shared_resources() + f.discharge_organisations()


def adult(k: int) -> int:
    """The personnummer index of the ``k``-th messaging patient: born 1940-1999."""
    return MESSAGING_PNR_OFFSET + (k // 60) * _BIRTH_YEARS + k % 60


def messaging_sip(pid: str, k: int) -> list[Json]:
    """A SIP before its meeting (draft plan, proposed care team, the consent in force now),
    ready for ``$transition`` to kartlaggning and ``$invite`` of the RECEIVERS."""
    ref = f"Patient/{pid}"
    school, step, sleep = _goal_refs(pid)
    consent = f.sip_consent(ref, (f.SOCIAL_SERVICES, *(r for r, _ in RECEIVERS)),
                            id=f"{pid}-samtycke", given_by=(ref,), start=proc.day(-10),
                            end=proc.day(365))
    team = f.sip_careteam(ref, id=f"{pid}-sip", status="proposed", representatives=(),
                          relatives=())
    plan = f.sip_careplan(ref, "draft", id=f"{pid}-sip", careteam_ref=f"CareTeam/{pid}-sip",
                          goal_refs=(school, step, sleep), activities=_activities(pid),
                          follow_up=proc.at(days=120))
    goals = [r for r in patient_resources(pid, adult(k)) if r["resourceType"] == "Goal"]
    return [patient(pid, adult(k)), consent, team, *goals, plan]


def invite_parameters() -> Json:
    """``$invite`` of every receiving organisation to a meeting in ten days."""
    invitation: Json = proc.invitation(*(r for r, _ in RECEIVERS))
    return invitation


TOKEN, START, END, HEADER_ID, BUNDLE_ID = (
    "@TOKEN@", "@START@", "@END@", "@HEADER-ID@", "@BUNDLE-ID@")
"""Placeholders the load client replaces in a message template, per message. TOKEN names the
message in what the hub stores and sends on (``bm`` and 32 hex digits), so the receiver can
tell which message each delivery is."""


def meeting_slots(n: int = 4) -> list[tuple[str, str]]:
    """(start, end) of ``n`` meeting times in two weeks, 13:00 onwards, 90 minutes each."""
    return [(proc.at(days=14 + i), proc.at(days=14 + i, hours=1.5)) for i in range(n)]


def reschedule_message(appointment: Json, endpoints: dict[str, str]) -> bytes:
    """The coordinator's message that a SIP meeting moved: the meeting (one ``$invite``
    made) with a new time, its comment naming the message (TOKEN), addressed to every
    receiving organisation; its focus names the meeting and the plan, which the hub holds.
    Serialised with the placeholders above."""
    from sip_hub.messaging import builder

    moved = {k: v for k, v in appointment.items() if k not in ("meta", "text")}
    moved.update(start=START, end=END,
                 comment=f"Mötet är flyttat på önskan av den enskilde ({TOKEN}).")
    plan = next(r["reference"] for r in moved["supportingInformation"]
                if r["reference"].startswith("CarePlan/"))
    message = builder.message(
        "meeting-rescheduled", fhir_base="https://soc.bench.example/fhir",
        sender=COORDINATOR_HSA,
        destinations=[builder.Party(hsa, endpoints[hsa]) for _, hsa in RECEIVERS],
        focus=[f"Appointment/{moved['id']}", plan], resources=[moved], header_id=HEADER_ID,
        bundle_id=BUNDLE_ID)
    return orjson.dumps(message)
