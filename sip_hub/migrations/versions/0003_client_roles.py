"""client roles

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

def upgrade() -> None:
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.add_column(sa.Column('role', sa.String(length=16), server_default='organization', nullable=False))
        batch_op.add_column(sa.Column('personal_data', sa.Boolean(), server_default=sa.false(), nullable=False))

def downgrade() -> None:
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.drop_column('personal_data')
        batch_op.drop_column('role')

