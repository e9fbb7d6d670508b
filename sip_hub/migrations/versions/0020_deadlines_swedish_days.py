"""the next deadline round looks at every open SIP plan

Revision ID: 0020
Revises: 0019

Since an invitation's answer deadline given as a date ends at Swedish midnight (``sip.
swedish_range``), a plan's next deadline (``deadline_due``) is recorded as that instant. The
values recorded before still point at UTC midnight, one or two hours later, and a round looks
at a plan nothing was written in only once its recorded deadline has come: the
invitation-unanswered Task of such an invitation would open that much late. Forgetting the
last round (as ``sip-hub deadlines --at`` does) makes the next one a full round, which
records every open plan's next deadline again by the rules in force. The schema is
unchanged; a downgrade has nothing to undo.
"""

from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM deadline_scan")


def downgrade() -> None:
    pass
