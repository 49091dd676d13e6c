"""One small interface over ``file://`` and ``s3://`` artifact roots.

Every stage reads its inputs and writes its artifacts through an :class:`ArtifactStore`, so the same code
runs on a laptop (a local directory) and on a cluster (an S3 bucket). Keys are '/'-separated paths relative
to the store's root; a *prefix* is a key "directory" (``list("a")`` finds ``a/x`` but not ``ab``).

S3 credentials come only from boto3's default chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
web identity, instance roles, ...), never from arguments or URIs, so they never end up in specs, logs or
manifests. The endpoint may come from the ``endpoint_url`` argument or from ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, which boto3 reads itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import boto3.session
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError

# Files whose names start with this are the store's own bookkeeping (temp files of atomic writes, the S3
# cache index): never listed, uploaded or downloaded as artifacts.
BOOKKEEPING_PREFIX = ".egt-"
_INDEX_NAME = f"{BOOKKEEPING_PREFIX}index.json"

_NOT_FOUND = {"NoSuchKey", "NotFound", "404", "NoSuchBucket"}
_DENIED = {
    "AccessDenied",
    "Forbidden",
    "403",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}


def check_key(key: str) -> str:
    """Validate an object key; '..', '.', empty parts and absolute keys would escape or alias the root."""
    if not isinstance(key, str) or not key or key.startswith("/"):
        raise ValueError(f"invalid key {key!r}: keys are non-empty relative '/'-separated paths")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid key {key!r}: '.', '..' and empty path parts are not allowed")
    return key


def check_prefix(prefix: str) -> str:
    """Validate a prefix like a key, but allow '' (the whole store) and a trailing '/'."""
    prefix = prefix.rstrip("/") if isinstance(prefix, str) else prefix
    return prefix if prefix == "" else check_key(prefix)


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def _relative(prefix: str, key: str) -> str:
    return key[len(prefix) + 1 :] if prefix else key


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via a temp file in the same directory and os.replace, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{BOOKKEEPING_PREFIX}tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _local_files(local_dir: Path) -> list[Path]:
    """The artifact files under a local directory, bookkeeping files left out."""
    if not local_dir.is_dir():
        raise NotADirectoryError(f"{local_dir} is not a directory")
    return sorted(
        p for p in local_dir.rglob("*") if p.is_file() and not p.name.startswith(BOOKKEEPING_PREFIX)
    )


class ArtifactStore(ABC):
    """Keyed bytes under a root URI; subclasses implement the primitives, conveniences live here."""

    uri: str

    def uri_for(self, key: str) -> str:
        """The full URI of a key (or prefix), for error messages and for manifests people read."""
        key = check_prefix(key)
        return _join(self.uri, key) if key else self.uri

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError naming the full URI when it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write atomically: a reader sees the old object, or the whole new one."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write the object only if none exists at the key (atomically where the store can: a file
        link, S3's If-None-Match); False when one did."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at exactly this key (a prefix with objects under it is not one)."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under a prefix, recursive and sorted, relative to the store's root (ready for read_bytes)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under a prefix; deleting nothing is not an error."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing one is not an error."""

    @abstractmethod
    def upload_dir(self, local_dir: Path, prefix: str) -> None:
        """Copy a local directory tree to the keys under a prefix (large files stream, never whole in RAM)."""

    @abstractmethod
    def download_dir(self, prefix: str, local_dir: Path) -> Path:
        """Copy the keys under a prefix into a local directory and return it."""

    @abstractmethod
    def local_path(self, prefix: str) -> Path:
        """A local directory holding the prefix's files, for libraries that want paths (model loaders).

        Treat it as read-only: for S3 it is a shared cache, not a scratch directory.
        """

    @abstractmethod
    def local_file(self, key: str, scratch: Path) -> Path:
        """A local path of one object, for readers that stream a file (Parquet, large JSON).

        A file store gives the file itself; S3 downloads it into ``scratch`` (never whole in RAM).
        """

    @abstractmethod
    def digest(self, key: str) -> str:
        """A string that changes when the object's content does, without reading it into memory.

        Files: the SHA-256 of their content, streamed. S3: the ETag and size the server reports, so
        the operator can tell a changed dataset without downloading it.
        """

    @abstractmethod
    def tree_digest(self, prefix: str = "") -> str:
        """A string that changes when any object under the prefix is added, removed or replaced,
        without reading them: file sizes and modification times; S3 sizes and ETags (one listing)."""

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, obj: Any) -> None:
        """Indented, key order kept: these files (configs, reports) are meant to be read by people."""
        self.write_text(key, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")

    def _missing(self, prefix: str) -> FileNotFoundError:
        return FileNotFoundError(f"nothing stored under {self.uri_for(prefix)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class FileStore(ArtifactStore):
    """A local (or mounted, e.g. a PVC) directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        key = check_prefix(key)
        return self.root / key if key else self.root

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(check_key(key)).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise FileNotFoundError(f"no such artifact: {self.uri_for(key)}") from e

    def write_bytes(self, key: str, data: bytes) -> None:
        _atomic_write(self._path(check_key(key)), lambda f: f.write(data))

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(check_key(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{BOOKKEEPING_PREFIX}tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.link(tmp, path)  # fails if the path exists: two creators cannot both succeed
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(check_key(key)).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in _local_files(base))

    def delete_prefix(self, prefix: str) -> None:
        base = self._path(prefix)
        if base.is_dir():
            shutil.rmtree(base)

    def delete(self, key: str) -> None:
        self._path(check_key(key)).unlink(missing_ok=True)

    def upload_dir(self, local_dir: Path, prefix: str) -> None:
        local_dir, base = Path(local_dir).resolve(), self._path(prefix)
        if local_dir == base:  # e.g. a stage wrote straight into local_path(prefix)
            return
        for src in _local_files(local_dir):
            with src.open("rb") as fsrc:
                _atomic_write(base / src.relative_to(local_dir), lambda f, s=fsrc: shutil.copyfileobj(s, f))

    def download_dir(self, prefix: str, local_dir: Path) -> Path:
        base, local_dir = self.local_path(prefix), Path(local_dir)
        for src in _local_files(base):
            with src.open("rb") as fsrc:
                _atomic_write(local_dir / src.relative_to(base), lambda f, s=fsrc: shutil.copyfileobj(s, f))
        return local_dir

    def local_path(self, prefix: str) -> Path:
        if not self.list(prefix):
            raise self._missing(prefix)
        return self._path(prefix)

    def local_file(self, key: str, scratch: Path) -> Path:
        path = self._path(check_key(key))
        if not path.is_file():
            raise FileNotFoundError(f"no such artifact: {self.uri_for(key)}")
        return path

    def tree_digest(self, prefix: str = "") -> str:
        base = self._path(prefix)
        files = _local_files(base) if base.is_dir() else []
        listing = "\n".join(
            f"{path.relative_to(base).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}"
            for path in files
            for stat in [path.stat()]
        )
        return "tree:" + hashlib.sha256(listing.encode()).hexdigest()

    def digest(self, key: str) -> str:
        sha = hashlib.sha256()
        with self.local_file(key, Path()).open("rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
        return f"sha256:{sha.hexdigest()}"


_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()
_ENVIRONMENT = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
)


def _s3_client(endpoint_url: str | None, region: str | None) -> Any:
    """An S3 client for this endpoint and region and the credentials now in the environment.

    Made once per such combination and shared: a client takes ~0.1 s and several MiB to make and is
    thread-safe, and the operator asks the store about every stage of every run. Each is made from a
    session of its own, so credentials are those of the environment at the time (the default
    session caches the first ones it found); a change of environment gives a new client.
    """
    environment = hashlib.sha256("\0".join(os.environ.get(name, "") for name in _ENVIRONMENT).encode())
    key = (os.getpid(), endpoint_url, region, environment.hexdigest())  # a forked process makes its own
    with _clients_lock:
        if key not in _clients:
            custom_endpoint = (
                endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            )
            config = Config(
                # S3-compatible servers in a cluster are addressed by service name: no bucket subdomains.
                s3={"addressing_style": "path"} if custom_endpoint else None,
                retries={"mode": "standard", "max_attempts": 5},
                connect_timeout=10,
                read_timeout=120,
            )
            session = boto3.session.Session()
            _clients[key] = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        return _clients[key]


class S3Store(ArtifactStore):
    """An S3 (or S3-compatible: SeaweedFS, MinIO, Ceph) bucket, optionally under a key prefix."""

    def __init__(
        self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = check_prefix(prefix)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._s3 = _s3_client(endpoint_url, region)

    def _key(self, key: str) -> str:
        """The bucket-level object key of a store key (or prefix)."""
        return _join(self.prefix, check_prefix(key))

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Turn S3 error codes into the exceptions a filesystem would raise, naming the URI."""
        uri = self.uri_for(key)
        try:
            yield
        except NoCredentialsError as e:
            raise PermissionError(
                f"no S3 credentials to access {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or another source of boto3's default credential chain)"
            ) from e
        except ClientError as e:
            error = e.response.get("Error", {})
            code, message = str(error.get("Code", "")), error.get("Message", "")
            if code in _NOT_FOUND:
                raise FileNotFoundError(f"no such artifact: {uri} ({code})") from e
            if code in _DENIED:
                raise PermissionError(
                    f"S3 refused access to {uri}: {code}: {message} "
                    "(check the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
                ) from e
            raise

    def _objects(self, prefix: str) -> dict[str, tuple[int, str]]:
        """Store key → (size, ETag) of every object under a prefix; the pair tells whether it changed."""
        prefix = check_prefix(prefix)
        full = self._key(prefix)
        objects = {}
        with self._errors(prefix):
            for page in self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{full}/" if full else ""
            ):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):  # "directory" markers some tools create
                        objects[_relative(self.prefix, obj["Key"])] = (obj["Size"], obj["ETag"])
        return objects

    def read_bytes(self, key: str) -> bytes:
        with self._errors(key):
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(check_key(key)))["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self._s3.put_object(Bucket=self.bucket, Key=self._key(check_key(key)), Body=data)

    def create(self, key: str, data: bytes) -> bool:
        try:
            with self._errors(key):
                self._s3.put_object(
                    Bucket=self.bucket, Key=self._key(check_key(key)), Body=data, IfNoneMatch="*"
                )
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return False
            raise
        return True

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self._s3.head_object(Bucket=self.bucket, Key=self._key(check_key(key)))
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self._objects(prefix))

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(check_key(key)))

    def delete_prefix(self, prefix: str) -> None:
        keys = [self._key(k) for k in self.list(prefix)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            with self._errors(prefix):
                response = self._s3.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if response.get("Errors"):
                raise OSError(f"could not delete under {self.uri_for(prefix)}: {response['Errors'][:3]}")

    def upload_dir(self, local_dir: Path, prefix: str) -> None:
        local_dir, prefix = Path(local_dir), check_prefix(prefix)
        for src in _local_files(local_dir):
            key = _join(prefix, src.relative_to(local_dir).as_posix())
            with self._errors(key):
                self._s3.upload_file(str(src), self.bucket, self._key(key))

    def _download(self, key: str, dest: Path) -> None:
        """download_file writes to a temp name and renames, so dest is never partial."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(key):
            self._s3.download_file(self.bucket, self._key(key), str(dest))

    def local_file(self, key: str, scratch: Path) -> Path:
        dest = Path(scratch) / check_key(key)
        self._download(key, dest)
        return dest

    def tree_digest(self, prefix: str = "") -> str:
        listing = "\n".join(
            f"{key}\t{size}\t{etag}" for key, (size, etag) in sorted(self._objects(prefix).items())
        )
        return "tree:" + hashlib.sha256(listing.encode()).hexdigest()

    def digest(self, key: str) -> str:
        with self._errors(key):
            head = self._s3.head_object(Bucket=self.bucket, Key=self._key(check_key(key)))
        etag = head["ETag"].strip('"')
        return f"s3-etag:{etag}:{head['ContentLength']}"

    def download_dir(self, prefix: str, local_dir: Path) -> Path:
        prefix, local_dir = check_prefix(prefix), Path(local_dir)
        keys = self.list(prefix)
        if not keys:
            raise self._missing(prefix)
        for key in keys:
            self._download(key, local_dir / _relative(prefix, key))
        return local_dir

    def _cache_dir(self, prefix: str = "") -> Path:
        """Where local_path mirrors a prefix: ``$EGT_CACHE_DIR/s3/<bucket>/<key>`` (default ~/.cache/egt)."""
        root = Path(os.environ.get("EGT_CACHE_DIR") or Path.home() / ".cache" / "egt")
        full = self._key(prefix)
        return root / "s3" / self.bucket / full if full else root / "s3" / self.bucket

    def local_path(self, prefix: str) -> Path:
        """Mirror the prefix into the cache, fetching only objects whose (size, ETag) changed.

        The index of what was fetched lives in the mirror as a bookkeeping file; files deleted remotely
        since the last sync are deleted locally.
        """
        prefix = check_prefix(prefix)
        objects = self._objects(prefix)
        if not objects:
            raise self._missing(prefix)
        dest = self._cache_dir(prefix)
        index_path = dest / _INDEX_NAME
        old = json.loads(index_path.read_text()) if index_path.is_file() else {}
        new = {}
        for key, (size, etag) in objects.items():
            rel = _relative(prefix, key)
            target = dest / rel
            if old.get(rel) != [size, etag] or not target.is_file() or target.stat().st_size != size:
                self._download(key, target)
            new[rel] = [size, etag]
        for rel in old.keys() - new.keys():
            (dest / rel).unlink(missing_ok=True)
        data = json.dumps(new, sort_keys=True).encode()
        _atomic_write(index_path, lambda f: f.write(data))
        return dest


def open_store(uri: str, endpoint_url: str | None = None) -> ArtifactStore:
    """A store for ``file:///abs/dir``, a plain (relative or absolute) path, or ``s3://bucket/prefix``."""
    if "://" not in uri:
        return FileStore(Path(uri))
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI {uri!r} names host {parts.netloc!r}; use file:///absolute/path")
        return FileStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if "@" in parts.netloc:  # do not echo the URI: it may hold a secret
            raise ValueError(
                "s3 URIs must not carry credentials; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY instead"
            )
        if not parts.netloc:
            raise ValueError(f"s3 URI {uri!r} has no bucket; expected s3://bucket/prefix")
        return S3Store(parts.netloc, parts.path.strip("/"), endpoint_url=endpoint_url)
    raise ValueError(f"unsupported store URI {uri!r}: expected file://, s3:// or a local path")


def split_uri(uri: str, endpoint_url: str | None = None) -> tuple[ArtifactStore, str]:
    """A store rooted at the URI's parent and the file's key in it."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name or (uri.startswith("s3://") and parent == "s3:/"):
        raise ValueError(f"{uri!r} does not name a file")
    return open_store(parent or ".", endpoint_url=endpoint_url), name


def local_folder(uri: str, endpoint_url: str | None = None) -> Path:
    """A local directory with the files under ``uri`` (a path, file:// or s3:// URI; S3 is mirrored).

    For code that may run on another machine than the one that named the folder (Ray actors).
    """
    return open_store(uri, endpoint_url).local_path("")
