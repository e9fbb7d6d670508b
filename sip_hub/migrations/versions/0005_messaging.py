"""messaging: outbox, streams and the reliable-messaging inbox

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('outbox_message',
    sa.Column('message_id', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('careplan_id', sa.String(length=64), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('message_id', name=op.f('pk_outbox_message'))
    )
    op.create_table('outbox_delivery',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('message_id', sa.String(length=64), nullable=False),
    sa.Column('dest_org', sa.String(length=64), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('careplan_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.BigInteger(), nullable=False),
    sa.Column('published_at', sa.BigInteger(), nullable=True),
    sa.Column('updated', sa.BigInteger(), nullable=False),
    sa.Column('last_error', sa.String(length=2000), nullable=True),
    sa.Column('endpoint_url', sa.String(length=2000), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_delivery'))
    )
    with op.batch_alter_table('outbox_delivery', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_delivery_state_next_attempt_at'), ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_delivery_patient_id_careplan_id_dest_org_seq'), ['patient_id', 'careplan_id', 'dest_org', 'seq'], unique=True)
        batch_op.create_index(batch_op.f('ix_outbox_delivery_message_id'), ['message_id'], unique=False)

    op.create_table('outbox_stream',
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('careplan_id', sa.String(length=64), nullable=False),
    sa.Column('dest_org', sa.String(length=64), nullable=False),
    sa.Column('last_seq', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('patient_id', 'careplan_id', 'dest_org', name=op.f('pk_outbox_stream'))
    )
    op.create_table('message_inbox',
    sa.Column('sender_org', sa.String(length=64), nullable=False),
    sa.Column('header_id', sa.String(length=64), nullable=False),
    sa.Column('bundle_id', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('received', sa.BigInteger(), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=False),
    sa.Column('response_code', sa.String(length=16), nullable=True),
    sa.Column('response', sa.LargeBinary(), nullable=True),
    sa.Column('request', sa.LargeBinary(), nullable=True),
    sa.Column('caller', sa.LargeBinary(), nullable=True),
    sa.Column('response_url', sa.String(length=2000), nullable=True),
    sa.PrimaryKeyConstraint('sender_org', 'header_id', name=op.f('pk_message_inbox'))
    )
    with op.batch_alter_table('message_inbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_message_inbox_sender_org_bundle_id'), ['sender_org', 'bundle_id'], unique=True)
        batch_op.create_index(batch_op.f('ix_message_inbox_state_received'), ['state', 'received'], unique=False)
        batch_op.create_index(batch_op.f('ix_message_inbox_expires'), ['expires'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('message_inbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_message_inbox_expires'))
        batch_op.drop_index(batch_op.f('ix_message_inbox_state_received'))
        batch_op.drop_index(batch_op.f('ix_message_inbox_sender_org_bundle_id'))
    op.drop_table('message_inbox')
    op.drop_table('outbox_stream')
    with op.batch_alter_table('outbox_delivery', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_delivery_message_id'))
        batch_op.drop_index(batch_op.f('ix_outbox_delivery_patient_id_careplan_id_dest_org_seq'))
        batch_op.drop_index(batch_op.f('ix_outbox_delivery_state_next_attempt_at'))
    op.drop_table('outbox_delivery')
    op.drop_table('outbox_message')
