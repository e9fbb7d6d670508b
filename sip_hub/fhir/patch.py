"""JSON Patch (RFC 6902), the form of FHIR's ``patch`` interaction the hub takes: the one door
to the ``jsonpatch`` library.

A patch document is checked for its shape before it is applied (a 400 names the fault); one
that cannot be applied to the resource as it is (a path that is not there, a ``test`` that
fails) is a 422 naming the operation. What a patch costs is bounded as a body's is: at most
``MAX_OPERATIONS`` operations, and what it makes (with what its copies copy, as they run) no
larger than a body may be, else a 413. What a patch makes is then written as an update, through
every rule a PUT goes through.
"""

from __future__ import annotations

import base64
import binascii
import copy
from typing import Any

import jsonpatch
import jsonpointer

from ..errors import BadRequest, PayloadTooLarge, Unprocessable
from . import exact, validation

MEDIA_TYPE = "application/json-patch+json"
# Operations a patch may have: each is applied in the write transaction, with the resource
# locked (on SQLite, the hub's one write lock held); a change larger than this is a PUT.
MAX_OPERATIONS = 1000


def parse(ops: Any) -> jsonpatch.JsonPatch:
    """A JSON Patch document (a list of operations), or a 400 saying what is wrong with it."""
    if not isinstance(ops, list) or not ops:
        raise BadRequest("A JSON Patch is a JSON array of operations (RFC 6902), with at "
                         "least one")
    if len(ops) > MAX_OPERATIONS:
        raise PayloadTooLarge(f"A patch has at most {MAX_OPERATIONS} operations, not "
                              f"{len(ops)}; send the resource with PUT instead")
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


def apply(doc: dict[str, Any], patch: jsonpatch.JsonPatch, max_bytes: int) -> Any:
    """``doc`` (left as it is) with ``patch`` applied, or a 422 with the operation that could
    not be; a 413 when what it makes would be larger than ``max_bytes``, the bound of a body
    (a PUT of it would be a 413).

    Applied one operation at a time to one copy of ``doc``, so that the operation that fails
    is known as it fails (the patch is not replayed to find it: that copied the resource once
    an operation, in the write transaction). A ``copy`` stores what it copies without it being
    sent (copying an element into itself doubles the resource): what the copies copy counts
    against ``max_bytes`` as they run, before the result is measured whole."""
    current: Any = copy.deepcopy(doc)
    copied = 0
    for i, op in enumerate(patch.patch):
        if op.get("op") == "copy":
            copied += _size(current, op.get("from"))
            if copied > max_bytes:
                raise PayloadTooLarge(
                    f"Operation {i} of the patch: its copy operations copy more than the "
                    f"{max_bytes} bytes a resource may have (SIP_HUB_MAX_BODY_BYTES, as a "
                    "body); send the resource with PUT instead", expression=f"[{i}]")
        current = _apply_one(current, op, i)
    size = len(exact.dumps(current))
    if size > max_bytes:
        raise PayloadTooLarge(f"The patch makes a resource of {size} bytes, larger than the "
                              f"{max_bytes} bytes one may have (SIP_HUB_MAX_BODY_BYTES, as a "
                              "body); nothing was stored")
    return current


def _apply_one(current: Any, op: dict[str, Any], i: int) -> Any:
    """``current`` (changed in place) with the operation ``op``, the patch's ``i``th."""
    try:
        return jsonpatch.JsonPatch([op]).apply(current, in_place=True)
    except jsonpatch.JsonPatchTestFailed:
        # Which test, not the values compared: those are the resource's (jsonpatch's
        # message quotes them, and a caller learns what it holds only by reading it).
        raise Unprocessable(f"The patch's test failed: operation {i} (test of "
                            f"'{str(op.get('path'))[:200]}') does not match the resource's "
                            "value there", expression=f"[{i}]") from None
    except jsonpatch.InvalidJsonPatch as exc:  # (an operation's members, checked as it runs)
        raise BadRequest(f"The patch is not a valid JSON Patch: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise Unprocessable(f"The patch cannot be applied to the resource as it is: {exc}"
                            ) from None
    except (TypeError, ValueError, IndexError, KeyError) as exc:  # (an odd path into a value)
        raise Unprocessable(f"The patch cannot be applied to the resource as it is: {exc}"
                            ) from None


def _size(current: Any, pointer: Any) -> int:
    """The size in bytes of the value at ``pointer`` in ``current`` (what a ``copy`` from
    there adds), or 0 where there is none: the operation itself then fails, saying why."""
    if not isinstance(pointer, str):
        return 0
    try:
        return len(exact.dumps(jsonpointer.resolve_pointer(current, pointer)))
    except (jsonpointer.JsonPointerException, TypeError, ValueError, IndexError, KeyError):
        return 0
