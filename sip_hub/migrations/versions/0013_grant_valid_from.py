"""access grants start when the consent does

Revision ID: 0013
Revises: 0012

A SIP consent dated to start later (provision.period.start) does not yet cover anyone: the
process already treated it so, but the grants let the organisations read at once.
"""

from alembic import op
import sqlalchemy as sa

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('access_grant', schema=None) as batch_op:
        batch_op.add_column(sa.Column('valid_from', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # Without the column a grant of a consent dated to start later lets its organisation read
    # at once: refused while there is one (a grant already started loses nothing).
    import time
    if op.get_bind().execute(sa.text(
            "SELECT 1 FROM access_grant WHERE valid_from > :now LIMIT 1"),
            {"now": time.time_ns() // 1000}).first():
        raise RuntimeError("access grants start later (consents dated to start later); "
                           "downgrading below 0013 would let their organisations read now.")
    with op.batch_alter_table('access_grant', schema=None) as batch_op:
        batch_op.drop_column('valid_from')
