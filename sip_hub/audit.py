"""Audit of every access to personal data (Patientdatalagen 4 kap. 3 § and 8 kap. 5 §).

Each read, search, write and refusal touching personal data becomes an AuditEvent in the
store, searchable by patient (the person's access log). A write's AuditEvent is stored in the
write's own transaction. Reads must not wait for the audit store, so their events go through a
queue to a background writer that stores them in batches; when the queue is full the event is
written synchronously instead of being dropped (an unlogged read is not acceptable).
"""

from __future__ import annotations

import base64
import copy
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from . import logs
from .auth import Principal
from .fhir.dates import format_instant, from_us, now_utc, to_us
from .fhir.validation import ID_RE
from .identifiers import HSA_ID
from .store import Store, Tx
from .store.audit import Entry

log = logging.getLogger("sip_hub.audit")

_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
         "display": "RESTful Operation"}
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_ACTION = {"read": "R", "vread": "R", "search-type": "E", "history-instance": "R",
           "history-type": "R", "history-system": "R", "create": "C", "update": "U",
           "patch": "U", "delete": "D"}
_PURPOSE = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
# IHE Basic Audit Log Patterns: the transaction's X-Request-ID as an entity of the event.
_REQUEST_ENTITY = {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
                   "code": "XrequestId",
                   "display": "transport specific unique identifier where http X-Request-Id "
                              "is used"}
CLIENT_SYSTEM = "https://sip-hub.se/fhir/NamingSystem/client-id"


@lru_cache(maxsize=1024)
def _agents(client_id: str | None, org: str | None) -> tuple[Any, ...]:
    """The agents of a caller's events (the same for all of them), with their references."""
    if client_id is None or org is None:
        return ([{"who": {"display": "sip_hub"}, "requestor": True}], ())
    return ([{"type": {"coding": [{
                "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150",
                "display": "Application"}]},
              "who": {"identifier": {"system": CLIENT_SYSTEM, "value": client_id}},
              "requestor": True},
             {"who": {"identifier": {"system": HSA_ID, "value": org}, "type": "Organization"},
              "requestor": False}],
            (("agent:identifier", CLIENT_SYSTEM, client_id), ("agent:identifier", HSA_ID, org)))


@dataclass(frozen=True, slots=True)
class AuditRecord:
    interaction: str
    principal: Principal | None
    resources: tuple[tuple[str, str], ...]
    patients: frozenset[str]
    outcome: str = "0"  # 0 success, 4 refused, 8 failed
    query: str | None = None
    detail: str | None = None
    purpose: str = "COC"  # coordination of care
    at: int = field(default_factory=lambda: to_us(now_utc()))  # when the access happened, UTC microseconds
    # The HTTP request it happened in (its X-Request-ID; None outside one), as the log lines
    # of that request name it: made where the access is recorded, in the request's context.
    request: str | None = field(default_factory=logs.REQUEST_ID.get)

    def to_fhir(self) -> dict[str, Any]:
        return copy.deepcopy(self.entry().event)  # entries share their agents' parts

    def entry(self) -> Entry:
        """The AuditEvent, and what it is searched by, without parsing it back."""
        p = self.principal
        agents, agent_refs = _agents(p.client_id, p.org) if p is not None else _agents(None, None)
        refs = [("entity", t, i) for t, i in self.resources if t != "Patient"]
        patients = self.patients
        if self.interaction == "search-type" and self.query:
            patients = patients | _queried_patients(self.query)
        for pid in sorted(patients):
            refs.append(("entity", "Patient", pid))  # what ``patient`` searches
        entities: list[dict[str, Any]] = [
            {"what": {"reference": f"{t}/{i}"},
             "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                      "code": "2", "display": "System Object"}}
            for t, i in self.resources if t != "Patient"]
        entities += [
            {"what": {"reference": f"Patient/{pid}"},
             "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                      "code": "1", "display": "Person"},
             "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1",
                      "display": "Patient"}}
            for pid in sorted(patients)]
        if self.request is not None:
            entities.append({"what": {"identifier": {"value": self.request}},
                             "type": _REQUEST_ENTITY})
            refs.append(("entity:identifier", "", self.request))
        if self.query:
            entities.append({"type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2", "display": "System Object"},
                "description": "search", "query": _b64(self.query)})
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "type": _REST,
            "subtype": [{"system": _INTERACTION, "code": self.interaction}],
            "action": _ACTION.get(self.interaction, "E"),
            "recorded": format_instant(from_us(self.at)),
            "outcome": self.outcome,
            "purposeOfEvent": [{"coding": [{"system": _PURPOSE, "code": self.purpose}]}],
            "agent": agents,
            "source": {"observer": {"display": "sip_hub"}, "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4", "display": "Application Server"}]},
        }
        if self.detail:
            event["outcomeDesc"] = self.detail
        if entities:
            event["entity"] = entities
        return Entry(event, self.at, tuple(refs) + agent_refs)


_PATIENT_PARAMS = frozenset({"patient", "subject"})


def _queried_patients(query: str) -> frozenset[str]:
    """The patients a search names (``patient=``, ``subject=Patient/...``): the person whose
    data was asked for is in the event also when nothing was returned (an organisation
    the consent does not cover gets an empty Bundle, and the person sees that it asked;
    IHE BALP: a query's patient is its Patient entity)."""
    found = set()
    for key, value in parse_qsl(query, keep_blank_values=True):
        name, _, modifier = key.partition(":")
        if name not in _PATIENT_PARAMS or modifier not in ("", "Patient"):
            continue
        for ref in value.split(","):
            parts = ref.split("/")
            if len(parts) >= 2 and parts[-2] == "Patient":
                pid = parts[-1]
            elif len(parts) == 1 and (name == "patient" or modifier == "Patient"):
                pid = ref
            else:
                continue
            if ID_RE.fullmatch(pid):
                found.add(pid)
    return frozenset(found)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class AuditLog:
    store: Store
    capacity: int = 100_000
    batch: int = 500
    # How long the writer gathers records before it writes them: a transaction per read would
    # cost more than the read itself; gathered, a record costs a few rows in one bulk insert.
    linger: float = 0.1
    _queue: "queue.Queue[AuditRecord | None]" = field(init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    written: int = field(default=0, init=False)
    synchronous_fallbacks: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._queue = queue.Queue(maxsize=self.capacity)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Flush everything queued and stop the writer."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            if self._thread.is_alive():  # (retrying a store that does not answer)
                log.critical("audit writer still retrying after 30 s at shutdown: the records "
                             "it holds are not stored")
            self._thread = None
        self._drain_now()

    def in_tx(self, tx: Tx, record: AuditRecord) -> None:
        """Store the record in the caller's transaction (writes)."""
        tx.append_audit([record.entry()])

    def later(self, record: AuditRecord) -> None:
        """Queue the record for the background writer (reads, searches, refusals)."""
        if self._thread is None:
            self._write([record])
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.synchronous_fallbacks += 1
            self._write([record])
            return
        if self._thread is None:
            # ``stop`` ran between the test above and the put: its last drain may have been
            # before the put, and no writer is left to store the record. (Seen not None
            # here, the put came before ``stop`` let the writer go, and its drain finds it.)
            self._drain_now()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is stored (tests, shutdown)."""
        done = threading.Event()
        marker = _Flush(done)
        if self._thread is None:
            self._drain_now()
            return
        self._queue.put(marker)  # type: ignore[arg-type]
        done.wait(timeout)

    def _drain_now(self) -> None:
        pending = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, AuditRecord):
                pending.append(item)
            elif isinstance(item, _Flush):
                item.done.set()
        if pending:
            self._write(pending)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            items = [item]
            deadline = time.monotonic() + self.linger
            # A flush or stop is written at once, with what came before it.
            while len(items) < self.batch and isinstance(items[-1], AuditRecord):
                wait = deadline - time.monotonic()
                try:
                    items.append(self._queue.get(timeout=wait) if wait > 0
                                 else self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [i for i in items if isinstance(i, AuditRecord)]
            if records:
                self._write_until_stored(records, stopping=any(i is None for i in items))
            for i in items:
                if isinstance(i, _Flush):
                    i.done.set()
            if any(i is None for i in items):
                return

    def _write_until_stored(self, records: list[AuditRecord], *, stopping: bool) -> None:
        """Retry with backoff while the audit store is down; never drop a batch. Meanwhile the
        queue fills, and reads then write their records themselves (and fail if they cannot:
        no read is served unaudited)."""
        delay = 0.5
        while True:
            try:
                self._write(records)
                return
            except Exception:  # any store failure: keep the records and the writer alive
                if stopping:
                    log.critical("audit store unavailable at shutdown: %d records not stored",
                                 len(records))
                    raise
                log.exception("audit write failed; retrying in %.1f s", delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _write(self, records: list[AuditRecord]) -> None:
        entries = [r.entry() for r in records]
        self.store.write(lambda tx: tx.append_audit(entries))  # with the API's (group commit)
        self.written += len(records)


@dataclass(frozen=True)
class _Flush:
    done: threading.Event
