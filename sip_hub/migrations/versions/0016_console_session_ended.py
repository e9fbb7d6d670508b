"""web console sessions signed out before they expire

Revision ID: 0016
Revises: 0015
"""

from alembic import op
import sqlalchemy as sa

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('console_session_ended',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('jti', name=op.f('pk_console_session_ended'))
    )
    with op.batch_alter_table('console_session_ended', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_console_session_ended_expires'), ['expires'],
                              unique=False)


def downgrade() -> None:
    # (a release below 0016 has no web console: no session of it is taken there)
    op.drop_table('console_session_ended')
