"""Helpers for the SIP process tests: Parameters, the operations over HTTP, the two demo cases
written as their coordinators would, and times relative to now (the process checks consent
periods, meetings and deadlines against the clock)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import sip_factory as f
from fhirhttp import JSON_HEADERS, body

Json = dict[str, Any]

SOC, BUP, SCHOOL = "SE2120000142-SOC1", "SE2321000016-15CQ", "SE2120000142-SKO7"
OUTSIDER = "SE2321000016-OUT1"
TASK_SYSTEM = "https://sip-hub.se/fhir/CodeSystem/sip-task"
CET = timezone(timedelta(hours=1))


def at(days: float = 0, hours: float = 0) -> str:
    """A dateTime relative to now, to the second, in Swedish standard time."""
    when = datetime.now(CET) + timedelta(days=days, hours=hours)
    return when.replace(microsecond=0).isoformat()


def day(days: int = 0) -> str:
    return (datetime.now(CET) + timedelta(days=days)).date().isoformat()


# -- Parameters -----------------------------------------------------------------------------

def parameters(*parameter: Json | None) -> Json:
    return {"resourceType": "Parameters", "parameter": [p for p in parameter if p]}


def code(name: str, value: str) -> Json:
    return {"name": name, "valueCode": value}


def string(name: str, value: str) -> Json:
    return {"name": name, "valueString": value}


def ref(name: str, reference: str) -> Json:
    return {"name": name, "valueReference": {"reference": reference}}


def dt(name: str, value: str) -> Json:
    return {"name": name, "valueDateTime": value}


def resource(name: str, res: Json) -> Json:
    return {"name": name, "resource": res}


def parts(name: str, *part: Json) -> Json:
    return {"name": name, "part": list(part)}


def values(params: Json, name: str) -> list[Any]:
    """The values (or resources) of the output parameters named ``name``."""
    out = []
    for p in params.get("parameter", []):
        if p["name"] == name:
            out.append(next(v for k, v in p.items() if k.startswith("value") or k == "resource"))
    return out


def one(params: Json, name: str) -> Any:
    found = values(params, name)
    assert len(found) == 1, (name, params)
    return found[0]


# -- operations over HTTP -------------------------------------------------------------------

def post(client: Any, path: str, headers: dict[str, str], params: Json) -> Any:
    return client.post(f"/fhir/{path}", content=body(params)["content"],
                       headers=JSON_HEADERS | headers)


def transition(client: Any, headers: dict[str, str], plan: str, to: str, *extra: Json) -> Any:
    return post(client, f"CarePlan/{plan}/$transition", headers,
                parameters(code("to", to), *extra))


def approval(*approvers: str, when: str | None = None) -> list[Json]:
    return [*(ref("approvedBy", a) for a in approvers), dt("approvedAt", when or at(hours=-1))]


def invitation(*orgs: str | tuple[str, str], start_days: float = 10, persons: tuple[str, ...] = (),
               answer_by: str | None = None, wishes: bool = True) -> Json:
    """$invite for a new meeting ``start_days`` from now, 13:00–14:30 local time."""
    start = (datetime.now(CET) + timedelta(days=start_days)).replace(
        hour=13, minute=0, second=0, microsecond=0)
    invited = []
    for org in orgs:
        ref_, profession = (org, None) if isinstance(org, str) else org
        invited.append(parts("invitedOrganization", ref("organization", ref_),
                             string("profession", profession) if profession else None))
        if invited[-1]["part"][-1] is None:
            invited[-1]["part"].pop()
    wish = parts("meetingWishes",
                 string("place", "Hemma eller på skolan, inte på BUP"),
                 string("timeOfDay", "Eftermiddag, efter skolan"),
                 {"name": "maxDuration", "valueDuration": {
                     "value": 60, "unit": "min", "system": "http://unitsofmeasure.org",
                     "code": "min"}},
                 string("disturbances", "Många nya personer samtidigt; starkt ljus"),
                 string("environment", "Ett lugnt rum med fönster, gärna vatten på bordet"),
                 parts("support", code("type", "interpreter"), code("language", "ar")),
                 parts("support", code("type", "picture-support"))) if wishes else None
    return parameters(
        dt("start", start.isoformat()), dt("end", (start + timedelta(minutes=90)).isoformat()),
        string("place", "Socialtjänsten Södermalm, Götgatan 10, mötesrum Ljuset"),
        dt("answerBy", answer_by) if answer_by else None, wish, *invited,
        *(ref("invitedPerson", p) for p in persons))


def respond(client: Any, headers: dict[str, str], task: str, answer: str, *extra: Json) -> Any:
    return post(client, f"Task/{task}/$respond", headers, parameters(code("answer", answer),
                                                                       *extra))


# -- the cases as their coordinators write them --------------------------------------------

def alva_case(*, custodian: bool = True) -> list[Json]:
    """Alva's SIP before the process starts: a draft plan with the content the law requires,
    a proposed care team (the individual, her mother as custodian, the coordinator), the
    consent in force now, the kartläggning and goals."""
    out = []
    for r in f.demo_case():
        if r["resourceType"] == "Provenance":  # the approval of the established plan
            continue
        if r["resourceType"] == "Consent":
            r = f.sip_consent(start=day(-10), end=day(365))
        elif r["resourceType"] == "CareTeam":
            r = f.sip_careteam(status="proposed", representatives=(),
                               relatives=((f.MOTHER, "custodian"),) if custodian else ())
        elif r["resourceType"] == "CarePlan":
            r = f.sip_careplan(status="draft", follow_up=at(days=120))
        out.append(r)
    return out


def gosta_case() -> list[Json]:
    out = []
    for r in f.discharge_case():
        if r["resourceType"] == "Consent":
            r = f.discharge_consent(start=day(-1), end=day(365))
        elif r["resourceType"] == "CarePlan":
            r = f.discharge_careplan(follow_up=at(days=90))
        out.append(r)
    return out


def write_case(client: Any, headers: dict[str, str], resources: list[Json]) -> None:
    """Import a SIP case in one transaction; an established plan with the person's approval
    (``sip_factory.with_approvals``)."""
    entries = [{"resource": copy.deepcopy(r),
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
               for r in f.with_approvals(resources)]
    r = client.post("/fhir", content=body({"resourceType": "Bundle", "type": "transaction",
                                           "entry": entries})["content"],
                    headers=JSON_HEADERS | headers)
    assert r.status_code == 200, r.text


def two_sips(client: Any, as_org: Any) -> dict[str, dict[str, str]]:
    """Alva's established SIP (SOC coordinates; BUP and the school take part) and Gösta's
    (the vårdcentral coordinates); the headers of each of them and of an outsider."""
    h = {o: as_org(o) for o in (SOC, BUP, SCHOOL, f.VARDCENTRAL_HSA, OUTSIDER)}
    write_case(client, h[SOC], f.demo_case())
    write_case(client, h[f.VARDCENTRAL_HSA], gosta_case())
    return h


def propose_revision(client: Any, headers: dict[str, str], plan_id: str,
                     description: str = "Reviderad") -> tuple[Json, Json]:
    """The plan as it is, and the proposal of a revision of it (its description changed)."""
    plan = read(client, f"CarePlan/{plan_id}", headers)
    revised = copy.deepcopy(plan)
    revised.pop("meta")
    revised["description"] = description
    r = post(client, f"CarePlan/{plan_id}/$propose-revision", headers,
             parameters(resource("revision", revised)))
    assert r.status_code == 200, r.text
    return plan, one(r.json(), "revision")


def read(client: Any, path: str, headers: dict[str, str] | None = None) -> Json:
    r = client.get(f"/fhir/{path}", headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()


def phase(plan: Json) -> str | None:
    return next((e["valueCode"] for e in plan.get("extension", [])
                 if e["url"].endswith("/sip-phase")), None)


def tasks(client: Any, query: str, headers: dict[str, str] | None = None) -> list[Json]:
    b = read(client, f"Task?{query}&_count=100", headers)
    return [e["resource"] for e in b.get("entry", [])]
