# Sourced by .ci/run: Debian's headless browser for the dashboard tests (tests/test_dashboard.py).
#   ensure_browser_packages   install chromium and chromium-driver (/usr/bin/chromedriver) if missing
# Selenium drives that chromium through that chromedriver: nothing downloads a browser. Idempotent and
# safe under `set -euo pipefail`. Needs .ci/apt.sh.

ensure_browser_packages() {
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
        return 0
    fi
    ci_apt_install chromium chromium-driver
}
