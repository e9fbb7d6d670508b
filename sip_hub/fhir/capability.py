"""The CapabilityStatement: generated from what is implemented, so it claims nothing more."""

from __future__ import annotations

from typing import Any

from .. import __version__
from .models import FHIR_VERSION
from .patch import MEDIA_TYPE as PATCH_FORMAT
from .profiles import definitions
from .search import MAX_ITERATE, MAX_PARAMETERS, MAX_VALUES, MAX_VALUES_PER_PARAMETER
from .search_params import READ_ONLY_TYPES, RESOURCE_TYPES, params_for
from .sip import PROFILE_BY_TYPE

_WRITE = ["create", "update", "patch", "delete"]
_READ = ["read", "vread", "history-instance", "history-type", "search-type"]

# The access log is kept by the hub in a table of its own (sip_hub/store/audit.py): no client
# writes it (Access.check refuses every create, update and delete of it with a 403), and its
# search answers fewer parameters than the other types: no meta parameters, no :missing or
# :not, agents by identifier only (the events record who acted by identifier, so a search,
# _include or _revinclude through AuditEvent:agent by reference finds nothing).
_AUDIT = "AuditEvent"
_NO_CLIENT_WRITES = READ_ONLY_TYPES | {_AUDIT}
_AUDIT_UNSEARCHABLE = frozenset({"_profile", "_tag", "_security"})
_AUDIT_NO_INCLUDE = frozenset({f"{_AUDIT}:agent"})
_AUDIT_DOCUMENTATION = (
    "The hub's access log, written by the hub alone. Search: no :missing, :not or chaining; "
    "_sort by date, _lastUpdated or _id only; agent only as agent:identifier=system|value.")


def _declared_params(rtype: str) -> list[Any]:
    return [p for p in params_for(rtype).values()
            if not (rtype == _AUDIT and p.name in _AUDIT_UNSEARCHABLE)]


_INCLUDES: dict[str, list[str]] = {}
_REVINCLUDES: dict[str, list[str]] = {}
for _t in RESOURCE_TYPES:
    for _p in _declared_params(_t):
        if _p.type != "reference" or f"{_t}:{_p.name}" in _AUDIT_NO_INCLUDE:
            continue
        _INCLUDES.setdefault(_t, []).append(f"{_t}:{_p.name}")
        # A parameter without target types refers to any type (AuditEvent:entity).
        for _target in _p.targets or [r for r in RESOURCE_TYPES if r != _t]:
            _REVINCLUDES.setdefault(_target, []).append(f"{_t}:{_p.name}")


def _operations() -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """The operations the hub publishes an OperationDefinition for: (by resource type, at the
    system level). Derived from the definitions, so publishing one is what declares it;
    tests/fhir/test_operation_definitions.py holds the definitions and the routes together."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    system: list[dict[str, Any]] = []
    ops = sorted((d for d in definitions() if d["resourceType"] == "OperationDefinition"),
                 key=lambda d: (d["code"], d["url"]))
    for d in ops:
        entry = {"name": d["code"], "definition": d["url"]}
        if d.get("title"):
            entry["documentation"] = d["title"]
        if d.get("system"):
            system.append(dict(entry))
        if d.get("type") or d.get("instance"):
            for rtype in d.get("resource", []):
                by_type.setdefault(rtype, []).append(dict(entry))
    return by_type, system


def _param_doc(rtype: str, p: Any) -> str:
    if rtype == _AUDIT and p.name == "agent":
        return "Only as agent:identifier=system|value (FHIRPath: AuditEvent.agent.who)"
    return str(p.documentation or f"FHIRPath: {p.expression}")


def _resource(rtype: str) -> dict[str, Any]:
    writable = rtype not in _NO_CLIENT_WRITES
    interactions = _READ[:2] + _WRITE + _READ[2:] if writable else _READ
    out: dict[str, Any] = {
        "type": rtype,
        "interaction": [{"code": c} for c in interactions],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": writable,
        "conditionalCreate": writable,
        "conditionalRead": "full-support",
        "conditionalUpdate": writable,
        "conditionalDelete": "not-supported",
        "searchInclude": sorted(_INCLUDES.get(rtype, [])),
        "searchRevInclude": sorted(_REVINCLUDES.get(rtype, [])),
        "searchParam": [
            {"name": "_id", "type": "token"},
            {"name": "_lastUpdated", "type": "date"},
        ] + [{"name": p.name, "type": "uri" if p.type == "uri" else p.type,
              "documentation": _param_doc(rtype, p)}
             for p in _declared_params(rtype)],
    }
    if rtype == _AUDIT:
        out["documentation"] = _AUDIT_DOCUMENTATION
    if rtype in PROFILE_BY_TYPE:
        out["supportedProfile"] = [PROFILE_BY_TYPE[rtype]]
    for key in ("searchInclude", "searchRevInclude"):
        if not out[key]:
            del out[key]
    return out


def _security(base_url: str) -> dict[str, Any]:
    """SMART backend services: OAuth2 client credentials at the hub's token endpoint."""
    root = base_url.removesuffix("/fhir")
    return {
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": f"{root}/auth/token"}]}],
        "cors": False,
        "service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR"}], "text": "OAuth2 client credentials (SMART backend "
                                               "services), SMART v2 system scopes"}],
        "description": (
            f"Every interaction except this CapabilityStatement needs a bearer token from "
            f"{root}/auth/token (client_secret_basic or client_secret_post); discovery at "
            f"{root}/.well-known/smart-configuration. Access to personal data follows the "
            "person's SIP consent and the organisation's participation, and is audited."),
    }


def capability_statement(base_url: str, software_date: str,
                         messaging: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    by_type, system_operations = _operations()
    resources = [_resource(t) for t in RESOURCE_TYPES]
    # A resource type that has operations but no REST interactions is listed for its
    # operations alone.
    resources += [{"type": t} for t in sorted(by_type) if t not in RESOURCE_TYPES]
    for entry in resources:
        if entry["type"] in by_type:
            entry["operation"] = by_type[entry["type"]]
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": (
            "Searches are strict by default: an unknown parameter, or a modifier or chain "
            "not supported, is a 400. Send 'Prefer: handling=lenient' to have them ignored "
            "and reported; a known parameter with an invalid value, a modifier on a result "
            "parameter (_sort:desc; a descending key is _sort=-date) and _sort given twice "
            "are a 400 also then. A date without a time is a Swedish day (Europe/Stockholm), "
            "a time without a zone Swedish time. "
            "Paging with _count: the next link continues after the page's last match "
            "(_cursor, bound to its search), so a client paging while others write sees "
            "every lasting match once; _offset is taken too; _total (none, estimate, "
            "accurate); "
            "_summary (true, text, data, count, false) and _elements (top-level elements "
            "by name, a choice element without [x]; with id, meta, the mandatory elements "
            "and the modifiers; on the matches, while _summary applies to included resources "
            "too), also on reads; a subset is tagged SUBSETTED; an unknown element is a 400 "
            "(ignored under lenient handling). _sort on _id, _lastUpdated and date, string, "
            "token and uri "
            "parameters; modifiers :missing (every search parameter, not _id and "
            "_lastUpdated), :not (token, not _id), :exact and "
            ":contains (string), :identifier and a type (reference); one level of chaining "
            "on reference parameters; _include and _revinclude, with :iterate (from what was "
            f"included too, for at most {MAX_ITERATE} rounds after the first; not through the "
            "access log). AuditEvent "
            "answers less: see its documentation. Limits (a 400 beyond): "
            f"{MAX_VALUES_PER_PARAMETER} comma-separated values in one parameter, "
            f"{MAX_VALUES} values and {MAX_PARAMETERS} parameters in one search. Swedish "
            "identifiers are searched in any form a write accepts (a personnummer with or "
            "without its dash); a string value that is empty once spaces, case and accents "
            "are set aside is a 400."),
        "security": _security(base_url),
        "resource": resources,
        "interaction": [{"code": "transaction"}, {"code": "batch"},
                        {"code": "history-system"}],
    }
    if system_operations:
        rest["operation"] = system_operations
    out: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": software_date,
        "publisher": "sip_hub",
        "kind": "instance",
        "software": {"name": "sip_hub", "version": __version__},
        "implementation": {"description": "sip_hub: SIP integration hub", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "application/fhir+xml", "json", "xml"],
        "patchFormat": [PATCH_FORMAT],
        "rest": [rest],
    }
    if messaging:
        out["messaging"] = messaging
    return out
