"""cloud-init NoCloud seeds: a small ISO 9660 image labelled ``cidata`` with ``meta-data`` and
``user-data``, written in-process with pycdlib (no external tool, no mounting, no network).

cloud-init finds the seed by its volume label and reads the files by their Rock Ridge or Joliet
names; the ISO 9660 names (8.3) are only what plain readers see.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pycdlib

VOLUME_LABEL = "cidata"
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_FILES = (("meta-data", "/METADATA.;1"), ("user-data", "/USERDATA.;1"))


def make_nocloud_seed(
    path: Path,
    instance_id: str,
    hostname: str,
    user_data: str | bytes,
    public_keys: Sequence[str] = (),
) -> Path:
    """Write the seed to ``path`` (atomically: a reader never sees half an image).

    ``public_keys`` go into meta-data's ``public-keys`` list (as cloud-init's NoCloud reads them),
    so they reach the guest whatever the user data is (a script or a cloud-config)."""
    if not instance_id.isprintable() or not instance_id.strip() or ":" in instance_id:
        raise ValueError(f"instance_id {instance_id!r} must be printable text without ':'")
    if not _HOSTNAME_RE.fullmatch(hostname):
        raise ValueError(f"hostname {hostname!r} is not a valid host name")
    contents = {
        "meta-data": meta_data(instance_id, hostname, public_keys).encode(),
        "user-data": user_data.encode() if isinstance(user_data, str) else user_data,
    }
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL)
    try:
        for name, iso_path in _FILES:
            data = contents[name]
            iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=name, joliet_path=f"/{name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            with partial.open("wb") as out:
                iso.write_fp(out)
            partial.replace(path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    finally:
        iso.close()
    return path


def meta_data(instance_id: str, hostname: str, public_keys: Sequence[str]) -> str:
    """The NoCloud meta-data document. Keys are written as JSON strings (valid YAML), so a key's
    comment can never break out of its list item."""
    for key in public_keys:
        if not key.isprintable():
            raise ValueError("public keys must be single-line printable text")
    lines = [f"instance-id: {instance_id}", f"local-hostname: {hostname}"]
    if public_keys:
        lines += ["public-keys:", *(f"  - {json.dumps(key)}" for key in public_keys)]
    return "\n".join(lines) + "\n"
