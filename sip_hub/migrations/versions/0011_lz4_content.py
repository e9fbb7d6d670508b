"""JSON contents compressed with lz4 on PostgreSQL

Revision ID: 0011
Revises: 0010

PostgreSQL compresses a value of more than ~2 kB before it stores it, by default with pglz.
The hub stores every version of every resource, every message it sends and its responses as
JSON of that size: measured on the server, pglz took 21 us to store a 3 kB SIP CarePlan and
170-190 us a 13 kB message Bundle, lz4 9 us and 32-52 us, for the same size on disk, and lz4
reads back faster. Values written before keep their compression (both are read alike).
Needs PostgreSQL 14 or later built with lz4 (the Debian and the official images are); on an
older or other server this changes nothing. SQLite stores them as they are.
"""

from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

COLUMNS = [("resource_history", "content"), ("outbox_message", "content"),
           ("audit_event", "content"), ("message_inbox", "response"),
           ("message_inbox", "request")]


def _lz4_available() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    return bool(bind.exec_driver_sql(
        "SELECT current_setting('server_version_num')::int >= 140000 AND EXISTS ("
        "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
        "AND 'lz4' = ANY(enumvals))").scalar())


def _compress(method: str) -> None:
    if not _lz4_available():
        return
    for table, column in COLUMNS:
        op.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET COMPRESSION {method}')


def upgrade() -> None:
    _compress("lz4")


def downgrade() -> None:
    _compress("default")
