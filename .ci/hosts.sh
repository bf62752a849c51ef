# Sourced by .ci/run: packages for the emulated second host (tests/test_agents_sshfs.py).
#   ensure_host_packages   install openssh-server openssh-client sshfs iproute2 fuse3 if missing
# Installs only: starts no daemon (the test runs its own sshd with a throwaway key and config).
# Idempotent and safe under `set -euo pipefail`. Needs .ci/locks.sh: apt runs under the machine's
# apt lock, so a concurrent run neither trips over dpkg's lock nor removes the policy-rc.d below
# while this run's install relies on it.

OPEVA_CI_APT_LOG=${OPEVA_CI_APT_LOG:-${OPEVA_CI_LOG_DIR:-/tmp}/apt.log}

_host_pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# apt-get install "$@" (updating the package lists only if apt has no candidate for them), with
# a policy-rc.d that forbids maintainer scripts to start daemons unless one is already there.
_host_apt_install() {
    if ! apt-get install -y -q --no-install-recommends --dry-run "$@" >/dev/null 2>&1; then
        apt-get -o DPkg::Lock::Timeout=600 update -q || return 1
    fi
    local policy=/usr/sbin/policy-rc.d created="" rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$@" ||
        rc=$?
    if [ -n "$created" ]; then
        rm -f "$policy"
    fi
    return "$rc"
}

ensure_host_packages() {
    local pkg missing=()
    for pkg in openssh-server openssh-client sshfs iproute2 fuse3; do
        _host_pkg_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    echo "installing ${missing[*]} (log: $OPEVA_CI_APT_LOG)"
    ci_locked apt _host_apt_install "${missing[@]}" >>"$OPEVA_CI_APT_LOG" 2>&1 || {
        echo "apt-get failed; last lines of $OPEVA_CI_APT_LOG:" >&2
        tail -n 20 "$OPEVA_CI_APT_LOG" >&2
        return 1
    }
}
