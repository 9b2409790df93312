#!/usr/bin/env bash
# Install everything and run the whole test suite: lint, type checks, then pytest against SQLite
# and PostgreSQL. Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/install.sh --dev
source scripts/lib/postgres.sh
ensure_postgres
source scripts/lib/libvirt.sh
ensure_libvirt

echo "==> ruff"
.venv/bin/ruff check src tests bench
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/python -m pytest -q -ra -p no:cacheprovider "$@"
