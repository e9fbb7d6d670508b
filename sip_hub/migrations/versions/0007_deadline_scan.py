"""deadline scan state: when each SIP plan is next due, and the last completed round

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('deadline_due',
    sa.Column('plan_id', sa.String(length=64), nullable=False),
    sa.Column('due', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('plan_id', name=op.f('pk_deadline_due'))
    )
    op.create_index(op.f('ix_deadline_due_due'), 'deadline_due', ['due'], unique=False)
    op.create_table('deadline_scan',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('scanned_at', sa.BigInteger(), nullable=False),
    sa.Column('inactive_days', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deadline_scan'))
    )


def downgrade() -> None:
    op.drop_table('deadline_scan')
    op.drop_index(op.f('ix_deadline_due_due'), table_name='deadline_due')
    op.drop_table('deadline_due')
