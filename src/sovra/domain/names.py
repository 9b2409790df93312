"""Resource names: short, human, safe in URLs and libvirt domain metadata."""

from __future__ import annotations

import re

from sovra.domain.errors import InvalidArgument

_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


def validate_name(name: str, field: str = "name") -> str:
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"name {name!r} is invalid: use 1 to 63 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit",
            field=field,
        )
    return name


_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def plain_text(value: str) -> str:
    """Free text (descriptions) may hold tabs and line breaks, but no other control characters."""
    if _CONTROL_RE.search(value):
        raise ValueError("must not contain control characters")
    return value
