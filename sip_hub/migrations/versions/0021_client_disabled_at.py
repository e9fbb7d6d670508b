"""a disabled client's console sessions stay ended

Revision ID: 0021
Revises: 0020

``api_client.disabled_at``: when the client was last disabled (UTC seconds). A console
session signed in before then is refused, also once the client is enabled again; the
sessions were refused only while the client stayed disabled, and came back with it. A
client disabled at the upgrade counts as disabled then: its sessions from before stay ended
when it is enabled.
"""

import time

from alembic import op
import sqlalchemy as sa

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.add_column(sa.Column('disabled_at', sa.BigInteger(), nullable=True))
    op.get_bind().execute(sa.text("UPDATE api_client SET disabled_at = :now "
                                  "WHERE active = :off"),
                          {"now": int(time.time()), "off": False})


def downgrade() -> None:
    # (a release below 0021 takes a disabled client's sessions back when it is enabled)
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.drop_column('disabled_at')
