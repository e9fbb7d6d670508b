"""``$process-message`` checks a message's write before its write transaction: which entries the
hub already holds as they are, and the rules for the one it writes, run against a read of the
store (``process_message._prepare_ahead``), so the write lock is not held for them. The write
transaction takes that work only while everything it read is unchanged; these tests change
the store in the gap and check that the outcome is what the rules say at write time. Only on
the embedded store (SQLite): PostgreSQL has no write lock to keep short, and there the rules
run in the write transaction.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import sip_factory as f
from harness import (BUP, SOC, URL, Hub, broker, current_plan, hub, receivers,  # noqa: F401
                     status_change, world)
from sip_hub import service
from sip_hub.fhir import sip
from sip_hub.messaging import builder, parser, process_message as pm

Json = dict[str, Any]
ON_SQLITE = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


def answer(resp: Any) -> tuple[str, str]:
    assert resp.status_code == 200, resp.text
    data = resp.json()
    oo = next(e["resource"] for e in data["entry"]
              if e["resource"]["resourceType"] == "OperationOutcome")
    return (data["entry"][0]["resource"]["response"]["code"],
            " ".join(i.get("diagnostics", "") for i in oo["issue"]))


def with_patient(hub: Hub, msg: Json) -> Json:
    """``msg`` carrying the patient as the hub holds them (context, not a change)."""
    with hub.store.begin(write=False) as tx:
        patient = tx.current("Patient", "alva")
        assert patient is not None
        doc = patient.json()
    doc.pop("meta")
    header = msg["entry"][0]["resource"]
    plan = msg["entry"][1]["resource"]
    return builder.message("insats-status-changed", fhir_base="https://bup.test/fhir",
                           sender=BUP, destinations=[builder.Party(SOC, "https://soc.test/pm")],
                           focus=[f["reference"] for f in header["focus"]],
                           resources=[plan, doc])


def prepared_then(monkeypatch: pytest.MonkeyPatch, change: Any) -> list[pm._Ahead]:
    """Run ``change(store)`` between the preparation and the write transaction."""
    real = pm._prepare_ahead
    made: list[pm._Ahead] = []

    def then(store: Any, msg: parser.Message, base: str = "") -> pm._Ahead | None:
        ahead = real(store, msg, base)
        assert ahead is not None, "the message was not prepared ahead"
        made.append(ahead)
        change(store)
        return ahead
    monkeypatch.setattr(pm, "_prepare_ahead", then)
    return made


def prepared_in_the_write(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The types of the resources whose rules run from here on (``service.prepare``)."""
    prepared: list[str] = []
    real = service.prepare

    def counted(res: Any, *args: Any, **kw: Any) -> Any:
        prepared.append(res.get("resourceType"))
        return real(res, *args, **kw)
    monkeypatch.setattr(service, "prepare", counted)
    return prepared


def status_changed_as_sent(world: Hub) -> None:
    plan = current_plan(world)
    assert plan["meta"]["versionId"] == "2"
    assert plan["activity"][0]["detail"]["status"] == "completed"
    assert plan["meta"]["profile"] == [sip.PROFILE_CAREPLAN]  # stamped by the rules


def anonymise(store: Any) -> None:
    with store.begin() as tx:
        anonymous = f.patient(f.DEMO_PNR, id="alva")
        del anonymous["identifier"]
        tx.update(anonymous, "alva")


@ON_SQLITE
def test_a_plain_message_is_checked_before_its_write_transaction(
        world: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    msg = with_patient(world, status_change(world))
    ahead = pm._prepare_ahead(world.store, parser.parse(orjson.loads(orjson.dumps(msg))))
    assert ahead is not None
    # The plan is the one entry written; the patient, as stored, is not written again.
    assert ahead.index == 0 and set(ahead.same) == {1}
    assert ahead.entry["request"] == {"method": "PUT", "url": "CarePlan/alva-sip"}
    # The basis: the entries as stored and what the plan's rules resolved.
    assert {("CarePlan", "alva-sip"), ("Patient", "alva"), ("CareTeam", "alva-sip")} \
        <= set(ahead.basis)
    # Sent for real: the write transaction takes the preparation and runs no rules itself.
    in_transaction = prepared_in_the_write(monkeypatch)
    assert answer(world.post(BUP, URL, msg))[0] == "ok"
    assert in_transaction == []
    status_changed_as_sent(world)


@ON_SQLITE
def test_a_change_to_what_the_rules_read_is_checked_again_in_the_write(
        world: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """The individual loses their personnummer between the check and the write: the plan
    no longer meets the SIP profile, and the message is refused with nothing stored."""
    msg = status_change(world)
    made = prepared_then(monkeypatch, anonymise)
    code, text = answer(world.post(BUP, URL, msg))
    assert made and code == "fatal-error" and "has no personnummer" in text
    assert current_plan(world)["meta"]["versionId"] == "1"


@ON_SQLITE
def test_a_context_entry_changed_in_between_is_no_longer_taken_as_unchanged(
        world: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """The message carries the patient as stored when prepared; the coordinator changes the
    patient before the write. Then the message's copy is a change (BUP's, to a resource it
    does not own) and goes through the write pipeline, which refuses it, instead of being
    skipped."""
    msg = with_patient(world, status_change(world))

    def new_phone(store: Any) -> None:
        with store.begin() as tx:
            cur = tx.current("Patient", "alva")
            assert cur is not None
            doc = cur.json()
            doc["telecom"] = [{"system": "phone", "value": "+46701234567"}]
            tx.update(doc, "alva")
    prepared_then(monkeypatch, new_phone)
    code, text = answer(world.post(BUP, URL, msg))
    # Had the stale "unchanged" stood, the plan would be stored and the patient skipped.
    assert code == "fatal-error" and "did not create Patient/alva" in text
    with world.store.begin(write=False) as tx:
        patient = tx.current("Patient", "alva")
    assert patient is not None and patient.version_id == 2  # the coordinator's change only
    assert "telecom" in patient.json() and current_plan(world)["meta"]["versionId"] == "1"


@pytest.mark.parametrize("store", [pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_on_postgresql_a_message_is_checked_in_its_write_transaction(
        world: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    msg = with_patient(world, status_change(world))

    def never(*_: Any) -> None:
        raise AssertionError("prepared ahead of the write transaction")
    monkeypatch.setattr(pm, "_prepare_ahead", never)
    in_transaction = prepared_in_the_write(monkeypatch)
    assert answer(world.post(BUP, URL, msg))[0] == "ok"
    assert in_transaction == ["CarePlan"]  # the plan's rules, once; the patient as stored
    status_changed_as_sent(world)


def test_what_the_ahead_check_does_not_cover_is_applied_in_the_transaction(
        world: Hub) -> None:
    """Operations (here the plan being established) and messages without an entry to write
    are left to the write transaction."""
    msg = status_change(world, event="plan-established")
    assert pm._prepare_ahead(world.store, parser.parse(orjson.loads(orjson.dumps(msg)))) is None
    plan = current_plan(world)
    plan.pop("meta")
    same = builder.message("insats-status-changed", fhir_base="https://bup.test/fhir",
                           sender=BUP, destinations=[builder.Party(SOC, "https://soc.test/pm")],
                           focus=["CarePlan/alva-sip"], resources=[plan])
    assert pm._prepare_ahead(world.store, parser.parse(orjson.loads(orjson.dumps(same)))) \
        is None
    assert answer(world.post(BUP, URL, same))[0] == "ok"
    assert current_plan(world)["meta"]["versionId"] == "1"  # nothing to write
