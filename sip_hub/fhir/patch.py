"""JSON Patch (RFC 6902), the form of FHIR's ``patch`` interaction the hub takes: the one door
to the ``jsonpatch`` library.

A patch document is checked for its shape before it is applied (a 400 names the fault); one
that cannot be applied to the resource as it is (a path that is not there, a ``test`` that
fails) is a 422 naming the operation. What a patch makes is then written as an update, through
every rule a PUT goes through.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import jsonpatch
import jsonpointer

from ..errors import BadRequest, Unprocessable
from . import validation

MEDIA_TYPE = "application/json-patch+json"


def parse(ops: Any) -> jsonpatch.JsonPatch:
    """A JSON Patch document (a list of operations), or a 400 saying what is wrong with it."""
    if not isinstance(ops, list) or not ops:
        raise BadRequest("A JSON Patch is a JSON array of operations (RFC 6902), with at "
                         "least one")
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or not isinstance(op.get("op"), str) or \
                not isinstance(op.get("path"), str):
            raise BadRequest(f"Operation {i} of the patch needs \"op\" and \"path\", as "
                             "strings", expression=f"[{i}]")
        if op["path"] and not op["path"].startswith("/"):
            raise BadRequest(f"Operation {i} of the patch: path '{op['path'][:80]}' is not a "
                             "JSON Pointer (it starts with '/')", expression=f"[{i}].path")
    try:
        return jsonpatch.JsonPatch(ops)
    except (jsonpatch.InvalidJsonPatch, jsonpointer.JsonPointerException) as exc:
        raise BadRequest(f"The patch is not a valid JSON Patch: {exc}") from None


def from_binary(resource: Any) -> Any:
    """The JSON Patch a Bundle's PATCH entry carries: its resource a Binary of MEDIA_TYPE with
    the patch as its data (base64), as FHIR's transactions carry one; a 400 otherwise (the
    shape of the patch itself is ``parse``'s)."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        raise BadRequest(f"A PATCH entry's resource is a Binary holding a JSON Patch, not "
                         f"{'a ' + str(kind)[:40] if kind else 'this'} (FHIRPath Patch is "
                         "not supported)")
    ctype = resource.get("contentType")
    media = ctype.split(";")[0].strip().lower() if isinstance(ctype, str) else ""
    if media != MEDIA_TYPE:
        raise BadRequest(f"A PATCH entry's Binary.contentType must be {MEDIA_TYPE}, not "
                         f"'{str(ctype)[:60]}'", expression="Binary.contentType")
    data = resource.get("data")
    if not isinstance(data, str) or not data:
        raise BadRequest("A PATCH entry's Binary has the patch as its data (base64)",
                         expression="Binary.data")
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise BadRequest(f"Binary.data is not base64: {exc}", expression="Binary.data"
                         ) from None
    try:
        return validation.read_json(raw)  # (as a PATCH's body is read)
    except BadRequest as exc:
        raise BadRequest(f"Binary.data is not base64 of a JSON document: {exc.diagnostics}",
                         expression="Binary.data") from None


def apply(doc: dict[str, Any], patch: jsonpatch.JsonPatch) -> Any:
    """``doc`` (left as it is) with ``patch`` applied, or a 422 with the operation that could
    not be."""
    try:
        return patch.apply(doc, in_place=False)
    except jsonpatch.JsonPatchTestFailed:
        # Which test, not the values compared: those are the resource's (jsonpatch's
        # message quotes them, and a caller learns what it holds only by reading it).
        raise Unprocessable(f"The patch's test failed: {_failed_test(doc, patch)}") from None
    except jsonpatch.InvalidJsonPatch as exc:  # (an operation's members, checked as it runs)
        raise BadRequest(f"The patch is not a valid JSON Patch: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise Unprocessable(f"The patch cannot be applied to the resource as it is: {exc}"
                            ) from None
    except (TypeError, ValueError, IndexError, KeyError) as exc:  # (an odd path into a value)
        raise Unprocessable(f"The patch cannot be applied to the resource as it is: {exc}"
                            ) from None


def _failed_test(doc: dict[str, Any], patch: jsonpatch.JsonPatch) -> str:
    """Which operation of ``patch`` is the test that fails on ``doc`` (the patch applied
    one operation at a time)."""
    current: Any = doc
    for i, op in enumerate(patch.patch):
        try:
            current = jsonpatch.JsonPatch([op]).apply(current, in_place=False)
        except jsonpatch.JsonPatchTestFailed:
            return (f"operation {i} (test of '{str(op.get('path'))[:200]}') does not match "
                    "the resource's value there")
    return "a test does not match the resource's value"
