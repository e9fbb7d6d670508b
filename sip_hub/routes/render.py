"""HTML rendering of SIP plans for people (Jinja2 templates in sip_hub/templates)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ..fhir import profiles, sip
from ..fhir.dates import from_us
from ..fhir.indexing import split_reference
from ..identifiers import mask_person_ids
from ..messaging.http import shown_url


@lru_cache(maxsize=1)
def _env() -> Environment:
    env = Environment(loader=PackageLoader("sip_hub", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["when"] = _when
    env.filters["shown_url"] = shown_url  # (credentials stored before they were refused)
    env.filters["goal_line"] = goal_line  # (the HTML and the PDF say a goal alike)
    # (receivers' errors stored before the personal identity numbers in them were masked)
    env.filters["masked"] = mask_person_ids
    return env


def _when(us: int | None) -> str:
    """A time the store keeps (UTC microseconds) as people read it, to the second."""
    return "–" if us is None else from_us(us).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_page(name: str, **context: Any) -> str:
    """A template of sip_hub/templates (the console's pages) with ``context``."""
    return _env().get_template(name).render(**context)


def _ext(holder: dict[str, Any], url: str) -> Any:
    for e in holder.get("extension", []):
        if e.get("url") == url:
            return next((v for k, v in e.items() if k.startswith("value")), None)
    return None


@lru_cache(maxsize=1)
def _life_areas() -> dict[str, str]:
    for d in profiles.definitions():
        if d.get("url") == sip.CS_LIFE_AREA:
            return {c["code"]: c.get("display", c["code"]) for c in d.get("concept", [])}
    return {}


def _linked(linked: dict[str, dict[str, Any]], ref: Any) -> dict[str, Any] | None:
    """What ``ref`` points at among the view's resources: ``Type/id``, also versioned
    (``Type/id/_history/n``, as the Bundle's include of it is)."""
    raw = ref.get("reference") if isinstance(ref, dict) else None
    if isinstance(raw, str) and raw in linked:  # (also "#id": a resource the plan contains)
        return linked[raw]
    target = split_reference(raw) if isinstance(raw, str) else None
    return linked.get(f"{target[0]}/{target[1]}") if target else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def human_name(names: Any) -> str:
    """A person's name as people read it, from a list of HumanName: the one in use (usual,
    else official, else any but an old one), its text, else its given names and family
    name; "" when there is none."""
    if not isinstance(names, list):
        return ""
    usable = [n for n in names if isinstance(n, dict) and n.get("use") not in ("old", "anonymous")]
    usable.sort(key=lambda n: {"usual": 0, "official": 1}.get(str(n.get("use")), 2))
    for n in usable:
        if _text(n.get("text")):
            return _text(n["text"])
        given = n.get("given") if isinstance(n.get("given"), list) else []
        parts = [_text(g) for g in given] + [_text(n.get("family"))]
        if any(parts):
            return " ".join(p for p in parts if p)
    return ""


# How deep a PractitionerRole's or CareTeam's references are followed for a name.
_DEPTH = 3


def party_name(linked: dict[str, dict[str, Any]], ref: Any, depth: int = _DEPTH) -> str:
    """Who a reference (an author, a performer) names, as people read it: an organisation's
    (care team's, unit's, location's) name, a person's name (Practitioner, Patient,
    RelatedPerson), a practitioner role as its practitioner and organisation; else the
    reference's display, else the reference itself (never "#id": a contained resource's id
    says nothing). Never raises on odd data: what cannot be read is left out."""
    if not isinstance(ref, dict):
        return ""
    raw = _text(ref.get("reference"))
    return _named(linked, ref, depth) or ("" if raw.startswith("#") else raw)


def _named(linked: dict[str, dict[str, Any]], ref: Any, depth: int) -> str:
    """The name of what ``ref`` points at, else its display ("" if neither)."""
    if not isinstance(ref, dict):
        return ""
    target = _linked(linked, ref) if depth > 0 else None
    found = _resource_name(linked, target, depth) if isinstance(target, dict) else ""
    return found or _text(ref.get("display"))


def _resource_name(linked: dict[str, dict[str, Any]], target: dict[str, Any], depth: int
                   ) -> str:
    rtype = target.get("resourceType")
    name = target.get("name")
    if isinstance(name, str):  # (Organization, CareTeam, Location, HealthcareService, ...)
        return name.strip()
    if isinstance(name, list):  # (HumanName: Practitioner, Patient, RelatedPerson)
        return human_name(name)
    if rtype == "PractitionerRole":
        who = _named(linked, target.get("practitioner"), depth - 1)
        org = _named(linked, target.get("organization"), depth - 1)
        return ", ".join(dict.fromkeys(x for x in (who, org) if x))
    return ""


# What the citizen reads of a status, in Swedish. An established plan (sip.ESTABLISHED_STATUSES)
# that is active, a goal or an insats under way, says nothing of it; what is paused or over
# says so, lest the person take it for what is being done. (What was entered in error never
# reaches the view: ``citizen.shown``.)
PLAN_STATES = {"on-hold": "Planen är pausad.", "completed": "Planen är avslutad."}
GOAL_STATES = {"on-hold": "målet är pausat", "completed": "målet är avslutat",
               "cancelled": "målet är avbrutet", "rejected": "målet är avvisat"}
INSATS_STATES = {"on-hold": "Pausad", "completed": "Avslutad", "cancelled": "Inställd",
                 "stopped": "Avbruten"}


def _state(states: dict[str, str], status: Any) -> str:
    return states.get(status, "") if isinstance(status, str) else ""


def plan_view(plan: dict[str, Any], linked: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The plan as the template reads it: plain values, names resolved, statuses as the
    citizen reads them (``"state"``: "" when there is nothing to say)."""
    linked = {**linked, **{f"#{c['id']}": c for c in plan.get("contained", [])
                           if isinstance(c, dict) and isinstance(c.get("id"), str)}}
    def name(ref: Any) -> str:
        return party_name(linked, ref)

    life_areas = _life_areas()
    goals = []
    for ref in plan.get("goal", []):
        goal = _linked(linked, ref)
        if goal:
            area = next((c.get("code") for cc in goal.get("category", [])
                         for c in cc.get("coding", []) if c.get("system") == sip.CS_LIFE_AREA),
                        None)
            goals.append({"text": (goal.get("description") or {}).get("text", ""),
                          "area": life_areas.get(area or "", area or ""),
                          "state": _state(GOAL_STATES, goal.get("lifecycleStatus"))})
    party = {"kommun": "Kommunen", "region": "Regionen", "other": "Annan aktör"}
    activities = [{
        "description": (a.get("detail") or {}).get("description", ""),
        "who": ", ".join(n for n in (name(p) for p in _list(
            (a.get("detail") or {}).get("performer"))) if n),
        "party": party.get(_ext(a.get("detail") or {}, sip.EXT_RESPONSIBLE_PARTY) or "", ""),
        "state": _state(INSATS_STATES, (a.get("detail") or {}).get("status")),
    } for a in plan.get("activity", [])]
    return {
        "title": plan.get("title") or "Samordnad individuell plan",
        "needs": _ext(plan, sip.EXT_NEEDS) or "",
        "principal": party.get(_ext(plan, sip.EXT_PRINCIPAL) or "", ""),
        "coordination": _ext(plan, sip.EXT_COORDINATION) or "",
        "follow_up": sip.swedish_day(_ext(plan, sip.EXT_FOLLOW_UP)),
        "author": name(plan.get("author")),
        "state": _state(PLAN_STATES, plan.get("status")),
        "goals": goals,
        "activities": activities,
        # (a column of its own in the insatser's table only when some insats has one)
        "insats_states": any(a["state"] for a in activities),
    }


def goal_line(goal: dict[str, Any]) -> str:
    """A goal of ``plan_view`` as one line: its text, life area and what its status says."""
    return goal["text"] + (f" ({goal['area']})" if goal["area"] else "") + \
        (f" – {goal['state']}" if goal["state"] else "")


def plan_views(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The citizen view Bundle's plans (its matches) as people read them, with what they
    link among the Bundle's other entries (the HTML and the PDF say the same)."""
    entries = bundle.get("entry", [])
    linked = {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
              for e in entries}
    return [plan_view(e["resource"], linked) for e in entries
            if e["search"]["mode"] == "match"]


def render_citizen_html(bundle: dict[str, Any]) -> bytes:
    return _env().get_template("citizen_view.html").render(
        plans=plan_views(bundle)).encode("utf-8")
