"""the access log in tables of its own: audit_event and audit_ref

AuditEvents stored so far as versioned resources move over, and their resource, history and
index rows are removed.

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import orjson
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_BATCH = 1000


def upgrade() -> None:
    op.create_table('audit_event',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('recorded', sa.BigInteger(), nullable=False),
    sa.Column('action', sa.String(length=1), nullable=False),
    sa.Column('outcome', sa.String(length=2), nullable=False),
    sa.Column('subtype', sa.String(length=64), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_event'))
    )
    op.create_index(op.f('ix_audit_event_recorded'), 'audit_event', ['recorded'], unique=False)
    op.create_table('audit_ref',
    sa.Column('audit_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=32), nullable=False),
    sa.Column('system', sa.String(length=255), nullable=False),
    sa.Column('value', sa.String(length=255).with_variant(sa.String(length=255, collation='C'), 'postgresql'), nullable=False),
    sa.Column('recorded', sa.BigInteger(), nullable=False)
    )
    op.create_index(op.f('ix_audit_ref_param_value_system_recorded'), 'audit_ref', ['param', 'value', 'system', 'recorded'], unique=False)
    _move_audit_events()


def _move_audit_events() -> None:
    # The row layout is the application's (sip_hub.store.audit.event_rows), so that moved
    # events are searched exactly like new ones.
    from sip_hub.store.audit import event_rows
    from sip_hub.store.schema import audit_event, audit_ref

    conn = op.get_bind()
    h = sa.table('resource_history', sa.column('res_type'), sa.column('res_id'),
                 sa.column('content'))
    last = ''
    while True:
        rows = conn.execute(sa.select(h.c.res_id, h.c.content)
                            .where(h.c.res_type == 'AuditEvent', h.c.res_id > last,
                                   h.c.content.is_not(None))
                            .order_by(h.c.res_id).limit(_BATCH)).all()
        if not rows:
            break
        events, refs = [], []
        for rid, content in rows:
            event, event_refs = event_rows(orjson.loads(content), rid)
            events.append(event)
            refs += event_refs
        conn.execute(sa.insert(audit_event), events)
        if refs:
            conn.execute(sa.insert(audit_ref), refs)
        last = rows[-1][0]
    for table in ('idx_token', 'idx_reference', 'idx_date', 'idx_string', 'resource_history',
                  'resource'):
        conn.execute(sa.text(f"DELETE FROM {table} WHERE res_type = 'AuditEvent'"))


def downgrade() -> None:
    # The access log must not be lost on the way back; moving it back is not supported.
    if op.get_bind().execute(sa.text("SELECT 1 FROM audit_event LIMIT 1")).first():
        raise RuntimeError("audit_event holds the access log; downgrading below 0006 would "
                           "drop it. Export it (GET /fhir/AuditEvent) and empty it first.")
    op.drop_index(op.f('ix_audit_ref_param_value_system_recorded'), table_name='audit_ref')
    op.drop_table('audit_ref')
    op.drop_index(op.f('ix_audit_event_recorded'), table_name='audit_event')
    op.drop_table('audit_event')
