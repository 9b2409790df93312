#!/usr/bin/env bash
# Install everything and start Sovra on its embedded defaults (SQLite in /var/lib/sovra, API on
# http://127.0.0.1:8790). Prints the URL and, on first start, the admin token.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/scripts/install.sh"
source "$ROOT/scripts/lib/libvirt.sh"
ensure_libvirt
export SOVRA_DATA_DIR="${SOVRA_DATA_DIR:-/var/lib/sovra}"
exec "$ROOT/.venv/bin/sovra" up "$@"
