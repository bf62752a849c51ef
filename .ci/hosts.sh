# Sourced by .ci/run: packages for the emulated second host (tests/test_agents_sshfs.py).
#   ensure_host_packages   install openssh-server openssh-client sshfs iproute2 fuse3 if missing
# Installs only: starts no daemon (the test runs its own sshd with a throwaway key and config).
# Idempotent and safe under `set -euo pipefail`. Needs .ci/apt.sh.

ensure_host_packages() {
    local pkg missing=()
    for pkg in openssh-server openssh-client sshfs iproute2 fuse3; do
        ci_pkg_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    ci_apt_install "${missing[@]}"
}
