"""Migration 0017: one access grant per period a consent covers an organisation. A database
of an earlier release holds one grant per person and organisation spanning all its consents;
the upgrade derives those of a person with several consents again, so that an organisation
reads in none of the time between them; a downgrade that would join them again is refused."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, text

import sip_factory as f
from sip_hub.fhir.dates import parse_range
from sip_hub.store.migrate import MIGRATIONS, upgrade

SOC, BUP, SCHOOL = "SE2120000142-SOC1", "SE2321000016-15CQ", "SE2120000142-SKO7"
T0 = 1_760_000_000_000_000


def _lo(day: str) -> int:
    return parse_range(day)[0]


def _hi(day: str) -> int:
    return parse_range(day)[1]


def _resources() -> list[dict[str, Any]]:
    old = f.sip_consent(id="alva-old", actor_refs=(f.SOCIAL_SERVICES, f.BUP),
                        start="2025-01-01", end="2025-06-30")
    future = f.sip_consent(id="alva-future", actor_refs=(f.SOCIAL_SERVICES, f.BUP),
                           start="2027-06-01", end="2027-12-31")
    # BUP named by its HSA-id in one (a reference by identifier)
    future["provision"]["actor"][1]["reference"] = {
        "identifier": {"system": "urn:oid:1.2.752.29.4.19", "value": BUP}}
    main = f.sip_consent(actor_refs=(f.SOCIAL_SERVICES, f.SCHOOL), start="2026-11-10",
                         end=None)
    withdrawn = f.sip_consent(id="alva-withdrawn", actor_refs=(f.BUP,), status="inactive",
                              start="2026-01-01", end=None)
    # Another person with one consent: left as it is.
    bo = f.sip_consent(id="bo-sip", patient_ref="Patient/bo", actor_refs=(f.BUP,),
                       start="2025-01-01", end="2025-06-30")
    return [f.organization(SOC, "Socialtjänsten", id="socialtjansten"),
            f.organization(BUP, "BUP", id="bup"),
            f.organization(SCHOOL, "Skolan", id="skolan"), old, future, main, withdrawn, bo]


# (patient, org, role, reads, valid_from, valid_until): as the earlier release derived them
BEFORE = [("alva", SOC, "coordinator", True, _lo("2025-01-01"), None),
          ("alva", BUP, "participant", True, _lo("2025-01-01"), _hi("2027-12-31")),
          ("alva", SCHOOL, "participant", True, _lo("2026-11-10"), None),
          ("bo", BUP, "participant", True, _lo("2025-01-01"), _hi("2025-06-30"))]


def _seed(engine: Engine) -> None:
    tables = MetaData()
    tables.reflect(engine)
    with engine.begin() as conn:
        for i, res in enumerate(_resources()):
            key = {"res_type": res["resourceType"], "res_id": res["id"]}
            conn.execute(tables.tables["resource_history"].insert(), {
                **key, "version_id": 1, "last_updated": T0 + i, "method": "PUT",
                "content": orjson.dumps(res)})
            conn.execute(tables.tables["resource"].insert(), {
                **key, "version_id": 1, "last_updated": T0 + i, "deleted": False,
                "owner_org": SOC, "withheld": False})
        conn.execute(tables.tables["access_grant"].insert(), [
            dict(zip(("patient_id", "org_hsa_id", "role", "reads", "valid_from",
                      "valid_until"), row)) for row in BEFORE])


def _grants(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return sorted((p, o, r, bool(re), s, u, q) for p, o, r, re, s, u, q in conn.execute(
            text("SELECT patient_id, org_hsa_id, role, reads, valid_from, valid_until, seq "
                 "FROM access_grant")))


def _downgrade(engine: Engine, to: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, to)


def test_the_upgrade_splits_the_grants_spanning_consents_apart(fresh: Engine) -> None:
    upgrade(fresh, "0016")
    _seed(fresh)
    upgrade(fresh, "0017")
    assert _grants(fresh) == sorted([
        ("alva", SOC, "coordinator", True, _lo("2025-01-01"), _hi("2025-06-30"), 0),
        ("alva", SOC, "coordinator", True, _lo("2026-11-10"), None, 1),
        ("alva", BUP, "participant", True, _lo("2025-01-01"), _hi("2025-06-30"), 0),
        ("alva", BUP, "participant", True, _lo("2027-06-01"), _hi("2027-12-31"), 1),
        ("alva", SCHOOL, "participant", True, _lo("2026-11-10"), None, 0),
        ("bo", BUP, "participant", True, _lo("2025-01-01"), _hi("2025-06-30"), 0)])
    # The hub reads them so: BUP reads Alva's data in neither gap, as the release derives.
    from sip_hub.store import Store
    store = Store(fresh)
    with store.begin(write=False) as tx:
        assert tx.readable_patients(BUP, ["alva"], _lo("2026-12-07")) == set()
        assert tx.readable_patients(BUP, ["alva"], _lo("2027-07-01")) == {"alva"}
        assert tx.readable_patients(SOC, ["alva"], _lo("2026-12-07")) == {"alva"}
        assert tx.readable_patients(SOC, ["alva"], _lo("2026-01-01")) == set()
    # A downgrade would join BUP's periods again: refused, the database left at head.
    with pytest.raises(RuntimeError, match="downgrading below 0017"):
        _downgrade(fresh, "0016")
    with fresh.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == ("0017",)


def test_a_downgrade_with_one_grant_per_organisation_keeps_them(fresh: Engine) -> None:
    upgrade(fresh, "0016")
    _seed(fresh)
    with fresh.begin() as conn:  # the consents of Alva's but one gone: nothing to split
        conn.execute(text("UPDATE resource SET deleted = true WHERE res_type = 'Consent' "
                          "AND res_id <> 'bo-sip'"))
    upgrade(fresh, "0017")
    assert [g[:6] for g in _grants(fresh)] == sorted(BEFORE)
    _downgrade(fresh, "0016")
    with fresh.connect() as conn:
        rows = sorted((p, o, r, bool(re), s, u) for p, o, r, re, s, u in conn.execute(text(
            "SELECT patient_id, org_hsa_id, role, reads, valid_from, valid_until "
            "FROM access_grant")))
    assert rows == sorted(BEFORE)
    upgrade(fresh, "0017")
    assert [g[:6] for g in _grants(fresh)] == sorted(BEFORE)
