# Make sure a local libvirt daemon answers on qemu:///system. Sourced by scripts/test.sh and
# scripts/up.sh; call `ensure_libvirt`. Idempotent, quiet when there is nothing to do, and safe
# when the daemons already run. Needs root (Debian 12 without systemd: we start the daemons by hand).
#
# Why the /dev/kvm step: on machines whose /dev/kvm is root:root 0600, libvirt probes QEMU as
# root (KVM "present"), then finds the qemu user cannot open /dev/kvm ("not available now"),
# declares its capability cache outdated and re-probes QEMU on every API call: ~55 s per define.
# Giving /dev/kvm to group kvm (mode 660), as udev would, makes libvirt's view stable. Sovra still
# decides KVM vs TCG itself (see sovra.virt.libvirt_driver); this only keeps libvirt fast.

_libvirt_answers() {
  virsh -q -c qemu:///system version >/dev/null 2>&1
}

# Whether a live (not zombie) process of that name runs: killed daemons can linger as zombies here,
# because the sandbox's PID 1 does not always reap them.
_libvirt_running() {
  ps -o stat= -C "$1" 2>/dev/null | grep -qv '^Z'
}

ensure_libvirt() {
  # libvirt-daemon-system creates the libvirt-qemu user (in group kvm) and /etc/libvirt/qemu.conf;
  # without it libvirtd dies at start: "Failed to parse user 'libvirt-qemu'".
  local packages=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system libvirt-clients
                  libvirt-dev pkg-config)
  local missing=() package
  for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt: installing ${missing[*]}"
    local log
    log=$(mktemp)
    # apt chatters on stderr even on success (debconf without apt-utils): show it only on failure.
    if ! { apt-get update -qq -o DPkg::Lock::Timeout=300 \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                -o DPkg::Lock::Timeout=300 "${missing[@]}"; } >"$log" 2>&1; then
      cat "$log" >&2
      rm -f "$log"
      return 1
    fi
    rm -f "$log"
  fi

  if [ -e /dev/kvm ]; then
    getent group kvm >/dev/null || groupadd --system kvm
    # The qemu user must be in group kvm for the mode below to mean anything to libvirt.
    if getent passwd libvirt-qemu >/dev/null && ! id -nG libvirt-qemu | grep -qw kvm; then
      usermod -a -G kvm libvirt-qemu
    fi
    [ "$(stat -c %G /dev/kvm)" = kvm ] || chgrp kvm /dev/kvm
    [ "$(stat -c %a /dev/kvm)" = 660 ] || chmod 660 /dev/kvm
  fi

  if _libvirt_answers; then return 0; fi
  echo "==> libvirt: starting virtlogd and libvirtd"
  # Without systemd nothing creates these (the package's units and tmpfiles never run).
  mkdir -p /run/libvirt /var/log/libvirt/qemu /var/lib/libvirt/qemu
  # Detached stdio: a caller capturing our output (pytest) must not wait on the daemons' pipes.
  _libvirt_running virtlogd || virtlogd -d </dev/null >/dev/null 2>&1
  _libvirt_running libvirtd || libvirtd -d </dev/null >/dev/null 2>&1
  local tries=0
  until _libvirt_answers; do
    if [ "$tries" -ge 300 ]; then  # 300 x 0.2 s = 60 s
      echo "libvirt: qemu:///system does not answer after 60 s;" \
           "run 'libvirtd' in the foreground to see why" >&2
      virsh -c qemu:///system version >&2 || true
      return 1
    fi
    sleep 0.2
    tries=$((tries + 1))
  done
}
