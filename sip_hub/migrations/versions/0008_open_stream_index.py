"""the open deliveries of each outbox stream: a partial index to find stream heads

Revision ID: 0008
Revises: 0007
"""

from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_OPEN = sa.text("state IN ('pending', 'published')")


def upgrade() -> None:
    op.create_index('ix_outbox_delivery_open_stream', 'outbox_delivery',
                    ['patient_id', 'careplan_id', 'dest_org', 'seq'], unique=False,
                    postgresql_where=_OPEN, sqlite_where=_OPEN)


def downgrade() -> None:
    op.drop_index('ix_outbox_delivery_open_stream', table_name='outbox_delivery')
