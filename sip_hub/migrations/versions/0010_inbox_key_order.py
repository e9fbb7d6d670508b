"""message inbox keys led by the message's ids, not by the sender

Revision ID: 0010
Revises: 0009

The inbox's key (sender_org, header_id) and its unique (sender_org, bundle_id) both began
with the sender. PostgreSQL's plan for a statement prepared while the table was small (a new
hub, or statistics taken while it was empty) could then take either index for either id,
using only its sender column: one sender's whole cache read for every message received
(0.6-0.9 ms a statement at 20,000 cached messages, three statements a message). Led by the
ids, each lookup has one index it can probe.
"""

from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def _keys(key: list[str], bundle: list[str], drop_index: str, make_index: str) -> None:
    with op.batch_alter_table('message_inbox', schema=None) as batch_op:
        batch_op.drop_index(drop_index)
        batch_op.drop_constraint('pk_message_inbox', type_='primary')
        batch_op.create_primary_key('pk_message_inbox', key)
        batch_op.create_index(make_index, bundle, unique=True)


def upgrade() -> None:
    _keys(['header_id', 'sender_org'], ['bundle_id', 'sender_org'],
          'ix_message_inbox_sender_org_bundle_id', 'ix_message_inbox_bundle_id_sender_org')


def downgrade() -> None:
    _keys(['sender_org', 'header_id'], ['sender_org', 'bundle_id'],
          'ix_message_inbox_bundle_id_sender_org', 'ix_message_inbox_sender_org_bundle_id')
