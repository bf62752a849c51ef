# Sourced by .ci/run. Provides ensure_nx: the MongoDB wire-protocol server the site-data tests
# start themselves (tests/mongo_support.py runs one nx-27017 per test session, on a free port).
# Idempotent: does nothing when nx-27017 is already installed. Needs .ci/locks.sh: pip runs under
# the machine's pip lock (two runs installing into one site-packages at once can corrupt it).

ensure_nx() {
    local log="${OPEVA_CI_LOG_DIR:-/tmp}/nx-install.log"
    if ! command -v nx-27017 >/dev/null 2>&1; then
        ci_locked pip python3 -m pip install nx-27017 >"$log" 2>&1 ||
            { echo "nx-27017: install failed, see $log" >&2; return 1; }
    fi
    echo "nx-27017: $(command -v nx-27017)"
}
