"""outbox deliveries' unique stream numbering led by the sequence number, not by the stream

Revision ID: 0012
Revises: 0011

The unique index (patient_id, careplan_id, dest_org, seq) served every lookup of a stream as
well as the partial index of its open deliveries does, as far as PostgreSQL's planner could
tell: the partial index keeps the pages it grew to in a backlog for the few deliveries it
holds afterwards, so the planner counted more pages per entry there and took the full index,
reading back through each stream's whole settled history. In the messaging benchmark the
relay's claim read a thousand pages a round and the deliverer's check of what an earlier
delivery holds back 1,400 a batch. Led by seq, the unique index still keeps each stream's
numbers unique, and the stream lookups have one index that serves them.
"""

from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

_STREAM = ['patient_id', 'careplan_id', 'dest_org']


def upgrade() -> None:
    op.drop_index('ix_outbox_delivery_patient_id_careplan_id_dest_org_seq',
                  table_name='outbox_delivery')
    op.create_index('ix_outbox_delivery_seq_patient_id_careplan_id_dest_org',
                    'outbox_delivery', ['seq', *_STREAM], unique=True)


def downgrade() -> None:
    op.drop_index('ix_outbox_delivery_seq_patient_id_careplan_id_dest_org',
                  table_name='outbox_delivery')
    op.create_index('ix_outbox_delivery_patient_id_careplan_id_dest_org_seq',
                    'outbox_delivery', [*_STREAM, 'seq'], unique=True)
