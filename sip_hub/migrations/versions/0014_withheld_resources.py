"""resources withheld from everyone but their owner

Revision ID: 0014
Revises: 0013

A resource an organisation writes into the compartment of a person whose consent is in force,
when that consent does not cover it, is kept from the organisations it covers (rule 1:
nothing is exchanged without the person's consent): what was stored before is shared as it
was.
"""

from alembic import op
import sqlalchemy as sa

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.add_column(sa.Column('withheld', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.drop_column('withheld')
