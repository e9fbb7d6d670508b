"""an outbox stream is a person's messages to a destination, no longer a plan's

Revision ID: 0022
Revises: 0021

Order was kept per (patient, plan, destination). A SIP's messages written before its plan
existed (the consent it starts under, told as consent-changed) or after it was closed have no
plan ('' in careplan_id), so they made a stream of their own beside the plan's: both heads
were published together and POSTed side by side, and a participant whose first POST of the
consent failed got sip-initiated before the consent it was initiated under. The stream is now
(patient, destination); careplan_id only says which plan a message is about.

Here, for each person and destination with deliveries still to settle (pending, published,
or dead, which a replay puts back at its place) in more than one of the old streams, those
deliveries are numbered again in the order they were written (each old stream's own order
kept; between streams by when their messages were written), after every number the old
streams gave, so that each keeps its place in the person's stream. Settled deliveries keep
their numbers (the unique index of the numbers still names the plan). The streams' counters
become one per person and destination, from the highest of the old ones; the index of open
deliveries finds a person's stream. A downgrade gives every old stream of a person and
destination that person's counter: numbers stay unique, and each old stream in order.
"""

from __future__ import annotations

from heapq import merge
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None

_OPEN = sa.text("state IN ('pending', 'published')")
_INDEX = 'ix_outbox_delivery_open_stream'


def _stream_table(*, with_plan: bool) -> Any:
    plan = [sa.Column('careplan_id', sa.String(length=64), nullable=False)] if with_plan else []
    keys = ['patient_id', *(['careplan_id'] if with_plan else []), 'dest_org']
    return op.create_table(
        'outbox_stream',
        sa.Column('patient_id', sa.String(length=64), nullable=False), *plan,
        sa.Column('dest_org', sa.String(length=64), nullable=False),
        sa.Column('last_seq', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*keys, name=op.f('pk_outbox_stream')))


def upgrade() -> None:
    conn = op.get_bind()
    last: dict[tuple[str, str], int] = {}
    for patient, dest, seq in conn.execute(sa.text(
            "SELECT patient_id, dest_org, MAX(last_seq) FROM outbox_stream "
            "GROUP BY patient_id, dest_org")):
        last[(patient, dest)] = int(seq)
    _renumber(conn, last)
    op.drop_index(_INDEX, table_name='outbox_delivery')
    op.drop_table('outbox_stream')
    table = _stream_table(with_plan=False)
    op.bulk_insert(table, [{"patient_id": p, "dest_org": d, "last_seq": seq}
                           for (p, d), seq in sorted(last.items())])
    op.create_index(_INDEX, 'outbox_delivery', ['patient_id', 'dest_org', 'seq'],
                    unique=False, postgresql_where=_OPEN, sqlite_where=_OPEN)


def _renumber(conn: Any, last: dict[tuple[str, str], int]) -> None:
    """Number the unsettled deliveries of each person and destination found in more than one
    old stream again, in the order they were written, after ``last`` (which it moves on)."""
    streams: dict[tuple[str, str], dict[str, list[tuple[int, int, str]]]] = {}
    for did, patient, dest, plan, seq, created in conn.execute(sa.text(
            "SELECT d.id, d.patient_id, d.dest_org, d.careplan_id, d.seq, m.created "
            "FROM outbox_delivery d LEFT JOIN outbox_message m "
            "ON m.message_id = d.message_id "
            "WHERE d.state IN ('pending', 'published', 'dead')")):
        streams.setdefault((patient, dest), {}).setdefault(plan, []).append(
            (int(created or 0), int(seq), did))
    changes: list[dict[str, Any]] = []
    for key, plans in sorted(streams.items()):
        if len(plans) < 2:
            continue
        # Each old stream in its own order; between them by when written (the plan-less
        # stream first at a tie: what a SIP starts under comes before its plan).
        ordered = [sorted(plans[plan], key=lambda r: r[1]) for plan in sorted(plans)]
        seq = max(last.get(key, 0), *(r[1] for rows in ordered for r in rows))
        for _, _, did in merge(*ordered, key=lambda r: r[0]):
            seq += 1
            changes.append({"id": did, "seq": seq})
        last[key] = seq
    if changes:
        conn.execute(sa.text("UPDATE outbox_delivery SET seq = :seq WHERE id = :id"), changes)


def downgrade() -> None:
    conn = op.get_bind()
    last = [tuple(r) for r in conn.execute(sa.text(
        "SELECT patient_id, dest_org, last_seq FROM outbox_stream"))]
    plans: dict[tuple[str, str], list[str]] = {}
    for patient, dest, plan in conn.execute(sa.text(
            "SELECT DISTINCT patient_id, dest_org, careplan_id FROM outbox_delivery")):
        plans.setdefault((patient, dest), []).append(plan)
    op.drop_index(_INDEX, table_name='outbox_delivery')
    op.drop_table('outbox_stream')
    table = _stream_table(with_plan=True)
    op.bulk_insert(table, [{"patient_id": p, "careplan_id": c, "dest_org": d, "last_seq": seq}
                           for p, d, seq in last for c in sorted(plans.get((p, d), [""]))])
    op.create_index(_INDEX, 'outbox_delivery', ['patient_id', 'careplan_id', 'dest_org', 'seq'],
                    unique=False, postgresql_where=_OPEN, sqlite_where=_OPEN)
