"""placement: host capacity and allocations

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sovra.store.types import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "host_capacity",
        sa.Column("host_id", sa.String(length=36), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("arch", sa.String(length=32), nullable=False),
        sa.Column("accelerator", sa.String(length=8), nullable=False),
        sa.Column("capacity_vcpus", sa.Integer(), nullable=False),
        sa.Column("capacity_memory_mib", sa.Integer(), nullable=False),
        sa.Column("capacity_disk_gib", sa.Integer(), nullable=False),
        sa.Column("used_vcpus", sa.Integer(), nullable=False),
        sa.Column("used_memory_mib", sa.Integer(), nullable=False),
        sa.Column("used_disk_gib", sa.Integer(), nullable=False),
        sa.Column("servers", sa.Integer(), nullable=False),
        sa.Column(
            "free_vcpus",
            sa.Integer(),
            sa.Computed("capacity_vcpus - used_vcpus", persisted=True),
            nullable=True,
        ),
        sa.Column(
            "free_memory_mib",
            sa.Integer(),
            sa.Computed("capacity_memory_mib - used_memory_mib", persisted=True),
            nullable=True,
        ),
        sa.Column(
            "free_disk_gib",
            sa.Integer(),
            sa.Computed("capacity_disk_gib - used_disk_gib", persisted=True),
            nullable=True,
        ),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "used_vcpus >= 0 AND used_memory_mib >= 0 AND used_disk_gib >= 0 AND servers >= 0",
            name=op.f("ck_host_capacity_used_not_negative"),
        ),
        sa.ForeignKeyConstraint(
            ["host_id"], ["resources.id"], name=op.f("fk_host_capacity_host_id_resources"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("host_id", name=op.f("pk_host_capacity")),
    )
    with op.batch_alter_table("host_capacity", schema=None) as batch_op:
        batch_op.create_index(
            "ix_host_capacity_fit", ["state", "arch", "free_memory_mib", "free_vcpus"], unique=False
        )

    op.create_table(
        "allocations",
        sa.Column("consumer_id", sa.String(length=36), nullable=False),
        sa.Column("host_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("disk_gib", sa.Integer(), nullable=False),
        sa.Column("server_group_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "vcpus > 0 AND memory_mib > 0 AND disk_gib >= 0", name=op.f("ck_allocations_amounts")
        ),
        sa.ForeignKeyConstraint(
            ["consumer_id"], ["resources.id"], name=op.f("fk_allocations_consumer_id_resources")
        ),
        sa.ForeignKeyConstraint(
            ["host_id"], ["host_capacity.host_id"], name=op.f("fk_allocations_host_id_host_capacity")
        ),
        sa.PrimaryKeyConstraint("consumer_id", name=op.f("pk_allocations")),
    )
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.create_index("ix_allocations_host_id", ["host_id"], unique=False)
        batch_op.create_index("ix_allocations_server_group_id", ["server_group_id", "host_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.drop_index("ix_allocations_server_group_id")
        batch_op.drop_index("ix_allocations_host_id")

    op.drop_table("allocations")
    with op.batch_alter_table("host_capacity", schema=None) as batch_op:
        batch_op.drop_index("ix_host_capacity_fit")

    op.drop_table("host_capacity")
