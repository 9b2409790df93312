#!/usr/bin/env bash
# Install what Sovra needs on Debian 12, as root: apt packages, a virtualenv in .venv, the package.
#   scripts/install.sh          runtime only
#   scripts/install.sh --dev    plus the test and lint tools
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EXTRA=""
[ "${1:-}" = "--dev" ] && EXTRA="[dev]"

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc pkg-config curl ca-certificates
  # images: qemu-img for conversion, QEMU (TCG) for boot tests, and what `sovra image build` uses
  qemu-utils qemu-system-x86 busybox-static mtools dosfstools fdisk syslinux syslinux-common xorriso
  # hosts: libvirt-python builds against libvirt-dev; ssh for qemu+ssh:// hosts
  libvirt-dev openssh-client
)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "==> creating virtualenv in $ROOT/.venv"
  /usr/bin/python3 -m venv "$ROOT/.venv"
fi
echo "==> pip: installing sovra${EXTRA} and its dependencies"
"$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT$EXTRA"
