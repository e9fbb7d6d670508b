"""initial schema

Revision ID: 0001
Revises: -
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('idx_date',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('low', sa.BigInteger(), nullable=False),
    sa.Column('high', sa.BigInteger(), nullable=False)
    )
    with op.batch_alter_table('idx_date', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idx_date_res_type_param_low_high'), ['res_type', 'param', 'low', 'high'], unique=False)
        batch_op.create_index(batch_op.f('ix_idx_date_res_type_res_id'), ['res_type', 'res_id'], unique=False)

    op.create_table('idx_reference',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('target_type', sa.String(length=64), nullable=False),
    sa.Column('target_id', sa.String(length=64), nullable=False)
    )
    with op.batch_alter_table('idx_reference', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idx_reference_res_type_param_target_id_target_type'), ['res_type', 'param', 'target_id', 'target_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_idx_reference_res_type_res_id'), ['res_type', 'res_id'], unique=False)

    op.create_table('idx_string',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('value_norm', sa.String(length=255).with_variant(sa.String(length=255, collation='C'), 'postgresql'), nullable=False),
    sa.Column('value', sa.String(length=255), nullable=False)
    )
    with op.batch_alter_table('idx_string', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idx_string_res_type_param_value_norm'), ['res_type', 'param', 'value_norm'], unique=False)
        batch_op.create_index(batch_op.f('ix_idx_string_res_type_res_id'), ['res_type', 'res_id'], unique=False)

    op.create_table('idx_token',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('system', sa.String(length=255), nullable=True),
    sa.Column('code', sa.String(length=255).with_variant(sa.String(length=255, collation='C'), 'postgresql'), nullable=False)
    )
    with op.batch_alter_table('idx_token', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idx_token_res_type_param_code'), ['res_type', 'param', 'code'], unique=False)
        batch_op.create_index(batch_op.f('ix_idx_token_res_type_res_id'), ['res_type', 'res_id'], unique=False)

    op.create_table('resource',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.BigInteger(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('res_type', 'res_id', name=op.f('pk_resource'))
    )
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_resource_res_type_last_updated'), ['res_type', 'last_updated'], unique=False)

    op.create_table('resource_history',
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.BigInteger(), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('res_type', 'res_id', 'version_id', name=op.f('pk_resource_history'))
    )
    with op.batch_alter_table('resource_history', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_resource_history_last_updated'), ['last_updated'], unique=False)
        batch_op.create_index(batch_op.f('ix_resource_history_res_type_last_updated'), ['res_type', 'last_updated'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('resource_history', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_resource_history_res_type_last_updated'))
        batch_op.drop_index(batch_op.f('ix_resource_history_last_updated'))

    op.drop_table('resource_history')
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_resource_res_type_last_updated'))

    op.drop_table('resource')
    with op.batch_alter_table('idx_token', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idx_token_res_type_res_id'))
        batch_op.drop_index(batch_op.f('ix_idx_token_res_type_param_code'))

    op.drop_table('idx_token')
    with op.batch_alter_table('idx_string', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idx_string_res_type_res_id'))
        batch_op.drop_index(batch_op.f('ix_idx_string_res_type_param_value_norm'))

    op.drop_table('idx_string')
    with op.batch_alter_table('idx_reference', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idx_reference_res_type_res_id'))
        batch_op.drop_index(batch_op.f('ix_idx_reference_res_type_param_target_id_target_type'))

    op.drop_table('idx_reference')
    with op.batch_alter_table('idx_date', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idx_date_res_type_res_id'))
        batch_op.drop_index(batch_op.f('ix_idx_date_res_type_param_low_high'))

    op.drop_table('idx_date')
