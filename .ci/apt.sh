# Sourced by .ci/run: Debian packages, installed under the machine's apt lock. Needs .ci/locks.sh.
#   ci_pkg_installed PKG      true when dpkg has PKG installed
#   ci_apt_install PKG...     install the packages; on failure print the tail of the apt log and fail
# The package lists are updated only when apt has no candidate for the packages yet. Maintainer
# scripts may not start daemons (a policy-rc.d, unless the machine has one): the tests start their
# own engine and servers. The lock means a concurrent run neither trips over dpkg's lock nor removes
# that policy-rc.d while this run's install relies on it. Idempotent, safe under `set -euo pipefail`.

OPEVA_CI_APT_LOG=${OPEVA_CI_APT_LOG:-${OPEVA_CI_LOG_DIR:-/tmp}/apt.log}

ci_pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

_ci_apt_install_locked() {
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

ci_apt_install() {
    echo "installing $* (log: $OPEVA_CI_APT_LOG)"
    ci_locked apt _ci_apt_install_locked "$@" >>"$OPEVA_CI_APT_LOG" 2>&1 || {
        echo "apt-get failed; last lines of $OPEVA_CI_APT_LOG:" >&2
        tail -n 20 "$OPEVA_CI_APT_LOG" >&2
        return 1
    }
}
