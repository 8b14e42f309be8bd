"""Alembic migrations of the service's database (run by `tuneforge.serve.db.migrate`)."""
