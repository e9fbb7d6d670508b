"""A patient's compartment: which resources hold a person's data, and whose data they are.

Most resources name their person themselves (a plan its subject, a consent its patient). A
Provenance of a SIP targets the person's plan, not the person: it is in the compartments of
what it targets (the plan's subject) and of the persons among its agents (the person who
approved the plan), which only the stored targets tell. The store resolves them when the
Provenance is written, and again when what it targets changes person or is deleted (a record
corrected to another person takes its Provenances with it), and keeps them as its ``patient``
index rows, so that search by patient, the compartment's access rules and the access log
agree on whose it is.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from .indexing import split_reference
from .profiles import Resolve
from .search_params import params_for

# The search parameter that puts each personal-data type in a patient's compartment.
COMPARTMENT: dict[str, str] = {
    "Patient": "_self", "CarePlan": "patient", "CareTeam": "patient", "Consent": "patient",
    "Goal": "patient", "Appointment": "patient", "Task": "patient",
    "QuestionnaireResponse": "patient", "Provenance": "patient", "RelatedPerson": "patient",
    "AuditEvent": "patient",
}
# Types whose compartment is resolved through what their references point at, and the
# reference search parameter that names those.
RESOLVED = frozenset({"Provenance"})
RESOLVED_THROUGH = {"Provenance": "target"}


def _patient_ids(values: list[Any]) -> set[str]:
    out = set()
    for value in values:
        ref = value.get("reference") if isinstance(value, dict) else None
        target = split_reference(ref) if isinstance(ref, str) else None
        if target and target[0] == "Patient":
            out.add(target[1])
    return out


def patients_of(rtype: str, resource: dict[str, Any] | None, rid: str | None = None,
                resolve: Resolve | None = None) -> set[str]:
    """Ids of the patients whose compartment holds this resource. ``resolve``: the stored
    resources its references name, for a Provenance (without it, only the persons it names
    itself, as target or agent)."""
    if rtype == "Patient":
        return {rid or (resource or {}).get("id", "")} - {""}
    param = COMPARTMENT.get(rtype)
    if param is None or resource is None:
        return set()
    params = params_for(rtype)
    out = _patient_ids(params[param].values(resource))
    if rtype in RESOLVED:
        out |= _patient_ids(params["agent"].values(resource))
        if resolve is not None:
            out |= _targets_patients(params["target"].values(resource), params["target"].targets,
                                     resolve)
    return out


def _targets_patients(values: list[Any], types: tuple[str, ...], resolve: Resolve) -> set[str]:
    """The patients of the stored resources a Provenance targets, as they are now."""
    out: set[str] = set()
    for value in values:
        ref = value.get("reference") if isinstance(value, dict) else None
        target = split_reference(ref) if isinstance(ref, str) else None
        if target is None or target[0] not in types or target[0] in RESOLVED | {"Patient"}:
            continue  # (a Patient it names itself; a Provenance of one is not resolved on)
        doc = resolve(*target)
        if doc is not None:
            out |= patients_of(target[0], doc, target[1])
    return out


@lru_cache(maxsize=1)
def _resolved_targets() -> frozenset[str]:
    return frozenset(t for rtype, param in RESOLVED_THROUGH.items()
                     for t in params_for(rtype)[param].targets) - RESOLVED - {"Patient"}


def resolved_through(rtype: str) -> bool:
    """Whether a resource of ``rtype`` can give another its patients (a Provenance of it):
    when its own patients change, so do that one's."""
    return rtype in _resolved_targets()


def index_rows(rtype: str, resource: dict[str, Any], resolve: Resolve
               ) -> list[tuple[str, str, str]]:
    """The reference index rows a resource of a ``RESOLVED`` type has besides those its
    content gives (``indexing.extract``): its compartment's patients it does not name as
    the parameter's own value."""
    param = COMPARTMENT[rtype]
    named = _patient_ids(params_for(rtype)[param].values(resource))
    return [(param, "Patient", pid)
            for pid in sorted(patients_of(rtype, resource, resolve=resolve) - named)]
