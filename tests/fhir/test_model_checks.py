"""The hub's changes to fhir_core's validation decide exactly as fhir_core as published.

`sip_hub.fhir.models` replaces the base model's null-in-list check and its check of required
primitives and choice elements with versions that work out what to look at once per class,
and takes resourceType out of an element in its before-validator instead of the base model's
__init__ (which pydantic then no longer calls per element). Every resource below, and every
variant of it that breaks one of those rules (and many that break others), must get the same
answer here as in a process running fhir.resources as published (`sip_hub.fhir.published`):
accepted by both, or refused by both with the same issues.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_hub.fhir import models, published

Json = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "tests" / "fixtures" / "r4-examples").glob("*.json"))
ALVA = json.loads((REPO / "examples" / "alva-sip-transaction.json").read_text(encoding="utf-8"))

# A second type for a choice element that already has one, and choice elements some of these
# resources require or allow (Extension.value[x], CarePlan.activity.detail.scheduled[x], ...).
CHOICES: dict[str, Any] = {
    "valueString": "x", "valueBoolean": True, "valueCode": "c", "valueCoding": {"code": "c"},
    "valueReference": {"reference": "Patient/p1"}, "valueDateTime": "2024-01-01",
    "scheduledString": "x", "scheduledPeriod": {"start": "2024-01-01"},
    "productCodeableConcept": {"text": "x"}, "productReference": {"reference": "Medication/m"},
    "occurrenceDateTime": "2024-01-01", "occurrencePeriod": {"start": "2024-01-01"},
    "sourceReference": {"reference": "Contract/c"},
    "sourceAttachment": {"contentType": "text/plain"},
}


CHOICE_PREFIXES = ("value", "scheduled", "product", "occurrence", "source")


Outcome = tuple[str, Any]


@pytest.fixture(scope="module")
def library() -> Iterator[Any]:
    """A process running fhir.resources as published."""
    with published.process() as pool:
        yield pool


def all_both(library: Any, resources: list[Any]) -> list[tuple[Outcome, Outcome]]:
    """Each resource's outcome here and in the library's process (as a copy: validation must
    not change the caller's JSON either way)."""
    kept = copy.deepcopy(resources)
    fast = [published.outcome(resource) for resource in resources]
    assert resources == kept, "validation changed its input"
    return list(zip(fast, library.submit(published.outcomes, resources).result()))


def both(library: Any, resource: Any) -> tuple[Outcome, Outcome]:
    return all_both(library, [resource])[0]


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _nodes(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _nodes(value, (*path, i))


def _at(resource: Json, path: tuple[Any, ...]) -> Any:
    for step in path:
        resource = resource[step]
    return resource


def variants(resource: Json) -> Iterator[tuple[str, Json]]:
    """Each variant breaks (or, for some, keeps) one of the rules the two validators check."""
    for path, node in list(_nodes(resource)):
        if isinstance(node, list) and node and isinstance(node[0], (dict, str)):
            bad = copy.deepcopy(resource)
            _at(bad, path).append(None)
            yield f"null in {path}", bad
        if not isinstance(node, dict):
            continue
        if "resourceType" in node:
            # fhir_core's base model's __init__ took these out (and checked them)
            rtype = node["resourceType"]
            for key, value in (("resourceType", "Basic" if rtype != "Basic" else "Patient"),
                               ("resourceType", 7), ("resourceType", None),
                               ("resource_type", rtype), ("resource_type", "Basic"),
                               ("resource_type", None)):
                changed = copy.deepcopy(resource)
                _at(changed, path)[key] = value
                yield f"{path}.{key} = {value!r}", changed
            if path:  # a resource within a resource (contained, a Bundle's entry)
                gone = copy.deepcopy(resource)
                del _at(gone, path)["resourceType"]
                yield f"{path} without resourceType", gone
        elif path and path[-1] not in ("resource", "contained"):
            # an element of a resource given a resourceType
            for value in ("Basic", "CarePlan"):
                extra = copy.deepcopy(resource)
                _at(extra, path)["resourceType"] = value
                yield f"{path}.resourceType = {value}", extra
        for key in node:
            if key == "resourceType":
                continue
            gone = copy.deepcopy(resource)
            del _at(gone, path)[key]
            yield f"{path} without {key}", gone
            nulled = copy.deepcopy(resource)
            _at(nulled, path)[key] = None
            yield f"{path}.{key} null", nulled
            if isinstance(node[key], (str, bool, int)):
                # a primitive replaced by its extension (fine for a required one) or by nothing
                ext = copy.deepcopy(resource)
                parent = _at(ext, path)
                del parent[key]
                parent[f"_{key}"] = {"extension": [{"url": "http://example.org/absent",
                                                    "valueCode": "unknown"}]}
                yield f"{path}.{key} as extension", ext
                bare = copy.deepcopy(ext)
                _at(bare, path)[f"_{key}"] = {"id": "a"}
                yield f"{path}.{key} as bare extension", bare
        for key, value in CHOICES.items():
            # a second type beside one the element has (valueString beside valueCoding)
            if key not in node and any(k.startswith(_choice(key)) for k in node):
                more = copy.deepcopy(resource)
                _at(more, path)[key] = copy.deepcopy(value)
                yield f"{path} plus {key}", more


def _choice(key: str) -> str:
    return next(prefix for prefix in CHOICE_PREFIXES if key.startswith(prefix))


def resources() -> list[tuple[str, Json]]:
    found = [(p.stem, json.loads(p.read_text(encoding="utf-8"))) for p in EXAMPLES]
    found += [(f"alva-{e['resource']['resourceType']}-{i}", e["resource"])
              for i, e in enumerate(ALVA["entry"])]
    # resources within a resource: the first entries of the Alva SIP as a Bundle
    found.append(("alva-bundle", {**ALVA, "entry": ALVA["entry"][:3]}))
    return found


def _defined_models() -> list[type]:
    found, todo = [], list(FHIRAbstractModel.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_every_model_runs_the_hubs_checks() -> None:
    assert not models.AS_PUBLISHED
    for resource in [r for _, r in resources()]:  # defines their element models too
        models.validate(copy.deepcopy(resource))
    defined = [cls for cls in _defined_models() if cls.__module__.startswith("fhir.resources")]
    assert len(defined) > 50 and {"CarePlan", "CarePlanActivity", "Extension", "Coding"} <= {
        cls.__name__ for cls in defined}
    for cls in defined:
        validators = cls.__pydantic_decorators__.model_validators
        assert validators["reject_null_complex_elements"].func.__func__ is (
            models._reject_null_complex_elements), cls
        assert validators["validate_after_model_construction"].func is (
            models._validate_after_model_construction), cls
        # pydantic validates its elements itself, not through fhir_core's __init__
        assert cls.__pydantic_custom_init__ is False, cls


@pytest.mark.parametrize(("name", "resource"), resources(), ids=[n for n, _ in resources()])
def test_same_answer_as_fhir_core_for_every_variant(library: Any, name: str,
                                                    resource: Json) -> None:
    assert both(library, resource) == (("ok", None), ("ok", None))
    named = list(variants(resource))
    answers = all_both(library, [variant for _, variant in named])
    for (what, variant), (fast, as_published) in zip(named, answers):
        if _only_an_extension_values_sibling(as_published):
            # the one difference meant: the hub takes it, or refuses it for another reason
            assert fast == ("ok", None) or not _only_an_extension_values_sibling(fast), what
            assert fast == both(library, _without_extension_value_siblings(variant))[1], what
            continue
        assert fast == as_published, f"{name}: {what}"
    assert sum(fast[0] != "ok" for fast, _ in answers)  # the variants do reach the checks


def _only_an_extension_values_sibling(answer: Outcome) -> bool:
    """fhir.resources as published refuses the id and extensions of an extension's primitive
    value (``_valueDate`` beside ``valueDate``, valid FHIR) as an unknown key, the one
    answer of the library that the hub changes (``models``, "Extension's value[x]")."""
    kind, detail = answer
    return kind == "Unprocessable" and all(
        code == "structure" and text == "Extra inputs are not permitted"
        and expression[0].rsplit(".", 1)[-1].startswith("_value")
        and ".extension[" in expression[0] for code, text, expression in detail[1])


def _without_extension_value_siblings(node: Any) -> Any:
    """The resource with every ``_value...`` key of its extensions taken out (those of other
    elements kept, as it has no other key of that form)."""
    if isinstance(node, list):
        return [_without_extension_value_siblings(v) for v in node]
    if isinstance(node, dict):
        return {k: _without_extension_value_siblings(v) for k, v in node.items()
                if not (k.startswith("_value") and "url" in node)}
    return node


def test_each_rule_refuses_through_fhir_cores_own_message(library: Any) -> None:
    plan = {"resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/p1"},
            "activity": [{"detail": {"status": "not-started", "scheduledString": "weekly"}}]}
    cases = {
        "null in a list": ({"activity": [None]}, "None is not allowed as an element of activity"),
        "required primitive absent": ({"status": None}, "Value for the field 'status' is "
                                                        "required"),
        "two types of one choice": (
            {"activity": [{"detail": {"status": "not-started", "scheduledString": "weekly",
                                      "scheduledPeriod": {"start": "2024-01-01"}}}]},
            "Any of one field value is expected from this list"),
        "an extension without a value (value[x] is 0..1)": (
            {"extension": [{"url": "http://example.org/x"}]}, None),
    }
    for what, (change, message) in cases.items():
        fast, as_published = both(library, {**plan, **change})
        assert fast == as_published, what
        if message is None:
            assert fast == ("ok", None), what
        else:
            assert fast[0] == "Unprocessable" and message in fast[1][0], (what, fast)
    # a required primitive given only as an extension is accepted, as FHIR allows
    absent = {k: v for k, v in plan.items() if k != "status"}
    absent["_status"] = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/"
                                               "data-absent-reason", "valueCode": "unknown"}]}
    assert both(library, absent) == (("ok", None), ("ok", None))


def test_a_required_choice_left_out(library: Any) -> None:
    # Observation.component.value[x] is optional, Timing.repeat.bounds too; a choice that must
    # be there: Questionnaire.item.enableWhen.answer[x]
    q = {"resourceType": "Questionnaire", "status": "active",
         "item": [{"linkId": "1", "type": "boolean"},
                  {"linkId": "2", "type": "string",
                   "enableWhen": [{"question": "1", "operator": "=", "answerBoolean": True}]}]}
    assert both(library, q) == (("ok", None), ("ok", None))
    del q["item"][1]["enableWhen"][0]["answerBoolean"]
    fast, as_published = both(library, q)
    assert fast == as_published and fast[0] == "Unprocessable"
    assert "answer" in fast[1][0]


def test_a_primitives_extension_given_a_resource_type(library: Any) -> None:
    """The element beside a primitive (``_status``, each of ``_given``) has a validator of
    its own, which pydantic runs before the base model's: a resourceType in it is refused
    with fhir_core's message all the same (found by the test below: a Narrative's
    ``_status`` of ``{"id": null, "resourceType": false}``)."""
    patient = {"resourceType": "Patient", "id": "p1",
               "text": {"status": "generated",
                        "div": '<div xmlns="http://www.w3.org/1999/xhtml">Alva</div>'},
               "name": [{"family": "Svensson", "given": ["Alva", "Maria"]}]}
    cases = []
    for value in (False, "X", 7, "FHIRPrimitiveExtension", None):
        for extension in ({"id": None, "resourceType": value},
                          {"id": "e1", "resourceType": value},
                          {"id": "e1", "resource_type": value}):
            in_text = copy.deepcopy(patient)
            in_text["text"]["_status"] = extension
            in_list = copy.deepcopy(patient)
            in_list["name"][0]["_given"] = [None, extension]
            cases += [in_text, in_list]
    outcomes = all_both(library, cases)
    for resource, (fast, as_published) in zip(cases, outcomes):
        assert fast == as_published, resource
    assert any(fast[0] == "Unprocessable" and "expects resource type" in fast[1][0]
               for fast, _ in outcomes)
    assert any(fast == ("ok", None) for fast, _ in outcomes)


_PLAN = json.loads((REPO / "tests" / "fixtures" / "r4-examples" / "CarePlan-f001.json")
                   .read_text(encoding="utf-8"))
_PATHS = [p for p, _ in _nodes(_PLAN) if p]
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4)
    | st.sampled_from(["2024-01", "active", "Patient/1", "Basic", "CarePlan"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "reference", "status", "text", "extension", "url", "valueString",
                         "valueBoolean", "_status", "code", "start", "resourceType",
                         "resource_type"]), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None, database=None)
@given(where=st.sampled_from(_PATHS), value=_VALUES)
def test_same_answer_as_fhir_core_for_any_value_anywhere(library: Any, where: tuple[Any, ...],
                                                          value: Any) -> None:
    resource = copy.deepcopy(_PLAN)
    _at(resource, where[:-1])[where[-1]] = value
    fast, as_published = both(library, resource)
    assert fast == as_published
