"""The tables. Migrations in ``migrations/versions`` create exactly this schema."""

from __future__ import annotations

import sqlalchemy as sa

from sovra.store.types import ID, JSONDocument, UTCDateTime

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

resources = sa.Table(
    "resources",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column("project_id", ID, nullable=True),
    # readable by every project (public images); writes still need a role in project_id
    sa.Column("public", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("labels", JSONDocument, nullable=False),
    sa.Column("spec", JSONDocument, nullable=False),
    sa.Column("status", JSONDocument, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_resources_kind_project_id", "kind", "project_id", "id"),
    sa.Index(
        "uq_resources_scoped_name",
        "kind",
        "project_id",
        "name",
        unique=True,
        sqlite_where=sa.text("project_id IS NOT NULL"),
        postgresql_where=sa.text("project_id IS NOT NULL"),
    ),
    sa.Index(
        "uq_resources_global_name",
        "kind",
        "name",
        unique=True,
        sqlite_where=sa.text("project_id IS NULL"),
        postgresql_where=sa.text("project_id IS NULL"),
    ),
)

# One row per label: an index for selectors, kept in step with resources.labels by the repository.
resource_labels = sa.Table(
    "resource_labels",
    metadata,
    sa.Column("resource_id", ID, sa.ForeignKey("resources.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("key", sa.String(317), primary_key=True),
    sa.Column("value", sa.String(63), nullable=False),
    sa.Index("ix_resource_labels_key_value", "key", "value"),
)

# "source <type> target". dependent_id/dependency_id normalise the direction (see domain.edges),
# computed by the database so that both graph walks are plain indexed joins.
edges = sa.Table(
    "edges",
    metadata,
    sa.Column("source_id", ID, sa.ForeignKey("resources.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("target_id", ID, sa.ForeignKey("resources.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("type", sa.String(16), primary_key=True),
    sa.Column(
        "dependent_id",
        ID,
        sa.Computed("CASE WHEN type = 'owns' THEN target_id ELSE source_id END", persisted=True),
    ),
    sa.Column(
        "dependency_id",
        ID,
        sa.Computed("CASE WHEN type = 'owns' THEN source_id ELSE target_id END", persisted=True),
    ),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_edges_target_id_type", "target_id", "type"),
    sa.Index("ix_edges_dependency_id", "dependency_id", "dependent_id", "type"),
    sa.Index("ix_edges_dependent_id", "dependent_id", "dependency_id", "type"),
)

operations = sa.Table(
    "operations",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("project_id", ID, nullable=True),
    sa.Column("target_id", ID, nullable=True),
    sa.Column("target_kind", sa.String(64), nullable=True),
    sa.Column("verb", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False),
    sa.Column("progress_message", sa.String(256), nullable=False),
    sa.Column("params", JSONDocument, nullable=False),
    sa.Column("result", JSONDocument, nullable=True),
    sa.Column("error", JSONDocument, nullable=True),
    sa.Column("request_id", sa.String(128), nullable=True),
    # "<project or '-'>:<request_id>": the idempotency key, unique where a request_id was given.
    sa.Column("request_key", sa.String(200), nullable=True, unique=True),
    sa.Column("principal", sa.String(256), nullable=False),
    sa.Column("origin_request_id", sa.String(128), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("not_before", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    # At most one active operation per target resource: the database enforces the mutex.
    sa.Index(
        "uq_operations_active_target",
        "target_id",
        unique=True,
        sqlite_where=sa.text("state IN ('PENDING', 'RUNNING') AND target_id IS NOT NULL"),
        postgresql_where=sa.text("state IN ('PENDING', 'RUNNING') AND target_id IS NOT NULL"),
    ),
    sa.Index(
        "ix_operations_pending",
        "not_before",
        sqlite_where=sa.text("state = 'PENDING'"),
        postgresql_where=sa.text("state = 'PENDING'"),
    ),
    sa.Index(
        "ix_operations_running_lease",
        "lease_expires_at",
        sqlite_where=sa.text("state = 'RUNNING'"),
        postgresql_where=sa.text("state = 'RUNNING'"),
    ),
    sa.Index("ix_operations_project_id", "project_id", "id"),
    sa.Index("ix_operations_target_id", "target_id", "id"),
)

operation_steps = sa.Table(
    "operation_steps",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("operation_id", ID, sa.ForeignKey("operations.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("result", JSONDocument, nullable=True),
    sa.Column("error", JSONDocument, nullable=True),
    sa.Index("ix_operation_steps_operation_id", "operation_id", "id"),
)

# API tokens for automation: only a SHA-256 of the secret is kept; the secret is shown once.
api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column("project_id", ID, nullable=True),  # NULL: a global admin token
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("hint", sa.String(16), nullable=False),
    sa.Column("created_by", sa.String(256), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    sa.Index("ix_api_tokens_project_id", "project_id", "id"),
)

# Who holds which role in a project: a principal ("oidc:…#sub", "token:…") or a group ("group:/team").
role_bindings = sa.Table(
    "role_bindings",
    metadata,
    sa.Column("project_id", ID, sa.ForeignKey("resources.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("subject", sa.String(256), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_by", sa.String(256), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_role_bindings_subject", "subject"),
)

# Append-only: the migration adds triggers that refuse UPDATE and DELETE.
audit_records = sa.Table(
    "audit_records",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("principal", sa.String(256), nullable=False),
    sa.Column("project_id", ID, nullable=True),
    sa.Column("action", sa.String(128), nullable=False),
    sa.Column("resource_kind", sa.String(64), nullable=True),
    sa.Column("resource_id", sa.String(128), nullable=True),
    sa.Column("result", sa.String(16), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("source", sa.String(64), nullable=True),
    sa.Column("details", JSONDocument, nullable=False),
    sa.Index("ix_audit_records_project_id", "project_id", "id"),
    sa.Index("ix_audit_records_principal", "principal", "id"),
    sa.Index("ix_audit_records_resource_id", "resource_id", "id"),
)
