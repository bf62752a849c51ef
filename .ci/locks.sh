# Sourced by .ci/run: machine-wide locks for what concurrent CI runs share on purpose.
#   ci_locked NAME COMMAND...   run COMMAND (a program or a shell function) holding the lock NAME;
#                               waits for it at most $OPEVA_CI_LOCK_TIMEOUT seconds
# apt/dpkg, pip's site-packages and the CityLearn venv cache belong to the machine, not to one run:
# two runs installing into them at once would corrupt them or trip over dpkg's own lock. The lock
# files live at fixed paths because they must be the same for every run; they hold no data.
# COMMAND runs in a subshell: variables it exports do not reach the caller.

OPEVA_CI_LOCK_DIR=${OPEVA_CI_LOCK_DIR:-/tmp}
OPEVA_CI_LOCK_TIMEOUT=${OPEVA_CI_LOCK_TIMEOUT:-1800}

ci_locked() {
    local name=$1
    shift
    (
        flock --timeout "$OPEVA_CI_LOCK_TIMEOUT" 9 || {
            echo "waited ${OPEVA_CI_LOCK_TIMEOUT}s for the lock $OPEVA_CI_LOCK_DIR/opeva-ci-$name.lock" >&2
            exit 1
        }
        "$@"
    ) 9>"$OPEVA_CI_LOCK_DIR/opeva-ci-$name.lock"
}
