"""Settings, read from the environment (prefix ``SOVRA_``) with embedded defaults.

The defaults are the all-in-one mode: SQLite in a data directory and the API on localhost.
Pointing ``SOVRA_DATABASE_URL`` at PostgreSQL switches the store to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from sovra.auth.oidc import OidcIssuerConfig

DEFAULT_PORT = 8790


class Settings(BaseSettings):
    """Everything a Sovra process needs to know to start."""

    model_config = SettingsConfigDict(env_prefix="SOVRA_", extra="ignore")

    data_dir: Path = Field(default=Path("/var/lib/sovra"), description="Where embedded state lives.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; SQLite in data_dir when unset."
    )
    api_host: str = "127.0.0.1"
    api_port: int = DEFAULT_PORT
    admin_token: SecretStr | None = Field(
        default=None, description="Bootstrap admin bearer token for automated installs (optional)."
    )
    lease_seconds: float = Field(default=15.0, gt=0, description="How long a worker's claim lasts.")
    poll_seconds: float = Field(default=0.2, gt=0, description="Idle worker poll interval.")
    default_step_deadline_seconds: float = Field(default=300.0, gt=0)
    max_page_size: int = Field(default=500, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, description="Largest JSON request body.")
    rate_limit_per_second: float = Field(default=50.0, gt=0, description="Sustained requests per principal.")
    rate_limit_burst: int = Field(default=200, gt=0, description="Requests a principal may burst.")
    token_max_days: int = Field(default=365, gt=0, description="Longest lifetime of an API token.")
    oidc_issuers: list[OidcIssuerConfig] = Field(
        default_factory=list, description="Trusted OIDC issuers (JSON list in SOVRA_OIDC_ISSUERS)."
    )
    blob_dir: Path | None = Field(default=None, description="Image blob store; data_dir/blobs when unset.")
    image_max_bytes: int = Field(default=64 * 1024**3, gt=0, description="Largest image upload or import.")
    image_max_virtual_size: int = Field(default=2 * 1024**4, gt=0, description="Largest virtual disk size.")
    image_sha512: bool = Field(default=False, description="Also compute SHA-512 of every image.")
    import_allowed_schemes: list[str] = Field(default_factory=lambda: ["https", "http"])
    import_allowed_ports: list[int] = Field(default_factory=lambda: [80, 443])
    import_allowed_networks: list[str] = Field(
        default_factory=list,
        description="Private networks image imports may reach anyway (e.g. an internal mirror's CIDR).",
    )
    host_uri_schemes: list[str] = Field(
        default_factory=lambda: ["qemu", "qemu+ssh", "qemu+tls", "test", "fake"],
        description="libvirt transports hosts may be registered with (e.g. drop qemu+ssh to require TLS).",
    )
    local_host_uri: str = Field(
        default="qemu:///system",
        description="`sovra up` registers this libvirt URI as host 'local' when no host exists yet and it "
        "answers; empty to never do that.",
    )
    scheduler_weigher: Literal["spread", "pack"] = Field(
        default="spread", description="spread: most free RAM first; pack: least free RAM first."
    )
    scheduler_subset_size: int = Field(
        default=20, ge=1, le=100, description="Pick at random among this many best hosts (fewer races)."
    )
    scheduler_max_attempts: int = Field(
        default=5, ge=1, le=50, description="Claims a placement may lose to other schedulers before failing."
    )
    server_stop_grace_seconds: float = Field(
        default=60.0, ge=0, le=3600, description="How long a stop waits for the guest before it is forced."
    )
    plugins: list[str] = Field(
        default_factory=list, description="Extra modules that register operation handlers."
    )

    @property
    def resolved_blob_dir(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to an SQLite file inside the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'sovra.db'}"
