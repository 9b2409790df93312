"""Read untrusted image bytes exactly once: hash, inspect and store them in one pass.

Every chunk goes to the SHA-256 (and SHA-512 when configured) hashers, to the streaming format
inspector and to a blob writer. Only at the end, when the inspector's verdict, the declared format
and the declared checksum all agree, is the blob committed; any refusal or interruption aborts the
writer, so nothing half-written or unverified is ever stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from dataclasses import dataclass

from sovra.images.blobstore import BlobStore, BlobWriter
from sovra.images.inspection import ImageRejected, InspectionPolicy, StreamInspector


@dataclass(frozen=True)
class IngestResult:
    sha256: str
    sha512: str | None
    size: int
    format: str
    virtual_size: int


class _BackgroundWriter:
    """Writes chunks in a thread of its own: hashing and writing both release the GIL, so they
    overlap instead of adding up (bench/image_ingest.py measures the result)."""

    def __init__(self, writer: BlobWriter) -> None:
        self._writer = writer
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="blob-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write(chunk)
                except BaseException as exc:
                    self._error = exc

    def write(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._chunks.put(chunk)

    def drain(self) -> None:
        """Wait until every chunk is written; raise what writing raised."""
        if self._thread.is_alive():
            self._chunks.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


class Ingest:
    """One upload or download in progress. Call ``feed`` per chunk, then ``finish`` or ``abort``."""

    def __init__(
        self,
        store: BlobStore,
        policy: InspectionPolicy,
        *,
        declared_format: str | None = None,
        declared_sha256: str | None = None,
        with_sha512: bool = False,
        max_bytes: int | None = None,
    ) -> None:
        self._writer: BlobWriter = store.writer()
        self._background = _BackgroundWriter(self._writer)
        self._inspector = StreamInspector(declared_format, policy)
        self._sha256 = hashlib.sha256()
        self._sha512 = hashlib.sha512() if with_sha512 else None
        self._declared_sha256 = declared_sha256
        self._max_bytes = max_bytes
        self.size = 0
        self._result: IngestResult | None = None

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        if self._max_bytes is not None and self.size > self._max_bytes:
            self.abort()
            raise ImageRejected(
                "TOO_LARGE", f"the image is larger than the limit of {self._max_bytes} bytes", check=None
            )
        try:
            self._inspector.feed(chunk)
        except ImageRejected:
            self.abort()
            raise
        self._sha256.update(chunk)
        if self._sha512 is not None:
            self._sha512.update(chunk)
        self._background.write(chunk)

    def finish(self) -> IngestResult:
        """Check everything; raises ``ImageRejected`` (and stores nothing). Then ``commit``."""
        try:
            self._background.drain()
            verdict = self._inspector.finish()
            digest = self._sha256.hexdigest()
            if self._declared_sha256 is not None and digest != self._declared_sha256:
                raise ImageRejected(
                    "CHECKSUM_MISMATCH",
                    f"the bytes hash to sha256 {digest}, not the declared {self._declared_sha256}: "
                    "the download is corrupt or the declared checksum is wrong",
                    check=None,
                )
        except ImageRejected:
            self.abort()
            raise
        self._result = IngestResult(
            sha256=digest,
            sha512=self._sha512.hexdigest() if self._sha512 is not None else None,
            size=self.size,
            format=verdict.format,
            virtual_size=verdict.virtual_size,
        )
        return self._result

    def commit(self) -> None:
        """Make the verified bytes visible in the store (hold the store's lock for the digest)."""
        assert self._result is not None, "finish() first"
        self._writer.commit(self._result.sha256)

    def abort(self) -> None:
        with contextlib.suppress(BaseException):
            self._background.drain()
        self._writer.abort()
