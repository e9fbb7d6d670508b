"""Tables of the versioned resource store. Alembic migrations mirror this module."""

from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, Index, Integer, LargeBinary, MetaData,
                        PrimaryKeyConstraint, String, Table, false, text)

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
})

# A delivery on its way (pending or published), as the partial index below states it: a query
# uses the index only when its condition says exactly this, with the values written out.
OPEN_STATE_SQL = "state IN ('pending', 'published')"

# Byte-wise ordering so that prefix search by range uses the index on PostgreSQL too.
_Key = String(255).with_variant(String(255, collation="C"), "postgresql")

# The current version of every resource (one row per logical id); reads join to its history row.
resource = Table(
    "resource", metadata,
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),  # UTC microseconds since the epoch
    Column("deleted", Boolean, nullable=False),
    # HSA-id of the organisation whose client created the resource (NULL: the hub itself).
    Column("owner_org", String(64), nullable=True),
    # Created in the compartment of a person whose consent was in force by an organisation
    # it did not cover: kept from everyone but its owner (``access.Access.withholds``).
    Column("withheld", Boolean, nullable=False, server_default=false()),
    Index(None, "res_type", "last_updated"),
)

# Every version ever written; delete writes a tombstone version (content NULL).
resource_history = Table(
    "resource_history", metadata,
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", BigInteger, nullable=False),
    Column("method", String(8), nullable=False),
    Column("content", LargeBinary, nullable=True),
    Index(None, "res_type", "last_updated"),
    Index(None, "last_updated"),
)


def _index_table(name: str, *columns: Column, value_index: tuple[str, ...]) -> Table:
    return Table(
        name, metadata,
        Column("res_type", String(64), nullable=False),
        Column("res_id", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
        Index(None, "res_type", "param", *value_index),
        Index(None, "res_type", "res_id"),
    )


idx_token = _index_table(
    "idx_token", Column("system", String(255), nullable=True), Column("code", _Key, nullable=False),
    value_index=("code",))
idx_reference = _index_table(
    "idx_reference", Column("target_type", String(64), nullable=False),
    Column("target_id", String(64), nullable=False), value_index=("target_id", "target_type"))
idx_date = _index_table(
    "idx_date", Column("low", BigInteger, nullable=False), Column("high", BigInteger, nullable=False),
    value_index=("low", "high"))
idx_string = _index_table(
    "idx_string", Column("value_norm", _Key, nullable=False),
    Column("value", String(255), nullable=False), value_index=("value_norm",))

INDEX_TABLES = {"token": idx_token, "reference": idx_reference, "date": idx_date,
                "string": idx_string}

# Who may see a person's SIP data, derived from the SIP resources on every write that can
# change it: the coordinating organisation, and the participating organisations the person's
# active consents cover, each in its period. One row per period an organisation is covered
# (``seq`` 0, 1, ... in order; migration 0017: consents with periods apart cover it in each and
# not between them), or one row reading nothing for a participant no consent covers.
access_grant = Table(
    "access_grant", metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("org_hsa_id", String(64), primary_key=True),
    Column("role", String(16), nullable=False),  # coordinator | participant
    # Whether the grant lets the organisation read: only while the consent covers it.
    Column("reads", Boolean, nullable=False),
    Column("valid_until", BigInteger, nullable=True),
    # A consent dated to start later covers only from then (added in 0013).
    Column("valid_from", BigInteger, nullable=True),
    Column("seq", Integer, primary_key=True, autoincrement=False, server_default=text("0")),
    # The visibility condition's probe: an organisation's grants for one patient.
    Index(None, "org_hsa_id", "patient_id"),
)

# API clients (OAuth2 client credentials); secrets are stored only as Argon2 hashes.
api_client = Table(
    "api_client", metadata,
    Column("client_id", String(64), primary_key=True),
    Column("secret_hash", String(255), nullable=False),
    Column("org_hsa_id", String(64), nullable=False),
    Column("scope", String(2000), nullable=False),
    Column("name", String(255), nullable=True),
    Column("created", BigInteger, nullable=False),
    Column("active", Boolean, nullable=False),
    # organization | portal | admin
    Column("role", String(16), nullable=False, server_default="organization"),
    # Admin clients see no personal data unless this is granted explicitly.
    Column("personal_data", Boolean, nullable=False, server_default=false()),
    # When the client was last disabled (UTC seconds), kept when it is enabled again: the web
    # console sessions signed in before then stay ended (``store.clients.session_ended``).
    Column("disabled_at", BigInteger, nullable=True),
)

# Web console sessions signed out before they expire (``routes.admin``): a session is a signed
# cookie, good until it expires unless named here. Rows go once their session would have.
console_session_ended = Table(
    "console_session_ended", metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires", BigInteger, nullable=False),  # UTC seconds
    Index(None, "expires"),
)

# -- messaging (sip_hub.messaging) -------------------------------------------------------------

# Outgoing messages: the transactional outbox. A message is written in the transaction of the
# change it tells about, so a change and its messages commit together or not at all.
outbox_message = Table(
    "outbox_message", metadata,
    Column("message_id", String(64), primary_key=True),  # MessageHeader.id
    Column("event", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # notification | response
    Column("patient_id", String(64), nullable=False),
    Column("careplan_id", String(64), nullable=False),  # '' while the SIP has no plan yet
    Column("created", BigInteger, nullable=False),
    Column("content", LargeBinary, nullable=False),  # the message Bundle, JSON
)

# One delivery per (message, destination organisation): the unit that is published, retried,
# dead-lettered, withdrawn and replayed. (patient_id, dest_org) is the stream whose order is
# kept, seq numbers it: the person's, so that what was told before the SIP's plan existed (its
# consent) or after it was closed keeps its place among the plan's messages (migration 0022;
# careplan_id only says which plan a message is about).
outbox_delivery = Table(
    "outbox_delivery", metadata,
    Column("id", String(36), primary_key=True),
    Column("message_id", String(64), nullable=False),
    Column("dest_org", String(64), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("careplan_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    # pending | published | delivered | dead | withdrawn
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),  # UTC microseconds
    Column("published_at", BigInteger, nullable=True),
    Column("updated", BigInteger, nullable=False),
    Column("last_error", String(2000), nullable=True),
    # Where to POST instead of the organisation's configured endpoint (an async
    # $process-message's response-url).
    Column("endpoint_url", String(2000), nullable=True),
    Index(None, "state", "next_attempt_at"),
    # Each stream's numbers unique. Led by seq, so that it serves no lookup of a stream: led by
    # the stream, PostgreSQL's planner took it for them in place of the index below, reading
    # through the stream's settled history (migration 0012). (With careplan_id: settled
    # deliveries numbered when a stream was a plan's share numbers with another plan's.)
    Index(None, "seq", "patient_id", "careplan_id", "dest_org", unique=True),
    Index(None, "message_id"),
    # The open deliveries of each stream (person x destination), to find its head. Through the
    # whole stream's index, whether an earlier delivery is still open meant reading back
    # through the stream's settled history, for each waiting delivery: with a backlog, a relay
    # round that found nothing to publish took 90 ms in SQLite's write lock.
    Index("ix_outbox_delivery_open_stream", "patient_id", "dest_org", "seq",
          postgresql_where=text(OPEN_STATE_SQL), sqlite_where=text(OPEN_STATE_SQL)),
)

# The last sequence number of each stream. Taking the next number locks the row, so concurrent
# writers to one stream commit in sequence order.
outbox_stream = Table(
    "outbox_stream", metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("dest_org", String(64), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
)

# Messages received by $process-message: the reliable-messaging cache of Bundle.id and
# MessageHeader.id with the response sent, per sender, until ``expires``.
# Its keys lead with the ids (see migration 0010): a lookup has one index it can probe
# whatever plan the database prepared.
message_inbox = Table(
    "message_inbox", metadata,
    Column("sender_org", String(64), nullable=False),
    Column("header_id", String(64), nullable=False),
    Column("bundle_id", String(64), nullable=False),
    Column("event", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # accepted (async, not yet processed) | done
    Column("received", BigInteger, nullable=False),
    Column("expires", BigInteger, nullable=False),
    Column("response_code", String(16), nullable=True),  # ok | transient-error | fatal-error
    Column("response", LargeBinary, nullable=True),
    # An async request until it is processed: the Bundle, the caller (JSON) and where the
    # response goes.
    Column("request", LargeBinary, nullable=True),
    Column("caller", LargeBinary, nullable=True),
    Column("response_url", String(2000), nullable=True),
    PrimaryKeyConstraint("header_id", "sender_org"),
    Index(None, "bundle_id", "sender_org", unique=True),
    Index(None, "state", "received"),
    Index(None, "expires"),
)


# -- the access log (sip_hub.audit) -------------------------------------------------------------

# One row per AuditEvent, append-only, with the columns it is searched by (sip_hub.store.audit).
audit_event = Table(
    "audit_event", metadata,
    Column("id", String(64), primary_key=True),
    Column("recorded", BigInteger, nullable=False),  # UTC microseconds
    Column("action", String(1), nullable=False),
    Column("outcome", String(2), nullable=False),
    Column("subtype", String(64), nullable=False),  # the RESTful interaction
    Column("content", LargeBinary, nullable=False),  # the AuditEvent, JSON
    Index(None, "recorded"),
)

# What an AuditEvent refers to: its patients and entities (system: the target type) and its
# agents' identifiers (system: the identifier system).
audit_ref = Table(
    "audit_ref", metadata,
    Column("audit_id", String(64), nullable=False),
    Column("param", String(32), nullable=False),  # entity | (agent|entity):identifier
    Column("system", String(255), nullable=False),
    Column("value", _Key, nullable=False),
    Column("recorded", BigInteger, nullable=False),
    Index(None, "param", "value", "system", "recorded"),
)


# -- the deadline scan (sip_hub.deadlines) ------------------------------------------------------

# When each SIP plan next needs a look by time alone: the first instant (UTC microseconds) at
# which one of its deadlines will have passed. A round reconciles the plans due by then, besides
# those written since the last round, instead of every open plan.
deadline_due = Table(
    "deadline_due", metadata,
    Column("plan_id", String(64), primary_key=True),
    Column("due", BigInteger, nullable=False),
    Index(None, "due"),
)

# One row: when the last completed round started, and the inactivity setting it ran with.
deadline_scan = Table(
    "deadline_scan", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("scanned_at", BigInteger, nullable=False),
    Column("inactive_days", Integer, nullable=False),
)

# One row: the fingerprint of the search parameters and extraction rules the index tables
# were built with (``fhir.indexing.fingerprint``); see ``store.index_state``.
search_index_state = Table(
    "search_index_state", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("fingerprint", String(64), nullable=False),
)
