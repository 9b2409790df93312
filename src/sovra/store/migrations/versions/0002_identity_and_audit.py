"""identity and audit

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sovra.store.types import JSONDocument, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("hint", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_api_tokens_secret_hash")),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_api_tokens_project_id", ["project_id", "id"], unique=False)

    op.create_table(
        "audit_records",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.Column("principal", sa.String(length=256), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=True),
        sa.Column("action", sa.String(length=128), nullable=False),
        sa.Column("resource_kind", sa.String(length=64), nullable=True),
        sa.Column("resource_id", sa.String(length=128), nullable=True),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("details", JSONDocument, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_records")),
    )
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.create_index("ix_audit_records_principal", ["principal", "id"], unique=False)
        batch_op.create_index("ix_audit_records_project_id", ["project_id", "id"], unique=False)
        batch_op.create_index("ix_audit_records_resource_id", ["resource_id", "id"], unique=False)

    op.create_table(
        "role_bindings",
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["resources.id"],
            name=op.f("fk_role_bindings_project_id_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "subject", name=op.f("pk_role_bindings")),
    )
    with op.batch_alter_table("role_bindings", schema=None) as batch_op:
        batch_op.create_index("ix_role_bindings_subject", ["subject"], unique=False)

    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin_request_id", sa.String(length=128), nullable=True))
    _make_audit_append_only()


_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER audit_records_no_{verb.lower()} BEFORE {verb} ON audit_records "
    "BEGIN SELECT RAISE(ABORT, 'audit_records is append-only'); END"
    for verb in ("UPDATE", "DELETE")
]
_POSTGRES_FUNCTION = """
CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_records is append-only'; END $$
"""
_POSTGRES_TRIGGER = (
    "CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records "
    "FOR EACH ROW EXECUTE FUNCTION audit_records_append_only()"
)


def _make_audit_append_only() -> None:
    """The audit trail cannot be changed through SQL: UPDATE and DELETE raise."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRES_FUNCTION)
        op.execute(_POSTGRES_TRIGGER)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_records_append_only ON audit_records")
        op.execute("DROP FUNCTION IF EXISTS audit_records_append_only()")
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_column("origin_request_id")

    with op.batch_alter_table("role_bindings", schema=None) as batch_op:
        batch_op.drop_index("ix_role_bindings_subject")

    op.drop_table("role_bindings")
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_records_resource_id")
        batch_op.drop_index("ix_audit_records_project_id")
        batch_op.drop_index("ix_audit_records_principal")

    op.drop_table("audit_records")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_api_tokens_project_id")

    op.drop_table("api_tokens")
