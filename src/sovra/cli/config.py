"""The CLI's own configuration file: the API URL and the token `sovra login` stored.

``$SOVRA_CONFIG``, else ``$XDG_CONFIG_HOME/sovra/config.json``, else ``~/.config/sovra/config.json``;
written with mode 0600 because it holds a bearer token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8790"


def config_path() -> Path:
    explicit = os.environ.get("SOVRA_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sovra" / "config.json"


def load() -> dict[str, Any]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def save(url: str, token: str) -> Path:
    """Write the file atomically with mode 0600 (never readable by others, not even briefly)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"url": url, "token": token}, handle)
    os.chmod(temporary, 0o600)
    temporary.replace(path)
    return path
