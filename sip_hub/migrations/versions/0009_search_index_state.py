"""search index state: the fingerprint of the definitions the index tables were built with

Revision ID: 0009
Revises: 0008
"""

from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No row yet: the first start after this migration rebuilds the index once and records
    # the fingerprint (store.index_state.rebuild_if_changed).
    op.create_table('search_index_state',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_search_index_state'))
    )


def downgrade() -> None:
    op.drop_table('search_index_state')
