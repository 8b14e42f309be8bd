"""The storage interface: one contract for a shared folder and an S3 bucket (moto's server on 127.0.0.1),
keys checked, copies made once; the migration that turns the database's host paths into keys."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from helpers import moto_s3
from tuneforge.errors import ConfigError
from tuneforge.serve.storage import FilesystemStorage, S3Storage, Storage, StorageError, open_storage


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as (url, options):
        yield url, options


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path, s3) -> Storage:
    if request.param == "file":
        return open_storage((tmp_path / "shared").as_uri())
    url, options = s3
    return open_storage(f"{url}/{tmp_path.name}", options)  # a prefix per test: no test sees another's objects


def test_put_open_get_list_delete(storage, tmp_path):
    assert isinstance(storage, Storage)
    assert storage.put("files/proj-1/file-a.jsonl", io.BytesIO(b'{"a": 1}\n')) == 9
    src = tmp_path / "local.bin"
    src.write_bytes(b"x" * 3000)
    assert storage.put("files/proj-1/file-b.bin", src) == 3000
    assert storage.exists("files/proj-1/file-a.jsonl") and storage.exists("files/proj-1")
    assert not storage.exists("files/proj-2/file-a.jsonl")
    with storage.open("files/proj-1/file-a.jsonl") as f:
        assert f.read() == b'{"a": 1}\n'
    assert storage.get("files/proj-1/file-b.bin", tmp_path / "out" / "b.bin").read_bytes() == b"x" * 3000
    assert storage.list("files") == ["files/proj-1/file-a.jsonl", "files/proj-1/file-b.bin"]
    assert storage.list("nothing") == []
    storage.put("files/proj-1/file-a.jsonl", io.BytesIO(b"new"))  # replaces
    with storage.open("files/proj-1/file-a.jsonl") as f:
        assert f.read() == b"new"
    storage.delete("files/proj-1/file-a.jsonl")
    assert storage.list("files") == ["files/proj-1/file-b.bin"]
    storage.delete("files")  # a prefix: everything under it
    assert storage.list("files") == [] and not storage.exists("files/proj-1/file-b.bin")
    storage.delete("files/never")  # absent: no error
    with pytest.raises(StorageError, match="no object 'files/gone'"):
        storage.open("files/gone")
    with pytest.raises(StorageError, match="no object"):
        storage.local_file("files/gone", tmp_path / "cache")


@pytest.mark.parametrize("bad", ["/srv/tuneforge/files/a.jsonl", "../etc/passwd", "runs//x", "runs/./x", "", "a b"])
def test_keys_are_relative_paths(bad):
    storage = FilesystemStorage("/tmp/unused-root")
    with pytest.raises(StorageError, match="is not a storage key") as info:
        storage.exists(bad)
    assert "migration" in str(info.value)  # says where a host path in the database comes from


def test_run_directory_synced_and_fetched(storage, tmp_path):
    run = storage.workdir("runs/ftjob-1", tmp_path / "work")
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 100)
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    (run / "checkpoints" / "step-2" / "state.pt").write_bytes(b"s")
    first = storage.sync_dir(run, "runs/ftjob-1")
    assert storage.sync_dir(run, "runs/ftjob-1") == 0  # nothing changed since
    (run / "metrics.jsonl").write_text("{}\n")
    assert storage.sync_dir(run, "runs/ftjob-1") == (1 if first else 0)  # in place on a folder: nothing to copy
    assert storage.list("runs/ftjob-1") == [
        "runs/ftjob-1/adapter/adapter_model.safetensors",
        "runs/ftjob-1/checkpoints/step-2/state.pt",
        "runs/ftjob-1/metrics.jsonl",
    ]
    model = storage.local_dir("runs/ftjob-1", tmp_path / "cache", exclude=["checkpoints"])
    assert (model / "adapter" / "adapter_model.safetensors").read_bytes() == b"w" * 100
    if isinstance(storage, S3Storage):  # a copy without the checkpoints, made once
        assert not (model / "checkpoints").exists()
        storage.delete("runs/ftjob-1/adapter")
        assert storage.local_dir("runs/ftjob-1", tmp_path / "cache") == model
        resumed = tmp_path / "elsewhere"
        assert storage.fetch_dir("runs/ftjob-1", resumed) == 2
        assert (resumed / "checkpoints" / "step-2" / "state.pt").read_bytes() == b"s"
        assert storage.sync_dir(resumed, "runs/ftjob-1") == 0  # what was fetched is not uploaded back
    with pytest.raises(StorageError, match="no object 'runs/ftjob-9'"):
        storage.local_dir("runs/ftjob-9", tmp_path / "cache")


def test_filesystem_storage_reads_and_writes_in_place(tmp_path):
    storage = FilesystemStorage(tmp_path / "nfs")
    storage.put("files/p/f.jsonl", io.BytesIO(b"{}\n"))
    assert storage.local_file("files/p/f.jsonl", tmp_path / "cache") == tmp_path / "nfs" / "files" / "p" / "f.jsonl"
    assert storage.workdir("runs/j", tmp_path / "work") == tmp_path / "nfs" / "runs" / "j"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "work").exists()


def test_s3_copies_are_made_once(s3, tmp_path):
    url, options = s3
    storage = open_storage(f"{url}/{tmp_path.name}", options)
    storage.put("files/p/f.jsonl", io.BytesIO(b"{}\n"))
    local = storage.local_file("files/p/f.jsonl", tmp_path / "cache")
    assert local == tmp_path / "cache" / "files" / "p" / "f.jsonl" and local.read_bytes() == b"{}\n"
    stamp = local.stat().st_mtime_ns
    time.sleep(0.01)
    assert storage.local_file("files/p/f.jsonl", tmp_path / "cache").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file://relative/folder", "not an absolute folder"),
        ("gs://bucket", "scheme 'gs'"),
        ("/srv/shared", "scheme '(none)'"),
        ("s3://", "names no bucket"),
    ],
)
def test_bad_storage_urls_name_the_setting(url, why):
    with pytest.raises(ConfigError) as info:
        open_storage(url)
    assert why in str(info.value) and "TUNEFORGE_STORAGE_URL" in str(info.value)
    assert "s3://bucket/prefix" in str(info.value)  # the fix


def test_settings_default_to_the_home_folder(tmp_path, monkeypatch):
    from tuneforge.serve.settings import ServeSettings

    monkeypatch.delenv("TUNEFORGE_STORAGE_URL", raising=False)
    storage = ServeSettings(data_dir=tmp_path / "serve").storage()
    assert isinstance(storage, FilesystemStorage) and storage.root == (tmp_path / "serve").resolve()
    monkeypatch.setenv("TUNEFORGE_STORAGE_URL", "s3://team-bucket/tuneforge")
    monkeypatch.setenv("TUNEFORGE_STORAGE_OPTIONS", '{"endpoint_url": "http://127.0.0.1:9"}')
    settings = ServeSettings(data_dir=tmp_path / "serve")
    assert (settings.storage_url, settings.storage_options) == (
        "s3://team-bucket/tuneforge",
        {"endpoint_url": "http://127.0.0.1:9"},
    )


def test_migration_turns_host_paths_into_keys(tmp_path):
    """A database of the previous schema with absolute paths: upgraded, its rows hold keys that the
    default storage (the old data dir) resolves; a path outside the layout is left and warned about."""
    from alembic import command
    from alembic.config import Config

    from tuneforge.serve.db import MIGRATIONS, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    data = tmp_path / "serve"
    run = f"{data}/runs/proj-1/ftjob-1"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO projects VALUES ('proj-1', 'team', 0)"))
        for file_id, path in (("file-a", f"{data}/files/proj-1/file-a.jsonl"), ("file-b", "/elsewhere/b.jsonl")):
            conn.execute(
                text(
                    "INSERT INTO files (id, project_id, filename, purpose, bytes, path, status, created_at) "
                    "VALUES (:id, 'proj-1', 'a.jsonl', 'fine-tune', 1, :path, 'processed', 0)"
                ),
                {"id": file_id, "path": path},
            )
        conn.execute(
            text(
                "INSERT INTO jobs (id, project_id, model, training_file, hyperparameters, method, options, seed, "
                "status, resume, result_files, run_dir, attempts, created_at) VALUES ('ftjob-1', 'proj-1', 'demo', "
                "'file-a', '{}', '{}', '{}', 1, 'succeeded', 0, '[]', :run, 1, 0)"
            ),
            {"run": run},
        )
        conn.execute(
            text("INSERT INTO checkpoints VALUES ('ftckpt-1', 'ftjob-1', 3, '{}', :path, 0)"),
            {"path": f"{run}/checkpoints/step-3"},
        )
        conn.execute(
            text("INSERT INTO fine_tuned_models VALUES ('ft:demo::1', 'proj-1', 'ftjob-1', 'demo', 'adapter', :p, 0)"),
            {"p": f"{run}/adapter"},
        )
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT id, path FROM files")).all()) == {
            "file-a": "files/proj-1/file-a.jsonl",
            "file-b": "/elsewhere/b.jsonl",  # not in the layout: left, with a warning
        }
        assert conn.scalar(text("SELECT run_dir FROM jobs")) == "runs/proj-1/ftjob-1"
        assert conn.scalar(text("SELECT path FROM checkpoints")) == "runs/proj-1/ftjob-1/checkpoints/step-3"
        assert conn.scalar(text("SELECT path FROM fine_tuned_models")) == "runs/proj-1/ftjob-1/adapter"
    (data / "files" / "proj-1").mkdir(parents=True)
    (data / "files" / "proj-1" / "file-a.jsonl").write_text("{}\n")
    assert FilesystemStorage(data).local_file("files/proj-1/file-a.jsonl", tmp_path) == Path(
        f"{data}/files/proj-1/file-a.jsonl"
    )
    engine.dispose()
