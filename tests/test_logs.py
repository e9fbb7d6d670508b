"""The hub's logs as IT staff read them: every line with its time, level, process and the HTTP
request it belongs to; every answer with that request's id, so that a care system's report of
a failed call leads to the hub's lines about it."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
from pathlib import Path

import orjson
import pytest

import sip_factory as f
from hubprocess import free_port, get, healthy, start, stop, wait
from sip_hub import cli, interactions, logs

NEW_ID = re.compile(r"[0-9a-f]{32}")
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
                       r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ \[\d+\] \S+ .+")


# -- request ids over HTTP ---------------------------------------------------------------------

def test_every_answer_carries_its_request_id(client) -> None:
    first = client.get("/fhir/metadata")            # through FastAPI's routes
    second = client.get("/fhir/CarePlan/unknown")   # a hot route, dispatched before them
    assert first.status_code == 200 and second.status_code == 404
    ids = [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert all(NEW_ID.fullmatch(i) for i in ids) and ids[0] != ids[1]
    assert client.get("/healthz").headers["X-Request-ID"] not in ids


@pytest.mark.parametrize("offered", ["care-system.42:7", "0f8fad5b-d9cb-469f-a165-70867728950e"])
def test_a_callers_request_id_is_kept(client, offered: str) -> None:
    r = client.get("/fhir/CarePlan/unknown", headers={"X-Request-ID": offered})
    assert r.status_code == 404
    assert r.headers["X-Request-ID"] == offered


@pytest.mark.parametrize("offered", ["two words", "x" * 129, "a\tb", "id;drop", "åäö"])
def test_a_request_id_that_is_not_a_plain_token_is_replaced(client, offered: str) -> None:
    """What is not a plain token never reaches a log line (it could forge one)."""
    r = client.get("/fhir/metadata", headers={"X-Request-ID": offered.encode("utf-8")})
    assert r.status_code == 200
    assert NEW_ID.fullmatch(r.headers["X-Request-ID"])


def test_the_access_log_names_the_request_each_access_happened_in(client, anonymous) -> None:
    """IHE BALP's transaction entity: an AuditEvent names the X-Request-ID of its request, and
    the access log is searched by it (``entity:identifier``): from a care system's request id
    to what it read and wrote, and back."""
    created = client.post("/fhir/Patient", json=f.patient(id=None),
                          headers={"X-Request-ID": "write-trace-1"})
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    assert client.get(f"/fhir/Patient/{pid}",
                      headers={"X-Request-ID": "read-trace-2"}).status_code == 200
    anonymous.app.state.audit.flush()

    def events(request: str) -> list[dict]:
        r = client.get("/fhir/AuditEvent", params={"entity:identifier": request})
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry", [])]
    [write], [read] = events("write-trace-1"), events("read-trace-2")
    assert write["subtype"][0]["code"] == "create" and read["subtype"][0]["code"] == "read"
    for event, request in ((write, "write-trace-1"), (read, "read-trace-2")):
        assert {"reference": f"Patient/{pid}"} in [e.get("what") for e in event["entity"]]
        [transaction] = [e for e in event["entity"] if "identifier" in e.get("what", {})]
        assert transaction["what"]["identifier"] == {"value": request}
        assert transaction["type"]["system"] == \
            "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
        assert transaction["type"]["code"] == "XrequestId"
    assert events("no-such-request") == []


def _fail(name: str):
    """A fault injected into an interaction: it logs a line, then breaks as a bug would."""
    def broken(*args, **kwargs):
        logging.getLogger("sip_hub.test").warning("about to fail in %s", name)
        raise RuntimeError("disk on fire")
    return broken


@pytest.mark.parametrize("interaction", ["read", "create"])
def test_a_failure_is_answered_and_logged_under_its_request_id(
        client, monkeypatch, caplog, interaction: str) -> None:
    """A 500 names the request id in its OperationOutcome, and the lines logged for the
    request carry it: those of the event loop (the unhandled error) and those of the thread
    the work ran on (a create's, on either database; a read's on PostgreSQL)."""
    monkeypatch.setattr(interactions, interaction, _fail(interaction))
    caplog.handler.addFilter(logs.RequestIdFilter())
    caplog.set_level(logging.WARNING)
    headers = {"X-Request-ID": "trace-4711"}
    if interaction == "read":
        r = client.get("/fhir/CarePlan/some-plan", headers=headers)
    else:
        r = client.post("/fhir/CarePlan", headers=headers, json={
            "resourceType": "CarePlan", "status": "draft", "intent": "plan",
            "subject": {"reference": "Patient/some-patient"}})
    assert r.status_code == 500
    assert r.headers["X-Request-ID"] == "trace-4711"
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "request id trace-4711" in outcome["issue"][0]["diagnostics"]
    assert "disk on fire" not in r.text  # the cause is for the log, not the caller

    ours = [rec for rec in caplog.records if rec.name in ("sip_hub.test", "sip_hub")]
    assert [(rec.name, rec.levelno) for rec in ours] == [
        ("sip_hub.test", logging.WARNING), ("sip_hub", logging.ERROR)]
    assert all(rec.request_id == "trace-4711" for rec in ours)
    assert ours[1].exc_info is not None and "disk on fire" in str(ours[1].exc_info[1])
    assert ours[1].method == r.request.method and ours[1].path == r.request.url.path


def test_a_line_logged_outside_any_request_says_so(caplog) -> None:
    caplog.handler.addFilter(logs.RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="sip_hub"):
        logging.getLogger("sip_hub.worker").info("relay round")
    assert caplog.records[-1].request_id == "-"


# -- the processes' log lines ------------------------------------------------------------------

def test_the_api_logs_json_lines_naming_each_request(tmp_path: Path) -> None:
    """``SIP_HUB_LOG_FORMAT=json``: every line the API's processes write (the supervisor's,
    each worker's, uvicorn's, the hub's own INFO lines) is one JSON object; the access line
    of a request names its id."""
    port = free_port()
    proc, log = start(tmp_path, ["serve", "--port", str(port), "--workers", "2"],
                       SIP_HUB_LOG_FORMAT="json", SIP_HUB_ACCESS_LOG="true")
    try:
        wait(lambda: log.read_bytes().count(b"Application startup complete") >= 2,
              "the API did not start", proc, log)
        resp = get(port, "/fhir/metadata", {"X-Request-ID": "portal-77"})
        assert resp.status == 200 and resp.headers["X-Request-ID"] == "portal-77"
    finally:
        assert stop(proc) == 0
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip()]
    assert len(lines) >= 8
    for line in lines:
        assert {"time", "level", "logger", "process", "request_id", "message"} <= set(line), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", line["time"])
        assert "color_message" not in line
    processes = {line["process"] for line in lines}
    assert len(processes) == 3  # the supervisor and two workers
    demo = [line for line in lines if line["logger"] == "sip_hub.demo"]
    # (loaded once, by the supervisor, before its workers start)
    assert len(demo) == 1 and all(line["level"] == "INFO" for line in demo)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert len(access) == 1 and "GET /fhir/metadata" in access[0]["message"]
    assert access[0]["request_id"] == "portal-77"
    assert all(line["request_id"] == "-" for line in lines if line is not access[0])


def test_the_messaging_worker_logs_text_lines(tmp_path: Path) -> None:
    """The default format, for people: time (UTC), level, logger, process, request (``-``
    outside one), message. The worker's start is logged (its INFO lines were lost before)."""
    proc, log = start(tmp_path, ["worker"], SIP_HUB_LOG_LEVEL="info")
    try:
        wait(lambda: b"messaging worker started" in log.read_bytes(),
              "the worker did not log its start", proc, log)
    finally:
        assert stop(proc) == 0
    started = [line for line in log.read_text().splitlines() if "worker started" in line]
    assert len(started) == 1 and TEXT_LINE.fullmatch(started[0]), started
    assert f" INFO sip_hub.worker [{proc.pid}] - messaging worker started" in started[0]


def test_the_level_hides_lines_below_it(tmp_path: Path) -> None:
    """At ``warning`` the API's INFO lines (its start, uvicorn's) are not written: looked at
    once it answers, so after they would have been."""
    port = free_port()
    proc, log = start(tmp_path, ["serve", "--port", str(port)], SIP_HUB_LOG_LEVEL="warning")

    try:
        wait(lambda: healthy(port), "the API did not answer", proc, log)
    finally:
        # One process: uvicorn stops gracefully and then re-raises the SIGTERM it caught.
        assert stop(proc) in (0, -signal.SIGTERM)
    assert " INFO " not in log.read_text() and "startup complete" not in log.read_text()


@pytest.mark.parametrize("name, value", [("SIP_HUB_LOG_FORMAT", "xml"),
                                         ("SIP_HUB_LOG_LEVEL", "verbose")])
def test_bad_log_settings_are_refused_with_the_setting_named(
        tmp_path, monkeypatch, capsys, name: str, value: str) -> None:
    monkeypatch.setenv("SIP_HUB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(name, value)
    assert cli.main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sip-hub: invalid settings: ") and f"{name}: Input should be" in err
    assert not (tmp_path / "sip_hub.sqlite3").exists()  # nothing was done


def test_json_lines_keep_a_records_extra_fields_and_its_traceback() -> None:
    """What a line carries beyond the message (``extra=``) becomes fields of its own, and a
    traceback stays inside the one line."""
    formatter = logs.formatter("json")
    try:
        raise ValueError("bad endpoint file")
    except ValueError:
        record = logging.LogRecord("sip_hub.delivery", logging.ERROR, __file__, 1,
                                   "delivery %s is dead", ("d-1",), sys.exc_info())
    record.delivery = "d-1"
    logs.RequestIdFilter().filter(record)
    line = formatter.format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "delivery d-1 is dead" and data["delivery"] == "d-1"
    assert data["level"] == "ERROR" and data["request_id"] == "-"
    assert "ValueError: bad endpoint file" in data["exc_info"]
