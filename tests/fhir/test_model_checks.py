"""The hub's copies of fhir_core's two per-element validators decide exactly as fhir_core's own.

`sip_hub.fhir.models` replaces the base model's null-in-list check and its check of required
primitives and choice elements with versions that work out what to look at once per class.
Every resource below, and every variant of it that breaks one of those rules (and many that
break others), must get the same answer both ways: accepted by both, or refused by both with
the same issues.
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

from sip_hub.errors import BadRequest, Unprocessable
from sip_hub.fhir import models

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


def outcome(resource: Any) -> tuple[str, Any]:
    """('ok', None) or the error's class, its message and its issues."""
    try:
        models.validate(resource)
    except (BadRequest, Unprocessable) as exc:
        found = [(i.code, i.diagnostics, i.expression) for i in getattr(exc, "issues", [])]
        return type(exc).__name__, (str(exc), found)
    return "ok", None


def both(resource: Any) -> tuple[tuple[str, Any], tuple[str, Any]]:
    fast = outcome(copy.deepcopy(resource))
    with models.library_checks():
        library = outcome(copy.deepcopy(resource))
    return fast, library


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
    return found


def _defined_models() -> list[type]:
    found, todo = [], list(FHIRAbstractModel.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_every_model_runs_the_hubs_checks() -> None:
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


@pytest.mark.parametrize(("name", "resource"), resources(), ids=[n for n, _ in resources()])
def test_same_answer_as_fhir_core_for_every_variant(name: str, resource: Json) -> None:
    assert both(resource) == (("ok", None), ("ok", None))
    refused = 0
    for what, variant in variants(resource):
        fast, library = both(variant)
        assert fast == library, f"{name}: {what}"
        refused += fast[0] != "ok"
    assert refused  # the variants do reach the checks


def test_each_rule_refuses_through_fhir_cores_own_message() -> None:
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
        fast, library = both({**plan, **change})
        assert fast == library, what
        if message is None:
            assert fast == ("ok", None), what
        else:
            assert fast[0] == "Unprocessable" and message in fast[1][0], (what, fast)
    # a required primitive given only as an extension is accepted, as FHIR allows
    absent = {k: v for k, v in plan.items() if k != "status"}
    absent["_status"] = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/"
                                               "data-absent-reason", "valueCode": "unknown"}]}
    assert both(absent) == (("ok", None), ("ok", None))


def test_a_required_choice_left_out() -> None:
    # Observation.component.value[x] is optional, Timing.repeat.bounds too; a choice that must
    # be there: Questionnaire.item.enableWhen.answer[x]
    q = {"resourceType": "Questionnaire", "status": "active",
         "item": [{"linkId": "1", "type": "boolean"},
                  {"linkId": "2", "type": "string",
                   "enableWhen": [{"question": "1", "operator": "=", "answerBoolean": True}]}]}
    assert both(q) == (("ok", None), ("ok", None))
    del q["item"][1]["enableWhen"][0]["answerBoolean"]
    fast, library = both(q)
    assert fast == library and fast[0] == "Unprocessable"
    assert "answer" in fast[1][0]


_PLAN = json.loads((REPO / "tests" / "fixtures" / "r4-examples" / "CarePlan-f001.json")
                   .read_text(encoding="utf-8"))
_PATHS = [p for p, _ in _nodes(_PLAN) if p]
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4)
    | st.sampled_from(["2024-01", "active", "Patient/1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "reference", "status", "text", "extension", "url", "valueString",
                         "valueBoolean", "_status", "code", "start"]), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None, database=None)
@given(where=st.sampled_from(_PATHS), value=_VALUES)
def test_same_answer_as_fhir_core_for_any_value_anywhere(where: tuple[Any, ...],
                                                          value: Any) -> None:
    resource = copy.deepcopy(_PLAN)
    _at(resource, where[:-1])[where[-1]] = value
    fast, library = both(resource)
    assert fast == library
