"""``mappings/endpoints.json``: where and how each organisation receives its messages, read
once at start; a file the hub cannot use is refused with the reason, naming the file."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from sip_hub.errors import BadRequest
from sip_hub.messaging.endpoints import DEFAULT_CONCURRENT, Endpoints

SOC = "SE2120001637-SOC1"


def _write(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / "endpoints.json"
    path.write_bytes(orjson.dumps({"endpoints": list(entries)}))
    return path


def test_an_entry_gives_url_timeout_concurrency_and_the_authorization_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIP_HUB_ENDPOINT_AUTH_SOC1", "Bearer s3cret")
    endpoints = Endpoints.load(_write(tmp_path, {
        "organization": SOC, "url": "https://soc.example.se/fhir/$process-message",
        "timeoutSeconds": 10, "maxConcurrent": 1,
        "authorizationEnv": "SIP_HUB_ENDPOINT_AUTH_SOC1"}))
    e = endpoints.get(SOC)
    assert e is not None and endpoints.orgs == {SOC}
    assert (e.url, e.timeout, e.max_concurrent) == (
        "https://soc.example.se/fhir/$process-message", 10, 1)
    assert e.headers() == {"Authorization": "Bearer s3cret"}


def test_concurrency_defaults_to_four(tmp_path: Path) -> None:
    endpoints = Endpoints.load(_write(tmp_path, {"organization": SOC,
                                                 "url": "http://127.0.0.1:9/x"}))
    assert endpoints.get(SOC).max_concurrent == DEFAULT_CONCURRENT == 4  # type: ignore[union-attr]


@pytest.mark.parametrize("entry, reason", [
    ({"maxConcurrent": 0}, "maxConcurrent"),
    ({"maxConcurrent": 33}, "maxConcurrent"),
    ({"timeoutSeconds": 0}, "timeoutSeconds"),
    ({"url": "ftp://soc.example.se/x"}, "http"),
    ({"maxconcurrent": 2}, "maxconcurrent"),  # a misspelt key is not ignored
    ({"organization": "not-an-hsa-id"}, "HSA"),
    ({"queue": True}, "either a url or"),               # both ways at once
    ({"url": None}, "either a url or"),                 # neither
    ({"url": None, "queue": False}, "either a url or"),
])
def test_a_file_the_hub_cannot_use_is_refused_naming_it_and_the_reason(
        tmp_path: Path, entry: dict, reason: str) -> None:
    path = _write(tmp_path, {"organization": SOC, "url": "http://127.0.0.1:9/x", **entry})
    with pytest.raises(ValueError) as refused:
        Endpoints.load(path)
    assert str(path) in str(refused.value) and reason in str(refused.value)


def test_an_organisation_may_take_its_messages_from_its_queue(tmp_path: Path) -> None:
    endpoints = Endpoints.load(_write(tmp_path, {"organization": SOC, "queue": True},
                                      {"organization": "SE2321000016-15CQ",
                                       "url": "http://127.0.0.1:9/x"}))
    e = endpoints.get(SOC)
    assert e is not None and e.queue and e.url is None
    assert endpoints.queue_orgs == {SOC} and endpoints.orgs == {SOC, "SE2321000016-15CQ"}
    # Its messages name no URL it does not have; an async response goes to its queue too.
    assert endpoints.address(SOC) == f"urn:sip-hub:organization:{SOC}"
    with pytest.raises(BadRequest, match="takes its messages from its queue"):
        endpoints.check_response_url(SOC, "https://soc.example.se/fhir/$process-message")
