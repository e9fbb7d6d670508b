"""The FHIR resource service: the one write pipeline and read path every entry point uses.

REST handlers, transaction Bundles and (later) messages all go through ``prepare`` and the
store, so a rule enforced here holds everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from . import identifiers
from .errors import (BadRequest, Conflict, IssueCollector, MethodNotAllowed, NotFound,
                     SipHubError)
from .fhir import exact, models, profiles, subset, validation
from .fhir.indexing import localise_references, reference_targets
from .fhir.search import parse as parse_search
from .fhir.search_params import READ_ONLY_TYPES, supported
from .store import Store, Stored, Tx


# Resolves (type, id) to the current JSON of a resource, or None.
Resolve = Callable[[str, str], dict[str, Any] | None]


def check_type(rtype: str, *, write: bool = False) -> None:
    if rtype == "metadata":  # (a path of the base, not a type: the CapabilityStatement)
        raise MethodNotAllowed("The CapabilityStatement at metadata is read with GET")
    if not supported(rtype):
        if models.is_resource_type(rtype):
            raise NotFound(f"Resource type {rtype} is not supported by this server")
        raise NotFound(f"Unknown resource type '{rtype}'")
    if write and rtype in READ_ONLY_TYPES:
        raise MethodNotAllowed(f"{rtype} resources are published by the hub and are read-only")


def find(tx: Tx, rtype: str, items: list[tuple[str, str]], limit: int = 1000) -> list[Stored]:
    """Everything matching a search, unrestricted and without a total: the hub's own reads
    (grant refresh, the process rules, the citizen view), never a client's."""
    query = parse_search(rtype, items, default_count=limit, max_count=limit)
    query.total = False
    return tx.search(query)[0]


def find_all(tx: Tx, rtype: str, items: list[tuple[str, str]], page: int = 200
             ) -> list[Stored]:
    """``find`` without a cap, page by page (the citizen view: a cap would silently leave a
    plan out of the person's view when they have many other CarePlans)."""
    out: list[Stored] = []
    while True:
        query = parse_search(rtype, [*items, ("_offset", str(len(out)))],
                             default_count=page, max_count=page)
        query.total = False
        found = tx.search(query)[0]
        out += found
        if len(found) < page:
            return out


def tx_resolver(tx: Tx, pending: dict[tuple[str, str], dict[str, Any]] | None = None, *,
                basis: dict[tuple[str, str], Stored | None] | None = None) -> Resolve:
    """Resolves to ``pending`` (resources being written with this one) first, else to the
    store as ``tx`` reads it; ``basis`` records each stored resource it read (see
    ``Prepared``)."""
    def resolve(rtype: str, rid: str) -> dict[str, Any] | None:
        if pending and (rtype, rid) in pending:
            return pending[(rtype, rid)]
        cur = tx.current(rtype, rid)
        if basis is not None:
            basis[(rtype, rid)] = cur
        return cur.json() if cur and not cur.deleted else None
    return resolve


class Prevalidated(dict):  # type: ignore[type-arg]
    """A resource whose structure ``models.validate`` has already accepted.

    The HTTP edge validates structure (the costly part) before it opens the write
    transaction, so the database's write lock is not held for it.
    """


def prevalidate(res: Any) -> Any:
    if isinstance(res, dict) and not isinstance(res, Prevalidated):
        models.validate(res)
        return Prevalidated(res)
    return res


def prepare(res: Any, resolve: Resolve, *, expected_type: str | None = None,
            base: str = "") -> dict[str, Any]:
    """Validate and normalise a resource for storing; raises with every problem found.
    ``base``: this hub's FHIR base, whose absolute references become relative (local);
    without it, as for any other server's, they are external."""
    if not isinstance(res, dict):
        raise BadRequest("The body must be a JSON object holding one FHIR resource")
    rtype = res.get("resourceType")
    if expected_type is not None and rtype != expected_type:
        raise BadRequest(f"resourceType '{rtype}' does not match the endpoint's type "
                         f"'{expected_type}'", expression="resourceType")
    if not isinstance(res, Prevalidated):
        models.validate(res)
    check_type(res["resourceType"], write=True)
    localise_references(res, base)
    collector = IssueCollector()
    meta = res.get("meta")
    if meta and "tag" in meta:  # (a look at the tags only when there are any)
        subset.refuse_subsetted(res, meta["tag"], collector)
    identifiers.normalise_in_resource(res, collector)
    validation.check(res, collector)
    if profiles.applies(res):
        profiles.check(res, collector, resolve)
    elif profiles.links_checked(res):
        profiles.check_links(res, collector, resolve)
    collector.raise_if_any(f"{rtype} failed validation")
    profiles.stamp(res)
    return res


class Prepared(dict):  # type: ignore[type-arg]
    """A resource ``prepare`` accepted before its write transaction began.

    ``basis`` holds every resource the rules resolved, and the references read for them, as
    read then (None: not there). The preparation holds in a write transaction that still
    reads each of them at the same version (``Tx.adopt``): the rules are a function of the
    resource and what they resolve. Otherwise the write transaction prepares ``original()``
    again, so that a concurrent change is never checked against a stale read.
    """

    __slots__ = ("basis", "_original")

    def __init__(self, res: dict[str, Any], basis: dict[tuple[str, str], Stored | None],
                 original: bytes) -> None:
        super().__init__(res)
        self.basis = basis
        self._original = original

    def original(self) -> Prevalidated:
        return Prevalidated(exact.loads(self._original))


def ahead_pays(store: Store) -> bool:
    """Whether a write is prepared ahead of its transaction (``prepare_ahead``): on the
    embedded store, whose one write lock every write queues on. On PostgreSQL a transaction
    of its own to read the basis, and a statement in the write to check it still holds
    (``Tx.adopt``), cost more than they spare: there the write prepares in its transaction,
    reading the basis in one statement (``basis_keys``)."""
    return store.embedded


def basis_keys(res: dict[str, Any], expected_type: str, replaces: str | None
               ) -> list[tuple[str, str]]:
    """What preparing ``res`` reads, to read in one statement (``Tx.load``): the references
    a SIP resource's rules resolve (a meeting's or Task's too), and the version an update
    replaces."""
    keys = reference_targets(res) if profiles.applies(res) or profiles.links_checked(res) \
        else []
    if replaces is not None:
        keys.append((expected_type, replaces))
    return keys


def prepare_ahead(store: Store, res: Any, expected_type: str, *, base: str = "",
                  replaces: str | None = None) -> Any:
    """``prepare`` outside the write transaction, against a read snapshot, so that the write
    lock is not held while the rules run (where that pays: ``ahead_pays``).
    ``replaces``: the id an update writes; the version it replaces joins the basis, read
    here with its content parsed and its index rows derived (``Stored.index_rows``), which
    the write then compares instead of deriving them in the lock.

    Returns a ``Prepared``, or the structurally validated body when the rules refused it: the
    write transaction then prepares it again, and every refusal comes from there, in the
    order of its checks (access before content, If-None-Exist before both). ``base``: as
    for ``prepare``; its references are made relative first, so that the basis read holds
    what they name."""
    checked = prevalidate(res)
    if not isinstance(checked, dict):
        return checked
    localise_references(checked, base)
    original = exact.dumps(checked)
    basis: dict[tuple[str, str], Stored | None] = {}
    # No snapshot needed: the write transaction checks every resource of the basis again,
    # together, and takes the preparation only if all are as read.
    keys = basis_keys(checked, expected_type, replaces)
    with store.begin(write=False, snapshot=False) as tx:
        tx.load(keys)
        # What was read joins the basis whether the rules resolve it or not: the write's
        # access checks read some of it too (the author's Organization), adopted with the
        # rest in one statement instead of read again one by one.
        for key in keys:
            basis[key] = tx.current(*key)
        old = basis.get((expected_type, replaces)) if replaces is not None else None
        if old is not None:
            old.index_rows()
        try:
            return Prepared(prepare(checked, tx_resolver(tx, basis=basis),
                                    expected_type=expected_type), basis, original)
        except SipHubError:
            return Prevalidated(exact.loads(original))


def adopted(tx: Tx, res: Any, resolve: Resolve | None) -> Any:
    """``res``, its preparation's reads taken into ``tx`` if it is ``Prepared`` and they all
    still hold (``Tx.adopt``; taking them again costs no statement); else what to prepare in
    ``tx`` (the original of a preparation that no longer holds)."""
    if isinstance(res, Prepared) and resolve is None and not tx.adopt(res.basis):
        return res.original()
    return res


def prepare_in(tx: Tx, res: Any, resolve: Resolve | None, expected_type: str,
               base: str = "") -> dict[str, Any]:
    """``prepare`` for a write in ``tx``: a ``Prepared`` resource whose basis still holds is
    taken as it is (prepared with the same ``base``: see ``prepare_ahead``); anything else
    is prepared here."""
    res = adopted(tx, res, resolve)
    if isinstance(res, Prepared) and resolve is None:
        return res
    return prepare(res, resolve or tx_resolver(tx), expected_type=expected_type, base=base)


@dataclass(slots=True)
class FhirService:
    store: Store

    def seed_definitions(self) -> int:
        """Publish the hub's own conformance resources, writing only those that changed.

        They are validated by the test suite, not here, to keep start-up fast.
        """
        written = 0
        try:
            with self.store.begin() as tx:
                for res in profiles.definitions():
                    cur = tx.current(res["resourceType"], res["id"])
                    if cur and not cur.deleted and _same_content(cur.json(), res):
                        continue
                    tx.update(dict(res), res["id"], method="PUT")
                    written += 1
        except Conflict:
            # Another process (a second worker starting at the same moment) published them.
            return 0
        return written


def _same_content(stored: dict[str, Any], res: dict[str, Any]) -> bool:
    a = {k: v for k, v in stored.items() if k != "meta"}
    b = {k: v for k, v in res.items() if k != "meta"}
    return a == b
