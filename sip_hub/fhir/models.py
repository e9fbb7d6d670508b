"""The one door to ``fhir.resources``: structural validation and XML conversion of R4 resources.

R4 is the wire format; fhir.resources has no R4 module, so we use its R4B (4.3.0) models,
which are wire-compatible for the resources sip_hub handles (see README, "R4 and R4B").
Validation never rewrites the resource: the client's JSON is what gets stored.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Any, Callable, Iterator

import orjson

import fhir_core.types
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.utils import is_list_type, is_primitive_type
from fhir.resources.R4B.fhirtypes import FHIRPrimitiveExtensionType
from pydantic import ValidationError

from .. import xml
from ..errors import BadRequest, Issue, Unprocessable
from . import validation
from .exact import Exact

FHIR_VERSION = "4.0.1"


# ---------------------------------------------------------------- fhir_core's own checks
# Two changes to how fhir_core's models validate, made before fhir.resources defines any
# model (pydantic binds a model's validators and decides how to build it when it creates the
# class), so they hold for good in this process; `.published` runs the library as published
# in a process of its own, for the benchmarks' floors and the tests that compare both.
#
# 1. Every element of a resource (a CarePlan with five activities has ~40) runs two
# validators of fhir_core's base model: one before pydantic's, rejecting a null in a list of
# complex elements, and one after, checking required primitives and choice elements
# (value[x]). As published they work out, for each element, which of its class's fields to
# check (from the field annotations and freshly built lists and dicts), which made them
# about 60% of structural validation's time. The two below ask the same questions of the same
# fields, worked out once per class; whenever an element fails or is unusual (a null in a
# list, a required primitive absent, a choice with none or several types) they call
# fhir_core's own validator, so every failure and its message is the library's.
#
# 2. fhir_core's base model defines its own __init__, to take resourceType out of the input
# before pydantic validates it. A model with its own __init__ makes pydantic call it for
# every element it validates (a Python call and a copy of the element's keys, then a
# validation entered anew), about a quarter of what was left of validation's time. The
# __init__ is marked as pydantic's own (pydantic then validates the elements directly) and
# the before-validator below takes resourceType out instead, with the __init__'s rules and
# its error. Constructing a model in code (`CarePlan(**data)`) still runs the __init__.
#
# 3. FHIRPrimitiveExtension (the `_status` beside a primitive `status`) has a before-validator
# of its own, which pydantic runs before the base model's: as published, the __init__ checked
# a resourceType in such an element before either. Each one's resourceType is checked as it
# is handed to its class instead (fhir_core's validator of the field's type, which the field
# looks up at every call; importing the types module defines no model).
#
# 4. A resource inside another (a Bundle entry's, a contained one) is validated by the class
# fhir_core finds by its resourceType, importing it by name (pydantic's import_string: a
# module lookup and an attribute walk) for every such resource. The names are the
# R4B types' few hundred and each always names the same class: found once, kept.

AS_PUBLISHED_ENV = "SIP_HUB_FHIR_AS_PUBLISHED"  # "1": leave fhir_core as published
AS_PUBLISHED = os.environ.get(AS_PUBLISHED_ENV) == "1"
_library_init = FHIRAbstractModel.__init__
_library_reject_nulls = FHIRAbstractModel.reject_null_complex_elements.__func__
_library_after = FHIRAbstractModel.validate_after_model_construction


class _Checks:
    """What the two validators look at in the elements of one model class."""

    __slots__ = ("lists", "required", "choice_of", "needed", "resource_type_field")

    def __init__(self, cls: type[FHIRAbstractModel]) -> None:
        fields = cls.model_fields
        # the keys (field names and their aliases) of lists of complex elements
        self.lists = frozenset(
            key for name, field in fields.items()
            if is_list_type(field) and not is_primitive_type(field) and not name.endswith("__ext")
            for key in (name, field.alias) if key)
        model = cls.model_construct()
        names = cls.get_alias_mapping()
        self.required = tuple(names[name] for name, _ in model.get_required_fields())
        choices = list(model.get_one_of_many_fields().values())
        # each choice element's field -> the bit of its choice (value[x], onset[x], ...)
        self.choice_of = {name: 1 << i for i, choice in enumerate(choices) for name in choice}
        self.needed = sum(1 << i for i, choice in enumerate(choices)
                          if fields[choice[0]].json_schema_extra["one_of_many_required"] is True)
        self.resource_type_field = "resourceType" in fields


class _ChecksByClass(dict[type, _Checks]):
    """Each model class's _Checks, worked out when one of its elements is first validated."""

    def __missing__(self, cls: type[FHIRAbstractModel]) -> _Checks:
        found = self[cls] = _Checks(cls)
        return found


_checks = _ChecksByClass()


def _without_resource_type(cls: type[FHIRAbstractModel], data: dict[str, Any],
                           checks: _Checks) -> dict[str, Any]:
    """``data`` as fhir_core's base model's __init__ passes it on (a copy: the caller's JSON is
    left as it is), or that __init__'s own error for a resource type not the class's."""
    data = dict(data)
    resource_type = data.pop("resource_type", None)
    if "resourceType" in data and not checks.resource_type_field:
        resource_type = data.pop("resourceType")
    if resource_type is not None and resource_type != cls.__resource_type__:
        _library_init(cls.__new__(cls), resource_type=resource_type)  # raises
        raise AssertionError(f"fhir_core accepted {resource_type!r} for {cls.__name__}")
    return data


def _reject_null_complex_elements(cls: type[FHIRAbstractModel], data: Any) -> Any:
    if data.__class__ is dict:  # a plain dict (JSON): its few keys, not the class's fields
        checks = _checks[cls]
        if "resourceType" in data or "resource_type" in data:
            data = _without_resource_type(cls, data, checks)
        lists = checks.lists
        for key in data:
            if key in lists:
                value = data[key]
                if isinstance(value, list) and None in value:
                    return _library_reject_nulls(cls, data)
        return data
    return _library_reject_nulls(cls, data)  # anything else, as rare as it is unusual


def _validate_after_model_construction(self: FHIRAbstractModel) -> FHIRAbstractModel:
    checks = _checks[type(self)]
    values = self.__dict__
    for name in checks.required:
        if values.get(name) is None:
            return _library_after(self)
    choice_of = checks.choice_of
    if choice_of:
        # a field the input did not set holds its default, None for every choice element
        present = 0
        for name in self.__pydantic_fields_set__:
            bit = choice_of.get(name)
            if bit is not None and values[name] is not None:
                if present & bit:
                    return _library_after(self)
                present |= bit
        if checks.needed & ~present:
            return _library_after(self)
    return self


def _resource_type_first(library: Any) -> Any:
    """fhir_core's validator of a field's type (``library``, bound to the type), with the
    resourceType of a JSON element checked first, as the model's __init__ did."""
    def fhir_model_validator(_type: type, value: Any, model_klass: type[FHIRAbstractModel]
                             ) -> Any:
        if value.__class__ is dict and ("resourceType" in value or "resource_type" in value):
            value = _without_resource_type(model_klass, value, _checks[model_klass])
        return library(value, model_klass)
    return classmethod(fhir_model_validator)


if not AS_PUBLISHED:
    FHIRAbstractModel.reject_null_complex_elements = classmethod(  # type: ignore[assignment]
        _reject_null_complex_elements)
    FHIRPrimitiveExtensionType.fhir_model_validator = _resource_type_first(  # type: ignore
        FHIRPrimitiveExtensionType.fhir_model_validator)
    FHIRAbstractModel.validate_after_model_construction = (  # type: ignore[method-assign]
        _validate_after_model_construction)
    FHIRAbstractModel.__init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]
    fhir_core.types.import_string = lru_cache(maxsize=None)(  # type: ignore[attr-defined]
        fhir_core.types.import_string)


# ---------------------------------------------------------------- Extension's value[x]
# FHIR gives every primitive an id and extensions of its own (``_valueString`` beside
# ``valueString`` in JSON; the extensions inside ``<valueString>`` in XML), an extension's
# value too: a translation of a string value (the translation extension), a data-absent
# reason for a code. fhir.resources gives each primitive of every type a ``__ext`` field for
# them, except the value[x] of Extension, so valid FHIR was refused ("Extra inputs are not
# permitted") and XML lost them. The class the models look Extension up by (by its module's
# attribute, when an extension is first validated) is fhir.resources' own with those fields.
# Such a key also names the value's type: ``valueString`` with ``_valueCode`` is two values,
# which value[x] does not allow (refused by ``validation``'s ext-1, beside the count it makes).

def _extension_class() -> None:
    from pydantic import Field, create_model
    from fhir.resources.R4B import extension, fhirtypes

    library = extension.Extension
    fields: dict[str, Any] = {
        f"{name}__ext": (fhirtypes.FHIRPrimitiveExtensionType | None,
                         Field(None, alias=f"_{name}",
                               title=f"Extension field for ``{name}``."))
        for name, field in library.model_fields.items()
        if name.startswith("value") and is_primitive_type(field)}
    cls: type[FHIRAbstractModel] = create_model(  # type: ignore[call-overload]
        "Extension", __base__=library, __module__=library.__module__, **fields)
    extension.Extension = cls  # type: ignore[misc]


if not AS_PUBLISHED:
    _extension_class()


from fhir.resources.R4B import get_fhir_model_class  # noqa: E402  (after the checks above)


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
        if isinstance(resource, dict) and "resourceType" in resource:
            raise BadRequest(f"The body is not a FHIR resource: {_NOT_A_TYPE}",
                             expression="resourceType")
        raise BadRequest("The body is not a FHIR resource: resourceType is missing")
    cls = model_class(rtype)
    if cls is None:
        raise BadRequest(f"Unknown resourceType '{rtype}'", expression="resourceType")
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        raise _invalid(rtype, exc.errors(include_url=False, include_context=False,
                                         include_input=False)) from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        # fhir_core's own root validators assume shapes that malformed input breaks (a
        # number where a primitive's extension object belongs raises AttributeError); a
        # resource inside this one of no type it knows fails its lookup of the class
        issues = [Issue("value", f"Unknown resourceType '{value[:64]}'"
                        if isinstance(value, str) else _NOT_A_TYPE, (path,))
                  for path, value in _unknown_inner_types(resource, rtype)]
        if issues:
            raise Unprocessable(f"{rtype} is not valid FHIR R4: {issues[0].diagnostics} at "
                                f"{issues[0].expression[0]}", issues=issues) from None
        raise Unprocessable(f"{rtype} is not valid FHIR R4: {exc}", expression=rtype) from None


def _invalid(rtype: str, errors: list[Any]) -> Unprocessable:
    issues = [Issue("structure" if e["type"] in ("extra_forbidden", "missing") else "value",
                    f"{e['msg']}", (_fhirpath(rtype, tuple(e["loc"])),)) for e in errors]
    return Unprocessable(f"{rtype} is not valid FHIR R4: {issues[0].diagnostics} at "
                         f"{issues[0].expression[0]}", issues=issues)


def refuse_unknown_elements(resource: dict[str, Any]) -> None:
    """Raises as ``validate`` does for the elements of ``resource`` that FHIR R4 does not
    define, and for nothing else: for a caller that checks the rest itself, part by part (a
    batch Bundle's entries each answer for their own faults). A resource whose shape breaks
    fhir_core's own validators is left to those checks."""
    cls = model_class(resource.get("resourceType") or "")
    if cls is None:
        return
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        unknown = [e for e in exc.errors(include_url=False, include_context=False,
                                         include_input=False) if e["type"] == "extra_forbidden"]
        if unknown:
            raise _invalid(resource["resourceType"], unknown) from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        pass  # (see validate)


_NOT_A_TYPE = "resourceType must be a string naming a resource type"


def _unknown_inner_types(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(FHIRPath, value) of each resourceType below ``node`` that names no resource type (a
    Bundle entry's resource, a contained one)."""
    if isinstance(node, dict):
        if "resourceType" in node and "." in path:
            inner = node["resourceType"]
            if not (isinstance(inner, str) and is_resource_type(inner)):
                yield f"{path}.resourceType", inner
        for key, value in node.items():
            if key != "resourceType":
                yield from _unknown_inner_types(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _unknown_inner_types(value, f"{path}[{i}]")


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
    _check_xml_form(root, rtype)
    root = xml.unprefixed(root)
    try:
        model = cls.model_validate_xml(xml.tostring(root), xmlparser=xml.hardened_parser())
        out = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise Unprocessable(f"{rtype} is not valid FHIR R4: {first['msg']}",
                            expression=_fhirpath(rtype, tuple(first["loc"]))) from None
    except ArithmeticError:  # (decimal.InvalidOperation: fhir_core's Decimal() of a number
        # whose exponent is past 10**18, 1e-9999999999999999999)
        raise BadRequest("Cannot read FHIR XML: a number is out of range (its exponent is "
                         "beyond what a decimal holds)") from None
    except KeyError as exc:  # fhir_core's lookup of a child element among its parent's
        raise BadRequest(f"Cannot read FHIR XML: <{exc.args[0]}> is not an element FHIR R4 "
                         "defines where it appears") from None
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        # pydantic's serializer gives up about 125 elements deep (the parser allows 256):
        # beyond validation.MAX_DEPTH anyway
        if isinstance(exc, RecursionError) or "RecursionError" in str(exc):
            raise validation.too_deep(rtype) from None
        raise BadRequest(f"Cannot read FHIR XML: {exc}") from None
    _as_json_form(out, rtype)
    _zip(root, out, _from_attributes)
    return out


_FHIR_NS, _XHTML_NS = "{http://hl7.org/fhir}", "{http://www.w3.org/1999/xhtml}"


def _check_xml_form(root: Any, rtype: str) -> None:
    """What fhir_core reads past without a word, refused: a value written as text
    (``<gender>male</gender>``), an element with neither a value nor children (ele-1; its
    value was lost), an element of another namespace read as FHIR's, a narrative div outside
    XHTML's (reported at an element it does not have)."""
    _check_attributes(root, rtype)
    _check_no_text(root, rtype)
    stack = [(root, rtype)]
    while stack:
        el, path = stack.pop()
        _check_one_resource(el, path)
        for child in el:
            tag = child.tag
            if not isinstance(tag, str):
                continue  # (comments and processing instructions are removed on parsing)
            local = tag.rsplit("}", 1)[-1]
            where = f"{path}.{local}" if local[:1].islower() else path
            if local == "div" and path.endswith(".text"):
                if not tag.startswith(_XHTML_NS):
                    raise BadRequest(f"The narrative's div must be in the XHTML namespace "
                                     f"{_XHTML_NS[1:-1]}", expression=where)
                continue  # (XHTML: text is its content; validation checks it)
            if not tag.startswith(_FHIR_NS):
                raise BadRequest(f"<{local}> is not in the FHIR namespace "
                                 f"{_FHIR_NS[1:-1]}", expression=where)
            _check_attributes(child, where)
            _check_no_text(child, where)
            if local[:1].islower() and not _content_attributes(child) and len(child) == 0:
                raise BadRequest(f"<{local}> has neither a value nor children (ele-1; an id "
                                 "alone is no content)", expression=where)
            stack.append((child, where))


def _content_attributes(el: Any) -> set[str]:
    """The attributes of ``el`` that give it content: all but its id. ``<given id="g"/>``
    has none (ele-1: an id alone is not a value), and fhir_core, dropping it, left the id to
    be put back beside no value, as ``_given`` of the wrong shape (a 422 naming an element
    the client never sent)."""
    return set(el.attrib) - {"id"}


# The elements whose content is a resource in its type's element (xml.html, "Resources in
# resources"): contained, Bundle.entry.resource, Bundle.entry.response.outcome,
# Parameters.parameter.resource
_RESOURCE_WRAPPERS = (".contained", ".entry.resource", ".response.outcome",
                      ".parameter.resource", ".part.resource")


def _check_no_text(el: Any, path: str) -> None:
    """Refuse text beside elements (``<Patient>text<active .../></Patient>``): FHIR XML has
    no mixed content, and fhir_core drops it, the resource root's included."""
    if (el.text or "").strip() or any((c.tail or "").strip() for c in el):
        local = el.tag.rsplit("}", 1)[-1] if isinstance(el.tag, str) else "?"
        raise BadRequest(f"<{local}> holds text; FHIR XML gives a value in its value "
                         "attribute", expression=path)


def _check_one_resource(el: Any, path: str) -> None:
    """Refuse a ``contained`` (or entry ``resource``) holding other than one resource element:
    fhir_core reads the first and drops the rest without a word."""
    local = path.rsplit(".", 1)[-1]
    if not path.endswith(_RESOURCE_WRAPPERS) or el.tag != f"{_FHIR_NS}{local}":
        return  # (a resource's own element has the path of the one wrapping it)
    inner = [c for c in el if isinstance(c.tag, str)]
    if len(inner) != 1 or not inner[0].tag.rsplit("}", 1)[-1][:1].isupper():
        raise BadRequest(f"<{local}> must hold exactly one resource, in its type's element "
                         f"(<{local}><Patient>...</Patient></{local}>)", expression=path)


# FHIR's own attributes (xml.html: a primitive's value, an element's id, an extension's
# url) and xsi:schemaLocation, which FHIR's own examples carry
_ATTRIBUTES = frozenset({"value", "id", "url",
                         "{http://www.w3.org/2001/XMLSchema-instance}schemaLocation"})


def _check_attributes(el: Any, where: str) -> None:
    """Refuse an attribute FHIR XML does not define (``<active value="true" foo="x"/>``):
    fhir_core drops it without a word, and what the client sent would be lost."""
    for name in el.attrib:
        if name not in _ATTRIBUTES:
            local = name.rsplit("}", 1)[-1]
            raise BadRequest(f"<{el.tag.rsplit('}', 1)[-1]}> has an attribute '{local}' that "
                             "FHIR XML does not define (only value, id and url)",
                             expression=where)


# orjson, which writes what the hub stores, writes integers in this range; JSON input holds
# no other (orjson reads a wider whole number as a float).
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


def _as_json_form(node: Any, path: str) -> None:
    """Make the numbers of ``node`` (from_xml's JSON form, changed in place) what the same
    values read as JSON would be: fhir_core gives a whole decimal (1e20, or one of 21 digits)
    as a Python int, which JSON input holds as a float when it is wider than 64 bits, and
    refuses (400) when it is beyond a double (1e400). A narrative's div, which fhir_core
    writes in ASCII ("d&#229;"), is written in UTF-8 as JSON's are ("då")."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        where = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
        if type(value) is int and not _INT_MIN <= value <= _INT_MAX:
            try:
                node[key] = float(value)
            except OverflowError:
                raise BadRequest(f"Cannot read FHIR XML: the number at {where} is out of range "
                                 "(beyond a 64-bit floating point number, as JSON input's "
                                 "numbers must be)", expression=where) from None
        elif key == "div" and isinstance(value, str) and "&#" in value:
            node[key] = xml.tostring(xml.parse(value), declaration=False).decode()
        elif isinstance(value, (dict, list)):
            _as_json_form(value, where)


# A reference in written XML other than the five XML defines and character references.
_ENTITY_REF = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9A-Fa-f]+);)")


def to_xml(resource: dict[str, Any]) -> bytes:
    cls = model_class(resource["resourceType"])
    assert cls is not None
    model = cls.model_validate(resource)
    with xml.hardened_default():  # fhir_core parses each narrative div with lxml's default
        out = model.model_dump_xml(xml_declaration=True)
    out = out.encode("utf-8") if isinstance(out, str) else out
    # lxml writes text's "&" as "&amp;": any other reference is an entity a narrative declared
    # (a div stored before validation refused DOCTYPEs), left unexpanded, which would make the
    # document malformed
    if b"&" in out and _ENTITY_REF.search(out):
        raise ValueError("A narrative of the resource declares its own entities; it cannot be "
                         "written as FHIR XML")
    root = xml.parse(out)
    _zip(root, resource, _to_attributes)
    return xml.tostring(root)



# ---------------------------------------------------------------- fhir_core's XML, made exact
# fhir_core reads and writes FHIR XML through its models, which rewrite values (a dateTime's
# "Z" as "+00:00", ".120" as ".120000", a decimal 100 as "100.0", a 20-digit integer as a
# float) and drop what the models do not hold in XML's form: an element's id, which XML gives
# as an attribute (xml.html: `<name id="n1">`, `<birthDate id="b1" value=...>`, JSON's
# `name.id` and `_birthDate.id`). The walk below pairs each XML element with its JSON value and
# puts the exact value and id back, whichever way the conversion went.

_Visit = Callable[[Any, dict[str, Any], str, "int | None", bool], None]


def _zip(el: Any, node: dict[str, Any], visit: _Visit) -> None:
    """Call ``visit(child, node, name, index, primitive)`` for each FHIR element below ``el``
    with the JSON object ``node`` that holds it, walking into complex elements and the
    resources a ``contained``/``resource``/``outcome`` element wraps."""
    seen: dict[str, int] = {}
    children = [c for c in el if isinstance(c.tag, str) and c.tag.startswith(_FHIR_NS)]
    # (not a narrative's div: XHTML, kept as it is)
    if len({c.tag for c in children}) != len(children):
        _single_given_twice(children, node)  # (before the first is paired with the last's value)
    for child in children:
        name = child.tag[len(_FHIR_NS):]
        i = seen[name] = seen.get(name, -1) + 1
        value = node.get(name)
        index = i if isinstance(value, list) or isinstance(node.get(f"_{name}"), list) else None
        item = value[i] if isinstance(value, list) and i < len(value) else (
            None if isinstance(value, list) else value)
        primitive = not isinstance(item, dict)
        visit(child, node, name, index, primitive)
        if primitive:
            continue
        inner = [c for c in child if isinstance(c.tag, str)]
        if len(inner) == 1 and inner[0].tag[len(_FHIR_NS):][:1].isupper() and "resourceType" \
                in item:
            _zip(inner[0], item, visit)  # (a resource in its type's element)
        else:
            _zip(child, item, visit)


def _single_given_twice(children: list[Any], node: dict[str, Any]) -> None:
    """Refuse an element FHIR R4 allows once given more than once among ``children``:
    fhir_core keeps the last and the others were lost (and the first, paired with the last's
    value, would be reported as what it is not)."""
    seen: set[str] = set()
    for child in children:
        name = child.tag[len(_FHIR_NS):]
        if name in seen and not isinstance(node.get(name), list) and not isinstance(
                node.get(f"_{name}"), list):
            raise BadRequest(f"<{name}> is given more than once where FHIR R4 allows one",
                             expression=_xml_path(child))
        seen.add(name)


def _extra(node: dict[str, Any], name: str, index: int | None,
           create: bool) -> dict[str, Any] | None:
    """A primitive's JSON ``_name`` object (an item of the ``_name`` list when it repeats),
    made (with null placeholders) when ``create``."""
    key = f"_{name}"
    if index is None:
        if key not in node and create:
            node[key] = {}
        return node.get(key)
    if key not in node:
        if not create:
            return None
        node[key] = [None] * len(node.get(name) or ())
    items = node[key]
    while create and len(items) <= index:
        items.append(None)
    if index >= len(items):
        return None
    if items[index] is None and create:
        items[index] = {}
    return items[index]


def _json_text(value: Any) -> str:
    """A primitive's JSON value as the text of its XML value attribute."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return orjson.dumps(value).decode()
    return str(value)


def _to_attributes(el: Any, node: dict[str, Any], name: str, index: int | None,
                   primitive: bool) -> None:
    """Written XML: the JSON's own value text, and the element's id as its attribute."""
    if not primitive:
        item = node[name][index] if index is not None else node[name]
        own_id = el.find(f"{_FHIR_NS}id")
        if own_id is not None and "id" in item and not el.tag[len(_FHIR_NS):][:1].isupper():
            el.remove(own_id)
            el.set("id", item["id"])
        return
    values = node.get(name)
    value = values[index] if isinstance(values, list) and index is not None and index < len(
        values) else (None if isinstance(values, list) else values)
    if value is not None and "value" in el.attrib:
        el.set("value", _json_text(value))
    extra = _extra(node, name, index, create=False)
    if isinstance(extra, dict) and isinstance(extra.get("id"), str):
        el.set("id", extra["id"])


# FHIR's lexical forms (datatypes.html#primitive): fhir_core reads an integer as Python's int()
# does ("007", "+7", " 7", "7.0" are 7), and a decimal as a float (1.50 is 1.5).
_DECIMAL_FORM = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_INTEGER_FORM = re.compile(r"-?(0|[1-9][0-9]*)")


def _xml_path(el: Any) -> str:
    names = []
    while el is not None:
        tag = el.tag
        if isinstance(tag, str):
            names.append(tag.rsplit("}", 1)[-1])
        el = el.getparent()
    return ".".join(reversed(names))


def _number_as_written(el: Any, raw: str, current: int | float) -> Any:
    """The JSON value of a number's value attribute ``raw`` (read by fhir_core as
    ``current``): ``current`` when JSON writes it as ``raw``, else the decimal as written
    (``exact.Exact``); a 400 for a form FHIR does not give an integer or decimal. An int read
    from a form with a fraction is an integer element's (fhir_core reads a decimal's as a
    float), one read from a form with an exponent a decimal's (an integer's refuses it)."""
    if not _DECIMAL_FORM.fullmatch(raw) or current.__class__ is int and "." in raw and (
            "e" not in raw and "E" not in raw):
        local = el.tag.rsplit("}", 1)[-1]
        raise BadRequest(f"<{local} value=\"{raw[:40]}\"> is not a number as FHIR writes it "
                         "(an integer is -?(0|[1-9][0-9]*): no leading zero, no '+', no "
                         "fraction; a decimal adds an optional fraction and exponent)",
                         expression=_xml_path(el))
    if current.__class__ is int and _INTEGER_FORM.fullmatch(raw) and raw != "-0":
        return current  # (-0, which an int writes 0, is kept as written, as JSON's is)
    if orjson.dumps(current) == raw.encode():
        return current
    return Exact(raw)


def _from_attributes(el: Any, node: dict[str, Any], name: str, index: int | None,
                     primitive: bool) -> None:
    """Read XML: the value attribute's own text for a string-valued primitive (a dateTime as
    written), and an element's id attribute in the JSON form."""
    own_id = el.get("id")
    if not primitive:
        if own_id is not None:
            (node[name][index] if index is not None else node[name])["id"] = own_id
        return
    raw = el.get("value")
    if raw is not None and name in node:
        current = node[name][index] if index is not None else node[name]
        if isinstance(current, str):
            if index is not None:
                node[name][index] = raw
            else:
                node[name] = raw
        elif current.__class__ is bool:
            if raw not in ("true", "false"):  # (XML Schema's 1 and 0 are not FHIR's)
                raise BadRequest(f"<{name} value=\"{raw[:40]}\"> is not a boolean as FHIR "
                                 "writes it (true or false)", expression=_xml_path(el))
        elif current.__class__ in (int, float):
            number = _number_as_written(el, raw, current)
            if number is not current:
                if index is not None:
                    node[name][index] = number
                else:
                    node[name] = number
    if own_id is not None:
        extra = _extra(node, name, index, create=True)
        assert extra is not None
        extra["id"] = own_id
