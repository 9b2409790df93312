"""initial schema

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sovra.store.types import JSONDocument, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=True),
        sa.Column("target_id", sa.String(length=36), nullable=True),
        sa.Column("target_kind", sa.String(length=64), nullable=True),
        sa.Column("verb", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("progress_message", sa.String(length=256), nullable=False),
        sa.Column("params", JSONDocument, nullable=False),
        sa.Column("result", JSONDocument, nullable=True),
        sa.Column("error", JSONDocument, nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("request_key", sa.String(length=200), nullable=True),
        sa.Column("principal", sa.String(length=256), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("not_before", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operations")),
        sa.UniqueConstraint("request_key", name=op.f("uq_operations_request_key")),
    )
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_operations_pending",
            ["not_before"],
            unique=False,
            sqlite_where=sa.text("state = 'PENDING'"),
            postgresql_where=sa.text("state = 'PENDING'"),
        )
        batch_op.create_index("ix_operations_project_id", ["project_id", "id"], unique=False)
        batch_op.create_index(
            "ix_operations_running_lease",
            ["lease_expires_at"],
            unique=False,
            sqlite_where=sa.text("state = 'RUNNING'"),
            postgresql_where=sa.text("state = 'RUNNING'"),
        )
        batch_op.create_index("ix_operations_target_id", ["target_id", "id"], unique=False)
        batch_op.create_index(
            "uq_operations_active_target",
            ["target_id"],
            unique=True,
            sqlite_where=sa.text("state IN ('PENDING', 'RUNNING') AND target_id IS NOT NULL"),
            postgresql_where=sa.text("state IN ('PENDING', 'RUNNING') AND target_id IS NOT NULL"),
        )

    op.create_table(
        "resources",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=True),
        sa.Column("labels", JSONDocument, nullable=False),
        sa.Column("spec", JSONDocument, nullable=False),
        sa.Column("status", JSONDocument, nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resources")),
    )
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.create_index("ix_resources_kind_project_id", ["kind", "project_id", "id"], unique=False)
        batch_op.create_index(
            "uq_resources_global_name",
            ["kind", "name"],
            unique=True,
            sqlite_where=sa.text("project_id IS NULL"),
            postgresql_where=sa.text("project_id IS NULL"),
        )
        batch_op.create_index(
            "uq_resources_scoped_name",
            ["kind", "project_id", "name"],
            unique=True,
            sqlite_where=sa.text("project_id IS NOT NULL"),
            postgresql_where=sa.text("project_id IS NOT NULL"),
        )

    op.create_table(
        "edges",
        sa.Column("source_id", sa.String(length=36), nullable=False),
        sa.Column("target_id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column(
            "dependent_id",
            sa.String(length=36),
            sa.Computed("CASE WHEN type = 'owns' THEN target_id ELSE source_id END", persisted=True),
            nullable=True,
        ),
        sa.Column(
            "dependency_id",
            sa.String(length=36),
            sa.Computed("CASE WHEN type = 'owns' THEN source_id ELSE target_id END", persisted=True),
            nullable=True,
        ),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_id"], ["resources.id"], name=op.f("fk_edges_source_id_resources"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["target_id"], ["resources.id"], name=op.f("fk_edges_target_id_resources"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("source_id", "target_id", "type", name=op.f("pk_edges")),
    )
    with op.batch_alter_table("edges", schema=None) as batch_op:
        batch_op.create_index(
            "ix_edges_dependency_id", ["dependency_id", "dependent_id", "type"], unique=False
        )
        batch_op.create_index(
            "ix_edges_dependent_id", ["dependent_id", "dependency_id", "type"], unique=False
        )
        batch_op.create_index("ix_edges_target_id_type", ["target_id", "type"], unique=False)

    op.create_table(
        "operation_steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("operation_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("result", JSONDocument, nullable=True),
        sa.Column("error", JSONDocument, nullable=True),
        sa.ForeignKeyConstraint(
            ["operation_id"],
            ["operations.id"],
            name=op.f("fk_operation_steps_operation_id_operations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operation_steps")),
    )
    with op.batch_alter_table("operation_steps", schema=None) as batch_op:
        batch_op.create_index("ix_operation_steps_operation_id", ["operation_id", "id"], unique=False)

    op.create_table(
        "resource_labels",
        sa.Column("resource_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=317), nullable=False),
        sa.Column("value", sa.String(length=63), nullable=False),
        sa.ForeignKeyConstraint(
            ["resource_id"],
            ["resources.id"],
            name=op.f("fk_resource_labels_resource_id_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("resource_id", "key", name=op.f("pk_resource_labels")),
    )
    with op.batch_alter_table("resource_labels", schema=None) as batch_op:
        batch_op.create_index("ix_resource_labels_key_value", ["key", "value"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("resource_labels", schema=None) as batch_op:
        batch_op.drop_index("ix_resource_labels_key_value")

    op.drop_table("resource_labels")
    with op.batch_alter_table("operation_steps", schema=None) as batch_op:
        batch_op.drop_index("ix_operation_steps_operation_id")

    op.drop_table("operation_steps")
    with op.batch_alter_table("edges", schema=None) as batch_op:
        batch_op.drop_index("ix_edges_target_id_type")
        batch_op.drop_index("ix_edges_dependent_id")
        batch_op.drop_index("ix_edges_dependency_id")

    op.drop_table("edges")
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_resources_scoped_name",
            sqlite_where=sa.text("project_id IS NOT NULL"),
            postgresql_where=sa.text("project_id IS NOT NULL"),
        )
        batch_op.drop_index(
            "uq_resources_global_name",
            sqlite_where=sa.text("project_id IS NULL"),
            postgresql_where=sa.text("project_id IS NULL"),
        )
        batch_op.drop_index("ix_resources_kind_project_id")

    op.drop_table("resources")
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_operations_active_target",
            sqlite_where=sa.text("state IN ('PENDING', 'RUNNING') AND target_id IS NOT NULL"),
            postgresql_where=sa.text("state IN ('PENDING', 'RUNNING') AND target_id IS NOT NULL"),
        )
        batch_op.drop_index("ix_operations_target_id")
        batch_op.drop_index(
            "ix_operations_running_lease",
            sqlite_where=sa.text("state = 'RUNNING'"),
            postgresql_where=sa.text("state = 'RUNNING'"),
        )
        batch_op.drop_index("ix_operations_project_id")
        batch_op.drop_index(
            "ix_operations_pending",
            sqlite_where=sa.text("state = 'PENDING'"),
            postgresql_where=sa.text("state = 'PENDING'"),
        )

    op.drop_table("operations")
