"""A local libvirt daemon for the tests that drive real hosts.

No skip: if libvirtd cannot be installed or started, those tests fail loudly, because a silently
skipped hypervisor test is how a broken compute path reaches a release.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_URI = "qemu:///system"


@functools.cache
def ensure_libvirt_daemon() -> str:
    """Run scripts/lib/libvirt.sh's ``ensure_libvirt`` once per process; return the system URI."""
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail; source scripts/lib/libvirt.sh && ensure_libvirt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"libvirt could not be started (ensure_libvirt exited {result.returncode}):\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return SYSTEM_URI


@pytest.fixture(scope="session")
def libvirt_daemon() -> str:
    """The URI of a local libvirtd that answers (``qemu:///system``)."""
    return ensure_libvirt_daemon()
