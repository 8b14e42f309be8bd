"""Where uploaded files and run artifacts live, by key, so that several machines share them.

The database records storage keys (`files/<project>/<file id>.jsonl`, `runs/<job id>/adapter`), never a
host path: the API on one machine stores an upload, a worker on another reads it, trains and writes the
run directory back under `runs/<job id>/`, and the API fetches the model by key before loading it.

Two backends behind one small interface (`Storage`):

- `FilesystemStorage(root)`: a folder every machine mounts at the same place (NFS in production; the
  current home's `serve/` folder by default, for one machine). Files are read and run directories
  written in place, so nothing is copied.
- `S3Storage("s3://bucket/prefix")`: an S3-compatible bucket (AWS, MinIO, Ceph) through fsspec/s3fs.
  Readers get a local copy under the home's cache folder; a run directory is written locally and
  synced to the bucket at each checkpoint and at the end.

`open_storage(url, options)` picks the backend from `ServeSettings.storage_url`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import urlparse

from tuneforge.errors import ConfigError, Problem, TuneforgeError

KEY_PART = re.compile(r"^[A-Za-z0-9._:+=@,-]+$")
FETCHED = ".tuneforge-fetched"  # marks a complete local copy of a prefix in the cache
CHUNK = 1 << 20


class StorageError(TuneforgeError):
    """A key that is not in the storage, or a storage that cannot be reached."""


def check_key(key: str) -> str:
    """Keys are relative POSIX paths without '.', '..' or empty parts (never a host path)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or not KEY_PART.match(p) for p in parts):
        raise StorageError(
            f"{key!r} is not a storage key: keys are relative paths like 'files/<project>/<file id>.jsonl' "
            "(a host path in the database comes from before storage keys: run the service once so that its "
            "migration converts it, or move the file under the storage root and record its key)"
        )
    return key


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


@runtime_checkable
class Storage(Protocol):
    url: str

    def put(self, key: str, src: Path | BinaryIO) -> int:
        """Store a local file or a readable stream under `key` (replacing it); the bytes written."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The object for reading."""
        ...

    def get(self, key: str, dest: Path) -> Path:
        """Copy the object to the local path `dest`."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object, or every object under `key/` (a run directory); absent keys are no error."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """Every object key under `prefix/`, sorted."""
        ...

    def local_file(self, key: str, cache: Path) -> Path:
        """A local path to read the object from: itself on a shared filesystem, else a copy in `cache`."""
        ...

    def local_dir(self, prefix: str, cache: Path, exclude: Iterable[str] = ()) -> Path:
        """A local folder holding every object under `prefix/` (their names relative to it); parts whose first
        folder is in `exclude` are skipped. Copies are made once: objects under a prefix never change."""
        ...

    def workdir(self, prefix: str, scratch: Path) -> Path:
        """Where a process writes what belongs under `prefix/`: in place on a shared filesystem, else a local
        folder under `scratch` that `sync_dir` uploads."""
        ...

    def sync_dir(self, local: Path, prefix: str) -> int:
        """Upload the files of `local` that are new or changed since the last sync to `prefix/`; how many."""
        ...

    def fetch_dir(self, prefix: str, dest: Path) -> int:
        """Download every object under `prefix/` into `dest` (resuming a run elsewhere); how many."""
        ...


class FilesystemStorage:
    """A folder, shared by every machine at the same mount point (NFS): reads and run directories in place."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, src: Path | BinaryIO) -> int:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")  # readers never see a half-written object
        try:
            with tmp.open("wb") as out:
                if isinstance(src, Path):
                    with src.open("rb") as f:
                        shutil.copyfileobj(f, out, CHUNK)
                else:
                    shutil.copyfileobj(src, out, CHUNK)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest.stat().st_size

    def open(self, key: str) -> BinaryIO:
        try:
            return self.path(key).open("rb")
        except FileNotFoundError:
            raise _missing(self, key) from None

    def get(self, key: str, dest: Path) -> Path:
        source = self.local_file(key, dest.parent)
        if source.resolve() != Path(dest).resolve():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
        return dest

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(join(prefix, p.relative_to(base).as_posix()) for p in base.rglob("*") if p.is_file())

    def local_file(self, key: str, cache: Path) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise _missing(self, key)
        return path

    def local_dir(self, prefix: str, cache: Path, exclude: Iterable[str] = ()) -> Path:
        path = self.path(prefix)
        if not path.is_dir():
            raise _missing(self, prefix)
        return path

    def workdir(self, prefix: str, scratch: Path) -> Path:
        return self.path(prefix)

    def sync_dir(self, local: Path, prefix: str) -> int:
        dest = self.path(prefix)
        if Path(local).resolve() == dest:
            return 0  # written in place
        count = 0
        for path in sorted(Path(local).rglob("*")):
            target = dest / path.relative_to(local)
            if path.is_file() and not _same_file(path, target):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                count += 1
        return count

    def fetch_dir(self, prefix: str, dest: Path) -> int:
        source = self.path(prefix)
        if not source.is_dir() or source == Path(dest).resolve():
            return 0
        shutil.copytree(source, dest, dirs_exist_ok=True)
        return sum(1 for p in source.rglob("*") if p.is_file())


def _same_file(a: Path, b: Path) -> bool:
    if not b.exists():
        return False
    sa, sb = a.stat(), b.stat()
    return sa.st_size == sb.st_size and int(sa.st_mtime) <= int(sb.st_mtime)


class S3Storage:
    """An S3-compatible bucket through s3fs. `options` go to `s3fs.S3FileSystem` (endpoint_url, key, secret,
    client_kwargs...); credentials may also come from the usual AWS_* variables or ~/.aws."""

    def __init__(self, url: str, options: dict | None = None) -> None:
        import s3fs

        parsed = urlparse(url)
        if not parsed.netloc:
            raise _bad_url(url, "names no bucket")
        self.url = url.rstrip("/")
        self.base = join(parsed.netloc, parsed.path)
        opts = dict(options or {})
        opts.setdefault("use_listings_cache", False)  # other machines write too: never trust a cached listing
        self.fs = s3fs.S3FileSystem(**opts)
        self._synced: dict[str, tuple[int, int]] = {}  # local file -> (size, mtime_ns) at its last upload

    def _full(self, key: str) -> str:
        return join(self.base, check_key(key))

    def put(self, key: str, src: Path | BinaryIO) -> int:
        with self.fs.open(self._full(key), "wb") as out:
            if isinstance(src, Path):
                with src.open("rb") as f:
                    shutil.copyfileobj(f, out, CHUNK)
            else:
                shutil.copyfileobj(src, out, CHUNK)
        return self.fs.info(self._full(key))["size"]

    def open(self, key: str) -> BinaryIO:
        try:
            return self.fs.open(self._full(key), "rb")
        except FileNotFoundError:
            raise _missing(self, key) from None

    def get(self, key: str, dest: Path) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            self.fs.get_file(self._full(key), str(tmp))
            os.replace(tmp, dest)
        except FileNotFoundError:
            raise _missing(self, key) from None
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def delete(self, key: str) -> None:
        full = self._full(key)
        keys = [full, *(join(self.base, k) for k in self.list(key))]
        existing = [k for k in keys if k != full or self.fs.isfile(k)]
        if existing:
            self.fs.rm(existing)

    def exists(self, key: str) -> bool:
        full = self._full(key)
        return self.fs.isfile(full) or bool(self.list(key))

    def list(self, prefix: str) -> list[str]:
        full = self._full(prefix)
        try:
            found = self.fs.find(full)
        except FileNotFoundError:
            return []
        return sorted(f[len(self.base) + 1 :] for f in found if f.startswith(full + "/"))

    def local_file(self, key: str, cache: Path) -> Path:
        dest = Path(cache) / check_key(key)
        if not dest.is_file():  # an object under a key never changes (new uploads get new ids)
            self.get(key, dest)
        return dest

    def local_dir(self, prefix: str, cache: Path, exclude: Iterable[str] = ()) -> Path:
        dest = Path(cache) / check_key(prefix)
        marker = dest / FETCHED
        if marker.exists():
            return dest
        skip = set(exclude)
        keys = [k for k in self.list(prefix) if k[len(prefix) + 1 :].split("/")[0] not in skip]
        if not keys:
            raise _missing(self, prefix)
        for k in keys:
            self.get(k, dest / k[len(prefix) + 1 :])
        marker.write_text(json.dumps({"url": self.url, "prefix": prefix, "objects": len(keys)}))
        return dest

    def workdir(self, prefix: str, scratch: Path) -> Path:
        folder = Path(scratch) / check_key(prefix)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def sync_dir(self, local: Path, prefix: str) -> int:
        count = 0
        for path in sorted(Path(local).rglob("*")):
            if not path.is_file():
                continue
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            if self._synced.get(str(path)) == stamp:
                continue
            self.put(join(prefix, path.relative_to(local).as_posix()), path)
            self._synced[str(path)] = stamp
            count += 1
        return count

    def fetch_dir(self, prefix: str, dest: Path) -> int:
        keys = self.list(prefix)
        for k in keys:
            target = Path(dest) / k[len(prefix) + 1 :]
            self.get(k, target)
            st = target.stat()
            self._synced[str(target)] = (st.st_size, st.st_mtime_ns)  # already in the bucket
        return len(keys)


def _missing(storage, key: str) -> StorageError:
    return StorageError(f"storage {storage.url} has no object {key!r} (deleted, or written to another storage?)")


def _bad_url(url: str, why: str) -> ConfigError:
    return ConfigError(
        "invalid storage URL",
        [
            Problem(
                "TUNEFORGE_STORAGE_URL",
                f"{url!r} {why}",
                "use file:///shared/folder (a folder every machine mounts) or s3://bucket/prefix",
            )
        ],
    )


_open: dict[tuple[str, str, int], Storage] = {}


def open_storage(url: str, options: dict | None = None) -> Storage:
    """The storage at `url` (file:///abs/folder or s3://bucket/prefix); one instance per process and URL."""
    cache_key = (url, json.dumps(options or {}, sort_keys=True), os.getpid())  # s3fs clients do not survive fork
    if cache_key in _open:
        return _open[cache_key]
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise _bad_url(url, "is not an absolute folder (file:///abs/path, three slashes)")
        if options:
            raise _bad_url(url, f"takes no options, got {sorted(options)} (TUNEFORGE_STORAGE_OPTIONS is for s3://)")
        storage: Storage = FilesystemStorage(parsed.path)
    elif parsed.scheme == "s3":
        storage = S3Storage(url, options)
    else:
        raise _bad_url(url, f"has scheme {parsed.scheme or '(none)'!r}, not file or s3")
    _open[cache_key] = storage
    return storage
