# Make sure a PostgreSQL server is reachable for the test suite and export its URL in
# SOVRA_TEST_POSTGRES_URL. Uses the one at 127.0.0.1:5432 (trust auth) when it answers; otherwise
# installs Debian's postgresql, starts its cluster and connects over the local socket as root.
ensure_postgres() {
  if [ -n "${SOVRA_TEST_POSTGRES_URL:-}" ]; then return; fi
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432 \
     && psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
    export SOVRA_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:5432/test"
    return
  fi
  echo "==> no PostgreSQL at 127.0.0.1:5432: installing and starting Debian's"
  if ! dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "install ok installed"; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
  for _ in $(seq 30); do pg_isready -q && break; sleep 1; done
  su postgres -c "psql -Atc \"select 1 from pg_roles where rolname='root'\"" | grep -q 1 \
    || su postgres -c "createuser --superuser root"
  su postgres -c "psql -Atc \"select 1 from pg_database where datname='test'\"" | grep -q 1 \
    || su postgres -c "createdb --owner root test"
  export SOVRA_TEST_POSTGRES_URL="postgresql:///test?host=/var/run/postgresql"
}
