"""access grants and owners

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('access_grant',
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('org_hsa_id', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('reads', sa.Boolean(), nullable=False),
    sa.Column('valid_until', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('patient_id', 'org_hsa_id', name=op.f('pk_access_grant'))
    )
    with op.batch_alter_table('access_grant', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_grant_org_hsa_id_patient_id'), ['org_hsa_id', 'patient_id'], unique=False)

    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner_org', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.drop_column('owner_org')

    with op.batch_alter_table('access_grant', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_grant_org_hsa_id_patient_id'))

    op.drop_table('access_grant')
