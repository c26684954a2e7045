"""Where an analytics export lives: a local folder, or ``s3://bucket/prefix`` of S3 or
any S3-API server.

Both hold the same layout (:mod:`inferstream.analytics.export`), addressed by paths
relative to the export's root. A folder's files are written to a temporary name, synced
and renamed, so a crash leaves each whole or absent; an S3 object appears whole when
its upload completes, so it is written in place. S3 is reached through pyarrow's
``S3FileSystem`` (bundled in the pyarrow wheel: nothing is downloaded at run time),
with the endpoint, region and credentials boto3 resolves, as the blob store does
(:mod:`inferstream.blobs_s3`): ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``),
``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from inferstream.errors import ConfigError, InferstreamError, MissingExtraError

#: The export's state file (:class:`inferstream.analytics.export.ExportState`).
STATE_FILE = "export-state.json"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: What pyarrow's message holds when the server refused the credentials.
_REFUSED = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "INVALID_ACCESS_KEY_ID",
            "SignatureDoesNotMatch", "SIGNATURE_DOES_NOT_MATCH", "ExpiredToken")  # fmt: skip


class PlaceError(InferstreamError):
    """An export's folder or bucket cannot be read or written; the message says what to do."""


class ExportPlace(Protocol):
    #: The export as the user named it (a folder, or ``s3://bucket/prefix``).
    url: str

    def read(self, path: str) -> bytes | None:
        """The file at ``path``, or None if there is none."""

    def write(self, path: str, data: bytes) -> None:
        """Write a small file (the export's state) whole."""

    def write_parquet(self, path: str, table: Any) -> None:
        """Write a pyarrow table as a Parquet file, whole or not at all."""

    def files(self, folder: str) -> list[str]:
        """Every file under ``folder`` (any depth), as paths relative to the root."""

    def remove(self, path: str) -> None: ...


def open_place(where: str | Path) -> ExportPlace:
    """The export ``where`` names: ``s3://bucket/prefix``, else a local folder."""
    if isinstance(where, str) and where.startswith("s3://"):
        return S3Place.from_url(where)
    return FolderPlace(Path(where))


class FolderPlace:
    """An export in a local folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = str(folder)

    def read(self, path: str) -> bytes | None:
        try:
            return (self.folder / path).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, path: str, data: bytes) -> None:
        target = self.folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(data)
        _fsync(temporary)
        os.replace(temporary, target)
        _fsync(target.parent)

    def write_parquet(self, path: str, table: Any) -> None:
        target = self.folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        pyarrow_module().parquet.write_table(table, temporary, compression="zstd")
        _fsync(temporary)
        os.replace(temporary, target)

    def files(self, folder: str) -> list[str]:
        found = (p for p in (self.folder / folder).glob("**/*") if p.is_file())
        return sorted(p.relative_to(self.folder).as_posix() for p in found)

    def remove(self, path: str) -> None:
        (self.folder / path).unlink(missing_ok=True)


class S3Place:
    """An export under a prefix of an S3 bucket, through pyarrow's S3 file system."""

    def __init__(self, bucket: str, prefix: str, filesystem: Any) -> None:
        self.bucket, self.fs = bucket, filesystem
        root = prefix.strip("/")
        self.url = f"s3://{bucket}/{root}" if root else f"s3://{bucket}"
        self.root = f"{bucket}/{root}" if root else bucket

    @classmethod
    def from_url(cls, url: str) -> S3Place:
        parts = urlsplit(url)
        if not _BUCKET.fullmatch(parts.netloc) or parts.query or parts.fragment:
            raise ConfigError(
                f"export URL {url!r} names no S3 bucket; use s3://bucket/prefix (endpoint and "
                "credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE...)"
            )
        return cls(parts.netloc, parts.path, s3_filesystem(url))

    def read(self, path: str) -> bytes | None:
        try:
            with self._boundary("read", path), self.fs.open_input_stream(self._at(path)) as f:
                data: bytes = f.read()
        except FileNotFoundError:
            return None
        return data

    def write(self, path: str, data: bytes) -> None:
        with self._boundary("write", path), self.fs.open_output_stream(self._at(path)) as f:
            f.write(data)

    def write_parquet(self, path: str, table: Any) -> None:
        with self._boundary("write", path):
            pyarrow_module().parquet.write_table(
                table, self._at(path), filesystem=self.fs, compression="zstd"
            )

    def files(self, folder: str) -> list[str]:
        fs = importlib.import_module("pyarrow.fs")
        selector = fs.FileSelector(self._at(folder), recursive=True, allow_not_found=True)
        with self._boundary("list", folder):
            infos = self.fs.get_file_info(selector)
        start = len(self.root) + 1
        return sorted(i.path[start:] for i in infos if i.type == fs.FileType.File)

    def remove(self, path: str) -> None:
        with self._boundary("delete", path):
            self.fs.delete_file(self._at(path))

    def check_export(self) -> None:
        """Refuse a URL that holds no export (no state file): a missing bucket, a typo
        in the prefix, or an export never run, rather than answer with no rows."""
        if self.read(STATE_FILE) is not None:
            return
        fs = importlib.import_module("pyarrow.fs")
        with self._boundary("look up", ""):
            bucket = self.fs.get_file_info(self.bucket)
        if bucket.type == fs.FileType.NotFound:
            raise PlaceError(
                f"cannot read {self.url}: bucket {self.bucket!r} does not exist; fix the "
                "s3:// URL (or AWS_ENDPOINT_URL, if it names another server)"
            )
        raise PlaceError(
            f"{self.url} holds no export (no {STATE_FILE}); run 'inferstream analytics "
            f"export PIPELINE_FILE --to {self.url}' first, or fix the URL"
        )

    def dataset_path(self, path: str) -> str:
        """``path`` as the file system names it (``bucket/prefix/path``)."""
        return self._at(path)

    def _at(self, path: str) -> str:
        return f"{self.root}/{path}".rstrip("/")

    @contextmanager
    def _boundary(self, what: str, path: str) -> Iterator[None]:
        """pyarrow's S3 errors (OSError with the AWS error's name) as ours, naming the
        bucket or the setting to fix; a missing file stays FileNotFoundError."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise PlaceError(
                _s3_advice(f"cannot {what} {self.url}/{path}", self.bucket, exc)
            ) from exc


def _s3_advice(failed: str, bucket: str, exc: OSError) -> str:
    text = str(exc)
    if "NO_SUCH_BUCKET" in text or "bucket does not exist" in text:
        return f"{failed}: bucket {bucket!r} does not exist; create it, or fix the s3:// URL"
    if "NETWORK_CONNECTION" in text or "Could not connect" in text or "Could not resolve" in text:
        return (
            f"{failed}: the S3 server is unreachable ({text}); check AWS_ENDPOINT_URL (and "
            "that the server runs)"
        )
    if any(code in text for code in _REFUSED):
        return (
            f"{failed}: the S3 server refused ({text}); check the credentials this process "
            "finds (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance "
            f"role) and that they may read, write, list and delete in bucket {bucket!r}"
        )
    return f"{failed}: {text}; check AWS_ENDPOINT_URL, AWS_REGION and the bucket {bucket!r}"


def s3_filesystem(url: str) -> Any:
    """pyarrow's S3 file system with the endpoint, region and credentials boto3 finds."""
    try:
        boto3 = importlib.import_module("boto3")
    except ImportError as exc:
        raise MissingExtraError("boto3", "s3") from exc
    fs = importlib.import_module("pyarrow.fs")
    session = boto3.session.Session()
    try:
        client = session.client("s3")
    except Exception as exc:  # botocore's configuration errors share no base with ValueError
        raise ConfigError(
            f"cannot reach {url}: {exc}; check AWS_ENDPOINT_URL, AWS_REGION and AWS_PROFILE"
        ) from exc
    endpoint, region = client.meta.endpoint_url, client.meta.region_name
    client.close()
    credentials = session.get_credentials()
    if credentials is None:
        raise ConfigError(
            f"no AWS credentials to reach {url}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run with an instance role"
        )
    keys = credentials.get_frozen_credentials()
    options: dict[str, Any] = {}
    parts = urlsplit(endpoint)
    if not parts.hostname or not parts.hostname.endswith(".amazonaws.com"):
        options = {"endpoint_override": parts.netloc, "scheme": parts.scheme or "https"}
    return fs.S3FileSystem(
        access_key=keys.access_key, secret_key=keys.secret_key, session_token=keys.token,
        region=region if region and region != "aws-global" else "us-east-1", **options,
    )  # fmt: skip


def pyarrow_module() -> Any:
    """pyarrow, imported on first use (pyarrow ships no type information: Any)."""
    try:
        pyarrow = importlib.import_module("pyarrow")
        importlib.import_module("pyarrow.parquet")  # loads the submodule onto pyarrow
    except ImportError as exc:
        raise MissingExtraError("pyarrow", "analytics") from exc
    return pyarrow


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
