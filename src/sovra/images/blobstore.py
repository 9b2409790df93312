"""Content-addressed storage of image bytes.

A blob is named by the SHA-256 of its content. Writers stream into a temporary file in the same
directory tree and the blob appears under its name only on ``commit``, atomically, after its
digest was verified; an aborted or crashed write leaves only a temporary file that nobody reads
(and ``sweep_temporary`` removes). The interface is small so an S3-compatible store can implement
it: ``writer``, ``open``, ``size``, ``exists``, ``delete``, and ``local_path`` (a download cache for
a remote store).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobNotFound(Exception):
    pass


class BlobWriter(Protocol):
    def write(self, chunk: bytes) -> None: ...
    def commit(self, sha256: str) -> str: ...
    def abort(self) -> None: ...


class BlobStore(Protocol):
    def writer(self) -> BlobWriter: ...
    def open(self, digest: str) -> BinaryIO: ...
    def size(self, digest: str) -> int: ...
    def exists(self, digest: str) -> bool: ...
    def delete(self, digest: str) -> None: ...
    def local_path(self, digest: str) -> Path: ...
    def adopt(self, path: Path) -> str: ...
    def lock(self, digest: str) -> AbstractContextManager[None]: ...


def check_digest(digest: str) -> str:
    if not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
    return digest


class _LocalWriter:
    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.temporary_dir, prefix="incoming-")
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._done = False

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def commit(self, sha256: str) -> str:
        """Make the bytes visible as blob ``sha256`` (the caller computed it while writing)."""
        target = self._store.path_of(check_digest(sha256))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self._path, 0o640)
        os.replace(self._path, target)  # same content if it existed: replacing is harmless
        self._done = True
        return sha256

    def abort(self) -> None:
        if self._done:
            return
        self._file.close()
        self._path.unlink(missing_ok=True)
        self._done = True


class LocalBlobStore:
    """Blobs in ``root/sha256/<2 hex>/<64 hex>``; writes in progress in ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temporary_dir = root / "tmp"
        self.temporary_dir.mkdir(parents=True, exist_ok=True)
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    def path_of(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "sha256" / digest[:2] / digest

    def writer(self) -> BlobWriter:
        return _LocalWriter(self)

    def open(self, digest: str) -> BinaryIO:
        try:
            return self.path_of(digest).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    def size(self, digest: str) -> int:
        try:
            return self.path_of(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    def exists(self, digest: str) -> bool:
        return self.path_of(digest).exists()

    def delete(self, digest: str) -> None:
        self.path_of(digest).unlink(missing_ok=True)

    def local_path(self, digest: str) -> Path:
        path = self.path_of(digest)
        if not path.exists():
            raise BlobNotFound(digest)
        return path

    def adopt(self, path: Path) -> str:
        """Move a file Sovra produced itself (a conversion output) into the store; returns its digest."""
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
        sha256 = digest.hexdigest()
        target = self.path_of(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o640)
        os.replace(path, target)
        return sha256

    @contextmanager
    def lock(self, digest: str) -> Iterator[None]:
        """Exclude the collector while a blob is being stored and recorded (and vice versa).

        256 lock files, striped by the digest's first byte, shared by every process on the host.
        """
        path = self.root / "locks" / f"{check_digest(digest)[:2]}.lock"
        path.parent.mkdir(exist_ok=True)
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def sweep_temporary(self, older_than_seconds: float) -> int:
        """Remove leftovers of writes that never finished (a crash mid-upload). Only files untouched
        for ``older_than_seconds`` go: a slow upload in progress keeps writing to its file."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for leftover in self.temporary_dir.glob("*"):
            with contextlib.suppress(FileNotFoundError):
                if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    removed += 1
        return removed
