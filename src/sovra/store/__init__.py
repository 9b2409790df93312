"""Persistence: SQLAlchemy tables, repositories, migrations and graph queries."""
