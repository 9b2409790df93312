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

# What the scheduler knows about each host: kept in step with the Host resource by compute.hosts
# (sync_host), and changed by claims and releases. Every change bumps ``generation``, the guard of
# the optimistic claim (store.placement). The free_* columns are computed by the database so that
# the capacity filter and the weighers read one indexed column each.
host_capacity = sa.Table(
    "host_capacity",
    metadata,
    sa.Column("host_id", ID, sa.ForeignKey("resources.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("arch", sa.String(32), nullable=False),
    sa.Column("accelerator", sa.String(8), nullable=False),
    sa.Column("capacity_vcpus", sa.Integer, nullable=False),
    sa.Column("capacity_memory_mib", sa.Integer, nullable=False),
    sa.Column("capacity_disk_gib", sa.Integer, nullable=False),
    sa.Column("used_vcpus", sa.Integer, nullable=False),
    sa.Column("used_memory_mib", sa.Integer, nullable=False),
    sa.Column("used_disk_gib", sa.Integer, nullable=False),
    sa.Column("servers", sa.Integer, nullable=False),
    sa.Column("free_vcpus", sa.Integer, sa.Computed("capacity_vcpus - used_vcpus", persisted=True)),
    sa.Column(
        "free_memory_mib", sa.Integer, sa.Computed("capacity_memory_mib - used_memory_mib", persisted=True)
    ),
    sa.Column("free_disk_gib", sa.Integer, sa.Computed("capacity_disk_gib - used_disk_gib", persisted=True)),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(
        "used_vcpus >= 0 AND used_memory_mib >= 0 AND used_disk_gib >= 0 AND servers >= 0",
        name="used_not_negative",
    ),
    # The scheduler's fast path: equality on state and arch, then walked in free-RAM order (either
    # direction), so the best hosts come first and the query stops after a few rows.
    sa.Index("ix_host_capacity_fit", "state", "arch", "free_memory_mib", "free_vcpus"),
)

# One row per consumer (a server) and the resources it holds on its host. No cascade from the
# server's resource row: deleting a server that still holds resources fails, because a cascade
# would drop the row without giving the capacity back (see store.placement).
allocations = sa.Table(
    "allocations",
    metadata,
    sa.Column("consumer_id", ID, sa.ForeignKey("resources.id"), primary_key=True),
    sa.Column("host_id", ID, sa.ForeignKey("host_capacity.host_id"), nullable=False),
    sa.Column("project_id", ID, nullable=False),
    sa.Column("vcpus", sa.Integer, nullable=False),
    sa.Column("memory_mib", sa.Integer, nullable=False),
    sa.Column("disk_gib", sa.Integer, nullable=False),
    sa.Column("server_group_id", ID, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("vcpus > 0 AND memory_mib > 0 AND disk_gib >= 0", name="amounts"),
    sa.Index("ix_allocations_host_id", "host_id"),
    sa.Index("ix_allocations_server_group_id", "server_group_id", "host_id"),
)
