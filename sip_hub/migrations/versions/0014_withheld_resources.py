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
    # Without the column a withheld resource would be shared with every organisation the
    # person's consent covers: refused while there is one, as 0006 refuses to drop the log.
    if op.get_bind().execute(sa.text(
            "SELECT 1 FROM resource WHERE withheld = true LIMIT 1")).first():
        raise RuntimeError("resources are withheld from everyone but their owner; "
                           "downgrading below 0014 would share them. Delete them first.")
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.drop_column('withheld')
