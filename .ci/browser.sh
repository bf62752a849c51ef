# Sourced by .ci/run: Debian's headless browser for the dashboard tests (tests/test_dashboard.py).
#   ensure_browser_packages   install chromium and chromium-driver (/usr/bin/chromedriver) if missing
# Selenium drives that chromium through that chromedriver: nothing downloads a browser. Idempotent and
# safe under `set -euo pipefail`. Needs .ci/locks.sh: apt runs under the machine's apt lock.

OPEVA_CI_APT_LOG=${OPEVA_CI_APT_LOG:-${OPEVA_CI_LOG_DIR:-/tmp}/apt.log}

_browser_apt_install() {
    # Update the package lists only when apt has no candidate for the packages yet.
    if ! apt-get install -y -q --no-install-recommends --dry-run chromium chromium-driver >/dev/null 2>&1; then
        apt-get -o DPkg::Lock::Timeout=600 update -q || return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        chromium chromium-driver
}

ensure_browser_packages() {
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
        return 0
    fi
    echo "installing chromium chromium-driver (log: $OPEVA_CI_APT_LOG)"
    ci_locked apt _browser_apt_install >>"$OPEVA_CI_APT_LOG" 2>&1 || {
        echo "apt-get failed; last lines of $OPEVA_CI_APT_LOG:" >&2
        tail -n 20 "$OPEVA_CI_APT_LOG" >&2
        return 1
    }
}
