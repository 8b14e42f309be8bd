"""storage keys instead of host paths

The rows that named files on the API machine's disk (files.path, jobs.run_dir, checkpoints.path,
fine_tuned_models.path) now hold keys into the shared storage (`tuneforge.serve.storage`), relative to
its root: `<data_dir>/files/<project>/<file>` becomes `files/<project>/<file>`, `<data_dir>/runs/<project>/<job>`
becomes `runs/<project>/<job>` (jobs created from now on write `runs/<job id>`). The storage root is the
old data_dir by default (TUNEFORGE_STORAGE_URL unset), so existing files resolve without being moved.
A path outside that layout is left as it was and named in a warning (move it under the storage root
and record its key by hand).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 01:45:00
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def _key_of_file(path: str, project_id: str) -> str | None:
    marker = f"/files/{project_id}/"
    at = path.rfind(marker)
    return path[at + 1 :] if at >= 0 else None


def _key_of_run(path: str, project_id: str, job_id: str) -> str | None:
    marker = f"/runs/{project_id}/{job_id}"
    at = path.rfind(marker)
    if at < 0:
        return None
    rest = path[at + len(marker) :]
    return path[at + 1 :] if rest == "" or rest.startswith("/") else None


def _convert(conn, table: str, id_col: str, col: str, rows, key_of) -> None:
    for row_id, path, *context in rows:
        if not path or not path.startswith("/"):
            continue  # already a key (or empty)
        key = key_of(path, *context)
        if key is None:
            log.warning(
                "%s %s: %s %r is not under the files/ or runs/ layout; left as a host path", table, row_id, col, path
            )
            continue
        conn.execute(
            sa.text(f"UPDATE {table} SET {col} = :key WHERE {id_col} = :id"), {"key": key.rstrip("/"), "id": row_id}
        )


def upgrade() -> None:
    conn = op.get_bind()
    files = conn.execute(sa.text("SELECT id, path, project_id FROM files")).all()
    _convert(conn, "files", "id", "path", files, _key_of_file)
    jobs = conn.execute(sa.text("SELECT id, run_dir, project_id, id FROM jobs")).all()
    _convert(conn, "jobs", "id", "run_dir", jobs, _key_of_run)
    ckpts = conn.execute(
        sa.text("SELECT c.id, c.path, j.project_id, j.id FROM checkpoints c JOIN jobs j ON j.id = c.job_id")
    ).all()
    _convert(conn, "checkpoints", "id", "path", ckpts, _key_of_run)
    models = conn.execute(
        sa.text("SELECT m.id, m.path, j.project_id, j.id FROM fine_tuned_models m JOIN jobs j ON j.id = m.job_id")
    ).all()
    _convert(conn, "fine_tuned_models", "id", "path", models, _key_of_run)


def downgrade() -> None:
    """Keys become paths under the default data dir ($TUNEFORGE_HOME/serve), where the old code looked."""
    from tuneforge.config import tuneforge_home

    root = str(tuneforge_home() / "serve")
    conn = op.get_bind()
    for table, col in (("files", "path"), ("jobs", "run_dir"), ("checkpoints", "path"), ("fine_tuned_models", "path")):
        conn.execute(
            sa.text(
                f"UPDATE {table} SET {col} = :root || '/' || {col} WHERE {col} IS NOT NULL AND {col} NOT LIKE '/%'"
            ),
            {"root": root},
        )
