"""Builders of valid SIP resources for tests and benchmarks.

Every builder returns a fresh dict that passes ``models.validate``, ``validation.check`` and
``profiles.check`` as it stands; tests break one thing at a time. Defaults form one coherent
demo case (see ``demo_case``): Alva Andersson, 15, has a SIP with her school (kommun), the
social services (kommun) and child and adolescent psychiatry BUP (region); her mother is her
custodian (vårdnadshavare); the social secretary Kim Karlsson is the coordinator
(samordningsansvarig). Identifiers are valid and already in normalised form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sip_hub.fhir import sip
from sip_hub.identifiers import HSA_ID, ORGANISATIONSNUMMER, person_id_system

Json = dict[str, Any]

DEMO_PNR = "201103142384"          # Alva, born 2011-03-14 (15 years old in 2026)
TOLVAN_PNR = "191212121212"        # Tolvan Tolvansson, the common test person
DEMO_SAMORDNINGSNUMMER = "201103742381"
REGION_ORGNR = "2321000016"
KOMMUN_ORGNR = "2120000142"

PATIENT = "Patient/alva"
MOTHER = "RelatedPerson/alva-mamma"
SOCIAL_SERVICES = "Organization/socialtjansten"
BUP = "Organization/bup"
SCHOOL = "Organization/skolan"
HABILITATION = "Organization/habiliteringen"
HABILITATION_HSA = "SE2321000016-HAB1"
COORDINATOR = "Practitioner/kim"
BUP_REPRESENTATIVE = "Practitioner/sara"
SCHOOL_REPRESENTATIVE = "Practitioner/johan"
CARETEAM = "CareTeam/alva-sip"
GOAL_SCHOOL = "Goal/alva-mal-skola"
GOAL_SCHOOL_STEP = "Goal/alva-delmal-narvaro"
GOAL_SLEEP = "Goal/alva-mal-somn"


def _id(ref: str) -> str:
    return ref.split("/", 1)[1]


def _coding(system: str, code: str, display: str | None = None) -> Json:
    out: Json = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return out


# --------------------------------------------------------------------------- people, places

def patient(pnr: str = TOLVAN_PNR, *, id: str | None = None, given: str | None = None,
            family: str | None = None) -> Json:
    """A Patient with a personnummer (or samordningsnummer: day of birth + 60).

    Birth date and gender follow from the number. Defaults: Tolvan Tolvansson for the
    default number, Alva Andersson for ``DEMO_PNR``.
    """
    demo = pnr == DEMO_PNR
    day = int(pnr[6:8])
    return {
        "resourceType": "Patient",
        "id": id or ("alva" if demo else "tolvan"),
        "identifier": [{"use": "official", "system": person_id_system(pnr), "value": pnr}],
        "active": True,
        "name": [{"use": "official", "family": family or ("Andersson" if demo else "Tolvansson"),
                  "given": [given or ("Alva" if demo else "Tolvan")]}],
        "gender": "male" if int(pnr[10]) % 2 else "female",
        "birthDate": f"{pnr[:4]}-{pnr[4:6]}-{day - 60 if day > 60 else day:02d}",
        "address": [{"use": "home", "line": ["Ringvägen 12"], "postalCode": "11867",
                     "city": "Stockholm", "country": "SE"}],
        "communication": [{"language": {"coding": [_coding("urn:ietf:bcp:47", "sv",
                                                           "Swedish")]},
                           "preferred": True}],
    }


def organization(hsa: str = "SE2321000016-15CQ",
                 name: str = "Barn- och ungdomspsykiatri (BUP) Söder, Region Stockholm", *,
                 id: str = "bup", orgnr: str | None = None) -> Json:
    """An Organization identified by HSA-id (and organisationsnummer, taken from the HSA-id)."""
    number = orgnr or hsa[2:hsa.index("-")]
    return {
        "resourceType": "Organization",
        "id": id,
        "identifier": [{"use": "official", "system": HSA_ID, "value": hsa},
                       {"system": ORGANISATIONSNUMMER, "value": number}],
        "active": True,
        "name": name,
        "telecom": [{"system": "phone", "value": "+46 8 123 456 00", "use": "work"}],
    }


def social_services() -> Json:
    return organization("SE2120000142-SOC1", "Socialtjänsten Södermalm, Stockholms stad",
                        id=_id(SOCIAL_SERVICES))


def school() -> Json:
    return organization("SE2120000142-SKO7", "Södra grundskolan, Stockholms stad",
                        id=_id(SCHOOL))


def habilitation() -> Json:
    """A fourth organisation (region), not in the demo SIP: for cases with more parties."""
    return organization(HABILITATION_HSA, "Habiliteringen Söder, Region Stockholm",
                        id=_id(HABILITATION))


def practitioner(hsa: str = "SE2120000142-P0001", given: str = "Kim",
                 family: str = "Karlsson", *, id: str = "kim") -> Json:
    return {
        "resourceType": "Practitioner",
        "id": id,
        "identifier": [{"system": HSA_ID, "value": hsa}],
        "active": True,
        "name": [{"family": family, "given": [given]}],
    }


def related_person(patient_ref: str = PATIENT, *, id: str = "alva-mamma",
                   given: str = "Maria", family: str = "Andersson",
                   relationship: str = "MTH") -> Json:
    """A relative; ``relationship`` from v3-RoleCode (MTH mother, FTH father, GUARD ...)."""
    return {
        "resourceType": "RelatedPerson",
        "id": id,
        "active": True,
        "patient": {"reference": patient_ref},
        "relationship": [{"coding": [_coding(
            "http://terminology.hl7.org/CodeSystem/v3-RoleCode", relationship)]}],
        "name": [{"family": family, "given": [given]}],
        "telecom": [{"system": "phone", "value": "+46 70 123 45 67", "use": "mobile"}],
    }


# --------------------------------------------------------------------------- SIP resources

def sip_goal(patient_ref: str = PATIENT, *, id: str = _id(GOAL_SCHOOL),
             life_area: str = "sysselsattning",
             text: str = "Alva går i skolan varje dag och får godkända betyg i årskurs 9.",
             parent_ref: str | None = None, status: str = "active",
             due: str | None = "2027-06-11") -> Json:
    """A SIP goal (mål) under one life area; with ``parent_ref`` a sub-goal (delmål)."""
    goal: Json = {"resourceType": "Goal", "id": id}
    if parent_ref is not None:
        goal["extension"] = [{"url": sip.EXT_PARENT_GOAL,
                              "valueReference": {"reference": parent_ref}}]
    goal.update({
        "lifecycleStatus": status,
        "category": [{"coding": [_coding(sip.CS_LIFE_AREA, life_area)]}],
        "description": {"text": text},
        "subject": {"reference": patient_ref},
        "startDate": "2026-11-20",
        "expressedBy": {"reference": patient_ref},
    })
    if due is not None:
        goal["target"] = [{"dueDate": due}]
    return goal


def demo_goals(patient_ref: str = PATIENT) -> list[Json]:
    return [
        sip_goal(patient_ref),
        sip_goal(patient_ref, id=_id(GOAL_SCHOOL_STEP), parent_ref=GOAL_SCHOOL,
                 text="Alva är i skolan minst tre hela dagar i veckan fram till jullovet.",
                 due="2026-12-18"),
        sip_goal(patient_ref, id=_id(GOAL_SLEEP), life_area="somn",
                 text="Alva somnar före klockan 23 på vardagar och orkar gå upp på morgonen.",
                 due="2027-02-15"),
    ]


def participant(member_ref: str, role: str, on_behalf_of: str | None = None) -> Json:
    """One CareTeam participant with a role from sip-participant-role (not checked here, so
    tests can build wrong ones)."""
    out: Json = {"role": [{"coding": [_coding(sip.CS_PARTICIPANT_ROLE, role)]}],
                 "member": {"reference": member_ref}}
    if on_behalf_of is not None:
        out["onBehalfOf"] = {"reference": on_behalf_of}
    return out


def sip_careteam(patient_ref: str = PATIENT, *, id: str = _id(CARETEAM), status: str = "active",
                 coordinator: tuple[str, str] = (COORDINATOR, SOCIAL_SERVICES),
                 representatives: Sequence[tuple[str, str]] = (
                     (BUP_REPRESENTATIVE, BUP), (SCHOOL_REPRESENTATIVE, SCHOOL)),
                 relatives: Sequence[tuple[str, str]] = ((MOTHER, "custodian"),),
                 include_individual: bool = True) -> Json:
    """The SIP participants: the individual, relatives (member, role), the coordinator
    (member, organisation) and one representative per invited organisation."""
    parts: list[Json] = []
    if include_individual:
        parts.append(participant(patient_ref, sip.ROLE_INDIVIDUAL))
    parts += [participant(member, role) for member, role in relatives]
    parts.append(participant(coordinator[0], sip.ROLE_COORDINATOR, coordinator[1]))
    parts += [participant(member, sip.ROLE_ORGANISATION_REPRESENTATIVE, org)
              for member, org in representatives]
    return {
        "resourceType": "CareTeam",
        "id": id,
        "status": status,
        "category": [sip.SIP_CARETEAM_CATEGORY.concept()],
        "name": "SIP Alva Andersson",
        "subject": {"reference": patient_ref},
        "period": {"start": "2026-11-20"},
        "participant": parts,
        "managingOrganization": [{"reference": coordinator[1]}],
    }


def activity(performer_ref: str, description: str, party: str, *,
             goal_refs: Iterable[str] = (), status: str = "scheduled") -> Json:
    """One insats: who does it (organisation), what, and whose it is (kommun/region/other)."""
    detail: Json = {
        "extension": [{"url": sip.EXT_RESPONSIBLE_PARTY, "valueCode": party}],
        "status": status,
        "performer": [{"reference": performer_ref}],
        "description": description,
    }
    goals = [{"reference": g} for g in goal_refs]
    if goals:
        detail["goal"] = goals
    return {"detail": detail}


def demo_activities() -> list[Json]:
    return [
        activity(BUP, "Samtalsbehandling (KBT) på BUP varannan vecka och utredning av "
                      "koncentrationssvårigheter.", "region", goal_refs=[GOAL_SLEEP],
                 status="in-progress"),
        activity(SCHOOL, "Anpassad studiegång med stöd av specialpedagog; elevhälsan följer "
                         "upp närvaron varje vecka och kontaktar mamma vid frånvaro.", "kommun",
                 goal_refs=[GOAL_SCHOOL, GOAL_SCHOOL_STEP]),
        activity(SOCIAL_SERVICES, "Familjebehandling i hemmet en gång i veckan med fokus på "
                                  "morgonrutiner och sömn.", "kommun",
                 goal_refs=[GOAL_SCHOOL_STEP, GOAL_SLEEP]),
    ]


def sip_careplan(patient_ref: str = PATIENT, status: str = "active", *,
                 id: str = "alva-sip", author_ref: str = SOCIAL_SERVICES,
                 careteam_ref: str = CARETEAM,
                 goal_refs: Sequence[str] = (GOAL_SCHOOL, GOAL_SCHOOL_STEP, GOAL_SLEEP),
                 activities: Sequence[Json] | None = None, principal: str = "kommun",
                 follow_up: str = "2027-02-15T13:00:00+01:00") -> Json:
    """A complete SIP (all content the law requires), established unless ``status`` says
    otherwise."""
    return {
        "resourceType": "CarePlan",
        "id": id,
        "extension": [
            {"url": sip.EXT_NEEDS, "valueMarkdown":
                "Alva har hög skolfrånvaro sedan i våras, sover dåligt och känner sig nedstämd. "
                "Hon behöver stöd för att komma till skolan, hjälp med sömnen och någon att "
                "prata med. Mamma behöver stöd i morgonrutinerna."},
            {"url": sip.EXT_PRINCIPAL, "valueCode": principal},
            {"url": sip.EXT_COORDINATION, "valueMarkdown":
                "Samordningsansvarig på socialtjänsten håller ihop planen och är kontaktperson "
                "för Alva och mamma. Skolan, BUP och socialtjänsten stämmer av med varandra "
                "varannan vecka; ändringar i planen görs bara efter att Alva och mamma har "
                "godkänt dem."},
            {"url": sip.EXT_FOLLOW_UP, "valueDateTime": follow_up},
        ],
        "status": status,
        "intent": "plan",
        "category": [{"coding": [sip.SIP_CAREPLAN_TYPE.coding()],
                      "text": "Samordnad individuell plan"}],
        "title": "SIP för Alva Andersson",
        "description": "Samordnad individuell plan för skolnärvaro, sömn och mående.",
        "subject": {"reference": patient_ref},
        "period": {"start": "2026-11-20"},
        "created": "2026-11-20T14:30:00+01:00",
        "author": {"reference": author_ref},
        "careTeam": [{"reference": careteam_ref}],
        "goal": [{"reference": g} for g in goal_refs],
        "activity": list(activities) if activities is not None else demo_activities(),
    }


def sip_consent(patient_ref: str = PATIENT,
                actor_refs: Sequence[str] = (SOCIAL_SERVICES, BUP, SCHOOL, MOTHER),
                status: str = "active", *, id: str = "alva-sip-samtycke",
                given_by: Sequence[str] = (PATIENT, MOTHER),
                start: str = "2026-11-10", end: str | None = "2027-11-10") -> Json:
    """The individual's consent to the SIP and to information exchange between ``actor_refs``
    (for a child, given together with the custodian)."""
    period: Json = {"start": start}
    if end is not None:
        period["end"] = end
    return {
        "resourceType": "Consent",
        "id": id,
        "status": status,
        "scope": sip.PATIENT_PRIVACY.concept(),
        "category": [sip.PRIVACY_CONSENT.concept(), sip.SIP_CONSENT_CATEGORY.concept()],
        "patient": {"reference": patient_ref},
        "dateTime": "2026-11-10T10:15:00+01:00",
        "performer": [{"reference": r} for r in given_by],
        "organization": [{"reference": SOCIAL_SERVICES}],
        "policyRule": sip.OPTIN.concept(),
        "provision": {
            "type": "permit",
            "period": period,
            "actor": [{"role": sip.IRCP.concept(), "reference": {"reference": r}}
                      for r in actor_refs],
            "purpose": [_coding("http://terminology.hl7.org/CodeSystem/v3-ActReason", "TREAT",
                                "treatment")],
        },
    }


_DEMO_ANSWERS: Mapping[str, tuple[str, str, str]] = {
    "sysselsattning": (
        "Går i årskurs 9. Närvaro cirka 40 procent sedan i våras.",
        "Jag vill gå i skolan men orkar inte på morgonen, och det är stökigt i klassen.",
        "Anpassad studiegång, stöd av specialpedagog, en vuxen att gå till på skolan."),
    "somn": (
        "Somnar sent, ofta efter klockan 02 på vardagar.",
        "Jag ligger vaken och tänker. Mobilen håller mig vaken.",
        "Stöd med sömnrutiner, bedömning av sömnsvårigheterna på BUP."),
    "halsa": (
        "Nedstämd sedan ett år, i kontakt med BUP sedan augusti.",
        "Jag mår bättre när jag har något att göra på dagarna.",
        "Fortsatt behandling på BUP."),
    "socialt-liv": (
        "Har två nära vänner, träffar dem mest på nätet.",
        "Jag saknar att träffa kompisar på riktigt.",
        "Stöd att komma tillbaka till en fritidsaktivitet."),
}


def kartlaggning(patient_ref: str = PATIENT, author_ref: str = COORDINATOR, *,
                 id: str = "alva-kartlaggning",
                 answers: Mapping[str, tuple[str, str, str]] | None = None,
                 whole_situation: str = "Alva bor med mamma och lillebror. Hon har hög "
                                        "skolfrånvaro, sover dåligt och är nedstämd.",
                 status: str = "completed") -> Json:
    """The coordinator's kartläggning: per life area (current situation, the individual's own
    description, needs)."""
    items: list[Json] = [{"linkId": "hela-situationen", "text": "Den enskildes hela situation",
                          "answer": [{"valueString": whole_situation}]}]
    for area, (now, own, needs) in (answers if answers is not None else _DEMO_ANSWERS).items():
        items.append({"linkId": area, "item": [
            {"linkId": f"{area}.nulage", "answer": [{"valueString": now}]},
            {"linkId": f"{area}.egen-beskrivning", "answer": [{"valueString": own}]},
            {"linkId": f"{area}.behov", "answer": [{"valueString": needs}]},
        ]})
    return {
        "resourceType": "QuestionnaireResponse",
        "id": id,
        "questionnaire": sip.QUESTIONNAIRE_KARTLAGGNING,
        "status": status,
        "subject": {"reference": patient_ref},
        "authored": "2026-11-12T09:00:00+01:00",
        "author": {"reference": author_ref},
        "item": items,
    }


# --------------------------------------------------------------------------- whole case

def approval_provenance(plan_ref: str = "CarePlan/alva-sip",
                        approvers: Sequence[str] = (PATIENT, MOTHER), *, id: str | None = None,
                        when: str = "2026-11-27T14:00:00+01:00",
                        author_ref: str = SOCIAL_SERVICES) -> Json:
    """The person's approval of a plan established outside the hub (rule 3), imported beside
    it: a Provenance naming who approved it (attester) and when."""
    attester = {"coding": [_coding(sip.PROVENANCE_AGENT, "attester")]}
    return {
        "resourceType": "Provenance",
        "id": id or f"{_id(plan_ref)}-godkannande",
        "target": [{"reference": plan_ref}],
        "occurredDateTime": when,
        "recorded": when,
        "activity": {"coding": [_coding(sip.CS_PHASE, "upprattad")]},
        "agent": [{"type": {"coding": [_coding(sip.PROVENANCE_AGENT, "author")]},
                   "who": {"reference": author_ref}},
                  *({"type": attester, "who": {"reference": a}} for a in approvers)],
    }


_APPROVER_ROLES = frozenset({sip.ROLE_INDIVIDUAL, "custodian", "guardian",
                             "personal-representative"})


def with_approvals(resources: Sequence[Json]) -> list[Json]:
    """``resources`` with an approval for each SIP plan in them written as established that
    has none, by the individual and the custodians, guardians and representatives in its
    CareTeam (among ``resources``): what importing an established SIP takes."""
    out = list(resources)
    approved = {t["reference"] for r in out if r["resourceType"] == "Provenance"
                for t in r.get("target", [])}
    teams = {f"CareTeam/{r['id']}": r for r in out if r["resourceType"] == "CareTeam"}
    for plan in resources:
        ref = f"CarePlan/{plan.get('id')}"
        if plan["resourceType"] != "CarePlan" or plan.get("intent") != "plan" or \
                plan.get("status") not in ("active", "on-hold", "completed") or ref in approved:
            continue
        team = next((teams[t["reference"]] for t in plan.get("careTeam", [])
                     if t.get("reference") in teams), {})
        approvers = [p["member"]["reference"] for p in team.get("participant", [])
                     if p["role"][0]["coding"][0]["code"] in _APPROVER_ROLES]
        out.append(approval_provenance(ref, approvers or [plan["subject"]["reference"]],
                            author_ref=plan.get("author", {}).get("reference",
                                                                  SOCIAL_SERVICES)))
    return out


def demo_case() -> list[Json]:
    """The whole demo SIP, in an order where every reference points backwards (usable as a
    transaction's entries)."""
    return [
        patient(DEMO_PNR),
        related_person(),
        social_services(),
        organization(),
        school(),
        practitioner(),
        practitioner("SE2321000016-P7SL", "Sara", "Lind", id=_id(BUP_REPRESENTATIVE)),
        practitioner("SE2120000142-P0412", "Johan", "Berg", id=_id(SCHOOL_REPRESENTATIVE)),
        sip_consent(),
        kartlaggning(),
        *demo_goals(),
        sip_careteam(),
        sip_careplan(),
        approval_provenance(),
    ]


def resolver(resources: Iterable[Json]) -> Callable[[str, str], Json | None]:
    """A ``profiles.Resolve`` over in-memory resources (defaults to the demo case's)."""
    index = {(r["resourceType"], r["id"]): r for r in resources}
    return lambda rtype, rid: index.get((rtype, rid))


def demo_resolver() -> Callable[[str, str], Json | None]:
    return resolver(demo_case())


# --------------------------------------------------------------------------- discharge case
# Case (b): Gösta Nilsson, 84, is discharged from hospital after a hip fracture. He lives alone
# and needs home care (hemtjänst, Karlstads kommun) and primary care (Vårdcentralen Gripen,
# Region Värmland). His fast vårdkontakt at the vårdcentral initiates the SIP at discharge
# and coordinates it; his daughter takes part as a relative. No custodian: he is an adult.

DISCHARGE_PNR = "194205061239"     # Gösta, born 1942-05-06
DISCHARGE_PATIENT = "Patient/gosta"
DISCHARGE_DAUGHTER = "RelatedPerson/gosta-dotter"
VARDCENTRAL = "Organization/vardcentralen-gripen"
HEMTJANST = "Organization/hemtjansten-karlstad"
VARDCENTRAL_HSA = "SE2321000198-VC01"
HEMTJANST_HSA = "SE2120001637-HEM1"
DISCHARGE_COORDINATOR = "Practitioner/lena"
HEMTJANST_REPRESENTATIVE = "Practitioner/ahmed"
DISCHARGE_CARETEAM = "CareTeam/gosta-sip"
DISCHARGE_GOAL_HOME = "Goal/gosta-mal-hemma"
DISCHARGE_GOAL_HYGIENE = "Goal/gosta-mal-hygien"


def discharge_patient() -> Json:
    return patient(DISCHARGE_PNR, id=_id(DISCHARGE_PATIENT), given="Gösta", family="Nilsson")


def discharge_organisations() -> list[Json]:
    return [organization(VARDCENTRAL_HSA, "Region Värmland, Vårdcentralen Gripen",
                         id=_id(VARDCENTRAL)),
            organization(HEMTJANST_HSA, "Karlstads kommun, hemtjänsten", id=_id(HEMTJANST))]


def discharge_goals(patient_ref: str = DISCHARGE_PATIENT) -> list[Json]:
    return [
        sip_goal(patient_ref, id=_id(DISCHARGE_GOAL_HOME), life_area="hemliv",
                 text="Gösta bor kvar hemma och klarar sig tryggt mellan hemtjänstens besök.",
                 due="2027-06-01"),
        sip_goal(patient_ref, id=_id(DISCHARGE_GOAL_HYGIENE), life_area="personlig-hygien",
                 text="Gösta duschar två gånger i veckan med stöd och utan att falla.",
                 due="2027-03-01"),
    ]


def discharge_careteam(*, status: str = "proposed",
                       representatives: Sequence[tuple[str, str]] = ()) -> Json:
    team = sip_careteam(DISCHARGE_PATIENT, id=_id(DISCHARGE_CARETEAM), status=status,
                        coordinator=(DISCHARGE_COORDINATOR, VARDCENTRAL),
                        representatives=representatives,
                        relatives=((DISCHARGE_DAUGHTER, "relative"),))
    team["name"] = "SIP Gösta Nilsson"
    return team


def discharge_activities() -> list[Json]:
    return [
        activity(VARDCENTRAL, "Fast vårdkontakt på vårdcentralen; hembesök av "
                              "distriktssköterska varannan vecka och läkemedelsgenomgång "
                              "inom en månad efter utskrivningen.", "region",
                 goal_refs=[DISCHARGE_GOAL_HOME]),
        activity(HEMTJANST, "Hemtjänst morgon och kväll: hjälp med dusch, påklädning, måltider "
                            "och läkemedel; trygghetslarm installeras före hemgång.", "kommun",
                 goal_refs=[DISCHARGE_GOAL_HOME, DISCHARGE_GOAL_HYGIENE]),
    ]


def discharge_careplan(status: str = "draft", *,
                       follow_up: str = "2027-02-01T10:00:00+01:00") -> Json:
    plan = sip_careplan(DISCHARGE_PATIENT, status, id="gosta-sip", author_ref=VARDCENTRAL,
                        careteam_ref=DISCHARGE_CARETEAM,
                        goal_refs=(DISCHARGE_GOAL_HOME, DISCHARGE_GOAL_HYGIENE),
                        activities=discharge_activities(), principal="region",
                        follow_up=follow_up)
    for ext in plan["extension"]:
        if ext["url"] == sip.EXT_NEEDS:
            ext["valueMarkdown"] = (
                "Gösta, 84, skrivs ut från Centralsjukhuset Karlstad efter en höftfraktur. Han "
                "bor ensam, behöver hjälp med personlig hygien, måltider och läkemedel och vill "
                "bo kvar hemma.")
        elif ext["url"] == sip.EXT_COORDINATION:
            ext["valueMarkdown"] = (
                "Fast vårdkontakt på vårdcentralen samordnar. Hemtjänsten och vårdcentralen "
                "stämmer av varje vecka den första månaden; dottern Eva är kontaktperson.")
    plan.update(title="SIP för Gösta Nilsson",
                description="Samordnad individuell plan vid utskrivning från sjukhus.")
    return plan


def discharge_consent(*, start: str = "2026-11-10", end: str | None = "2027-11-10") -> Json:
    consent = sip_consent(DISCHARGE_PATIENT, (VARDCENTRAL, HEMTJANST, DISCHARGE_DAUGHTER),
                          id="gosta-sip-samtycke", given_by=(DISCHARGE_PATIENT,), start=start,
                          end=end)
    consent["organization"] = [{"reference": VARDCENTRAL}]
    return consent


def discharge_case() -> list[Json]:
    """Case (b) before the meeting: plan and care team drafted, consent given; references
    point backwards (usable as a transaction's entries)."""
    return [
        discharge_patient(),
        related_person(DISCHARGE_PATIENT, id=_id(DISCHARGE_DAUGHTER), given="Eva",
                       family="Nilsson", relationship="DAU"),
        *discharge_organisations(),
        practitioner("SE2321000198-P0042", "Lena", "Ek", id=_id(DISCHARGE_COORDINATOR)),
        practitioner("SE2120001637-P0077", "Ahmed", "Hassan",
                     id=_id(HEMTJANST_REPRESENTATIVE)),
        discharge_consent(),
        *discharge_goals(),
        discharge_careteam(),
        discharge_careplan(),
    ]
