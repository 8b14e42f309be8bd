"""Projects and API keys. A key belongs to one project and is stored only as its hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from tuneforge.errors import ConfigError, Problem
from tuneforge.serve.db import Store
from tuneforge.serve.ids import new_id, now
from tuneforge.serve.tables import ApiKey, Project

KEY_PREFIX = "tf-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the project a valid key belongs to."""

    project_id: str
    project_name: str
    key_id: str


def get_or_create_project(store: Store, name: str) -> str:
    with store.session() as s:
        project = s.scalar(select(Project).where(Project.name == name))
        if project is None:
            project = Project(id=new_id("proj_"), name=name, created_at=now())
            s.add(project)
        return project.id


def create_key(store: Store, project: str, name: str | None = None) -> tuple[str, str]:
    """Create a key for `project` (created if new). Returns (key id, the key itself)."""
    if not project.strip():
        raise ConfigError(
            "a project name is required", [Problem("--project", "empty project name", "pass --project NAME")]
        )
    project_id = get_or_create_project(store, project)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = new_id("key_", 8)
    with store.session() as s:
        s.add(
            ApiKey(
                id=key_id, project_id=project_id, key_hash=hash_key(key), prefix=key[:10], name=name, created_at=now()
            )
        )
    return key_id, key


def revoke_key(store: Store, key_or_id: str) -> bool:
    """Revoke by key id or by the key itself; False if no such active key."""
    with store.session() as s:
        row = s.get(ApiKey, key_or_id) or s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key_or_id)))
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = now()
        return True


def list_keys(store: Store, project: str | None = None) -> list[dict]:
    with store.session() as s:
        query = select(ApiKey, Project.name).join(Project, Project.id == ApiKey.project_id).order_by(ApiKey.created_at)
        if project:
            query = query.where(Project.name == project)
        return [
            {
                "id": k.id,
                "project": pname,
                "prefix": k.prefix,
                "name": k.name,
                "created_at": k.created_at,
                "revoked": k.revoked_at is not None,
            }
            for k, pname in s.execute(query)
        ]


def authenticate(store: Store, key: str) -> Principal | None:
    with store.session() as s:
        row = s.execute(
            select(ApiKey, Project.name)
            .join(Project, Project.id == ApiKey.project_id)
            .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        ).first()
        if row is None:
            return None
        api_key, project_name = row
        return Principal(project_id=api_key.project_id, project_name=project_name, key_id=api_key.id)
