"""API client records, and the web console's sessions signed out."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from .resources import Store
from .schema import api_client, console_session_ended


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
    disabled_at: int | None = None  # UTC seconds, the last time it was disabled


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


def set_client_active(store: Store, client_id: str, active: bool, now: int) -> bool:
    """Enable or disable a client (noting when, ``now`` in UTC seconds); False when there is
    no such client."""
    values: dict[str, object] = {"active": active}
    if not active:
        values["disabled_at"] = now
    with store.begin() as tx:
        done = tx.conn.execute(update(api_client).where(api_client.c.client_id == client_id)
                               .values(**values))
    return done.rowcount == 1


def list_clients(store: Store) -> list[ClientRecord]:
    with store.begin(write=False) as tx:
        rows = tx.conn.execute(select(api_client).order_by(api_client.c.created,
                                                           api_client.c.client_id)).all()
    return [ClientRecord(**row._mapping) for row in rows]


def disabled_clients(store: Store) -> frozenset[str]:
    """The ids of the disabled clients (a handful at most: one small read)."""
    with store.begin(write=False) as tx:
        rows = tx.conn.execute(select(api_client.c.client_id).where(
            api_client.c.active.is_(False))).all()
    return frozenset(row.client_id for row in rows)


# -- web console sessions (``routes.admin``) ---------------------------------------------------

def end_session(store: Store, jti: str, expires: int, now: int) -> None:
    """Sign a console session out before it expires (UTC seconds); forget those that have."""
    t = console_session_ended
    try:
        with store.begin() as tx:
            tx.conn.execute(delete(t).where(t.c.expires < now))
            if tx.conn.execute(select(t.c.jti).where(t.c.jti == jti)).first() is None:
                tx.conn.execute(insert(t).values(jti=jti, expires=expires))
    except IntegrityError:
        pass  # (signed out twice at once: the other recorded it)


def session_ended(store: Store, jti: str, client_id: str, issued: int) -> bool:
    """Whether the console session ``jti`` of ``client_id``, signed in at ``issued`` (UTC
    seconds), has been signed out, or its client disabled since (enabled again or not: a
    session cut off by disabling its client came back to life when the client was enabled
    again, one stolen with it included)."""
    t = console_session_ended
    with store.begin(write=False) as tx:
        if tx.conn.execute(select(t.c.jti).where(t.c.jti == jti)).first() is not None:
            return True
        return tx.conn.execute(select(api_client.c.client_id).where(
            api_client.c.client_id == client_id,
            api_client.c.disabled_at >= issued)).first() is not None
