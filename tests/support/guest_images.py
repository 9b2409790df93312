"""Session fixtures with real bootable guest images, built once and cached between sessions.

Building the tiny guest costs a few seconds (plus one kernel download the very first time), so
the image is kept in ``${SOVRA_TEST_CACHE:-/var/cache/sovra-test}`` and rebuilt only when the
builder's source changes (its hash is in the file name) or the cached file no longer matches
the SHA-256 recorded at build time. Cached images are read-only: tests boot them through
throw-away overlays and must never write them.

Use from a test module with ``tiny_image = guest_images.tiny_image`` (etc.), or list this module
in the root conftest's ``pytest_plugins``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sovra.images import build
from sovra.images.build import BROKEN_INIT, BuildResult, build_image

CACHE_ENV = "SOVRA_TEST_CACHE"
DEFAULT_CACHE_DIR = Path("/var/cache/sovra-test")


def cache_root() -> Path:
    """The cache root; a per-user temporary one if the default is not writable (not root)."""
    configured = os.environ.get(CACHE_ENV)
    root = Path(configured) if configured else DEFAULT_CACHE_DIR
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except PermissionError:
        pass
    if configured:
        raise RuntimeError(f"{CACHE_ENV}={configured} is not a writable directory")
    fallback = Path(tempfile.gettempdir()) / f"sovra-test-{os.getuid()}"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def builder_hash() -> str:
    """Changes whenever the builder (including the guest's /init it generates) changes."""
    return hashlib.sha256(Path(build.__file__).read_bytes()).hexdigest()[:16]


def cached_build(variant: str, *, init_script: str | None = None) -> BuildResult:
    """The cached build of ``variant``, (re)built when missing, stale or damaged."""
    root = cache_root()
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    stem = f"tiny-{variant}-{builder_hash()}"
    image, sidecar = images / f"{stem}.qcow2", images / f"{stem}.json"
    with _locked(images / ".lock"):
        result = _load(sidecar, image)
        if result is None:
            image.unlink(missing_ok=True)
            result = build_image(
                image, work_dir=root / "work", cache_dir=root / "kernel", init_script=init_script
            )
            image.chmod(0o444)
            sidecar.write_text(json.dumps(_as_json(result), indent=2))
            _remove_older(images, variant, keep=stem)
    return result


def _load(sidecar: Path, image: Path) -> BuildResult | None:
    """The recorded result, if the image is still exactly what was built."""
    if not (sidecar.is_file() and image.is_file()):
        return None
    recorded = json.loads(sidecar.read_text())
    if hashlib.sha256(image.read_bytes()).hexdigest() != recorded["sha256"]:
        return None
    return BuildResult(**{**recorded, "path": image})


def _as_json(result: BuildResult) -> dict[str, object]:
    return {
        "path": str(result.path),
        "format": result.format,
        "size": result.size,
        "virtual_size": result.virtual_size,
        "kernel_version": result.kernel_version,
        "sha256": result.sha256,
        "metadata": result.metadata,
    }


def _remove_older(images: Path, variant: str, *, keep: str) -> None:
    for old in images.glob(f"tiny-{variant}-*"):
        if old.stem != keep:
            with contextlib.suppress(OSError):
                old.unlink()


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Parallel sessions (or xdist workers) build each image once, not once each."""
    with lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_image_build() -> BuildResult:
    """The tiny guest's build result (path, sizes, kernel version, suggested metadata)."""
    return cached_build("good")


@pytest.fixture(scope="session")
def tiny_image(tiny_image_build: BuildResult) -> Path:
    """A qcow2 that boots to ``sovra login:`` in a few seconds under TCG and applies NoCloud seeds."""
    return tiny_image_build.path


@pytest.fixture(scope="session")
def broken_image() -> Path:
    """The same disk with an /init that exits at once: the kernel panics, no marker is printed."""
    return cached_build("broken", init_script=BROKEN_INIT).path
