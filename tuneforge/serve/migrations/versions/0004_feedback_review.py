"""feedback review state

A stored correction is reviewed before it becomes training data: `status` (pending, accepted or
rejected; rows stored before this revision start as pending), `reviewed_at` (when a reviewer last
changed it) and `edited_correction` (the reviewer's version of the answer; the original
`correction` is kept as it was sent).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 02:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(length=16), server_default="pending", nullable=False))
        batch_op.add_column(sa.Column("reviewed_at", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("edited_correction", sa.Text(), nullable=True))
        batch_op.create_index("ix_feedback_project_id_status", ["project_id", "status"], unique=False)


def downgrade() -> None:
    """Drops the review: accepted and rejected rows become plain stored feedback again."""
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_project_id_status")
        batch_op.drop_column("edited_correction")
        batch_op.drop_column("reviewed_at")
        batch_op.drop_column("status")
