"""API client records."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select

from .resources import Store
from .schema import api_client


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    secret_hash: str
    org_hsa_id: str
    scope: str
    name: str | None
    created: int
    active: bool
    role: str = "organization"
    personal_data: bool = False


def insert_client(store: Store, rec: ClientRecord) -> None:
    with store.begin() as tx:
        tx.conn.execute(insert(api_client).values(
            client_id=rec.client_id, secret_hash=rec.secret_hash, org_hsa_id=rec.org_hsa_id,
            scope=rec.scope, name=rec.name, created=rec.created, active=rec.active,
            role=rec.role, personal_data=rec.personal_data))


def get_client(store: Store, client_id: str) -> ClientRecord | None:
    with store.begin(write=False) as tx:
        row = tx.conn.execute(select(api_client).where(
            api_client.c.client_id == client_id)).first()
    return ClientRecord(**row._mapping) if row else None
