"""The one door to ``fhir.resources``: structural validation and XML conversion of R4 resources.

R4 is the wire format; fhir.resources has no R4 module, so we use its R4B (4.3.0) models,
which are wire-compatible for the resources sip_hub handles (see README, "R4 and R4B").
Validation never rewrites the resource: the client's JSON is what gets stored.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

from .. import xml
from ..errors import BadRequest, Issue, Unprocessable

FHIR_VERSION = "4.0.1"


@lru_cache(maxsize=None)
def model_class(resource_type: str) -> type[FHIRAbstractModel] | None:
    if not resource_type or not resource_type[0].isupper():
        return None
    try:
        cls = get_fhir_model_class(resource_type)
    except (ValueError, KeyError, ImportError):
        return None
    return cls if cls.has_resource_base() else None


def is_resource_type(name: str) -> bool:
    return model_class(name) is not None


def _fhirpath(resource_type: str, loc: tuple[Any, ...]) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "__root__":
            path += f".{part}"
    return path


def validate(resource: dict[str, Any]) -> None:
    """Structural validation (types, cardinality, primitives' regexes) of one resource.

    Raises BadRequest for a missing or unknown resourceType and Unprocessable with one issue
    per failing element, each named by FHIRPath.
    """
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(rtype, str):
        raise BadRequest("The body is not a FHIR resource: resourceType is missing")
    cls = model_class(rtype)
    if cls is None:
        raise BadRequest(f"Unknown resourceType '{rtype}'", expression="resourceType")
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        issues = [
            Issue("structure" if e["type"] in ("extra_forbidden", "missing") else "value",
                  f"{e['msg']}", (_fhirpath(rtype, tuple(e["loc"])),))
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise Unprocessable(f"{rtype} is not valid FHIR R4: {issues[0].diagnostics} at "
                            f"{issues[0].expression[0]}", issues=issues) from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        # fhir_core's own root validators assume shapes that malformed input breaks (a
        # number where a primitive's extension object belongs raises AttributeError)
        raise Unprocessable(f"{rtype} is not valid FHIR R4: {exc}", expression=rtype) from None


def from_xml(data: bytes) -> dict[str, Any]:
    """FHIR XML to the JSON form, through the hardened parser."""
    root = xml.parse(data)
    tag = root.tag
    if not isinstance(tag, str) or not tag.startswith("{http://hl7.org/fhir}"):
        raise BadRequest("XML root element is not in the FHIR namespace http://hl7.org/fhir")
    rtype = tag.split("}", 1)[1]
    cls = model_class(rtype)
    if cls is None:
        raise BadRequest(f"Unknown resourceType '{rtype}'")
    try:
        model = cls.model_validate_xml(xml.tostring(root), xmlparser=xml.hardened_parser())
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise Unprocessable(f"{rtype} is not valid FHIR R4: {first['msg']}",
                            expression=_fhirpath(rtype, tuple(first["loc"]))) from None
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise BadRequest(f"Cannot read FHIR XML: {exc}") from None
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def to_xml(resource: dict[str, Any]) -> bytes:
    cls = model_class(resource["resourceType"])
    assert cls is not None
    model = cls.model_validate(resource)
    out = model.model_dump_xml(xml_declaration=True)
    return out.encode("utf-8") if isinstance(out, str) else out
